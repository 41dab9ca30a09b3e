"""Faults a user meets, each kind swept over every entry point that has it (issue 12).

Real processes, real signals and real checkpoints where the fault is a process-level one
(SIGTERM, a damaged checkpoint, a locked workdir, NaN, a full disk, a damaged input file);
in-process sweeps over every trainer (NaN, SIGTERM), every reader (damaged gzip), every
stage (fingerprints) and every encoder of (prompt, response).
"""
import gzip
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from pit import checkpoint as ckpt_lib
from pit import errors, integrity, preemption, stages
from pit.data import builders, encoding, pairs as pairs_lib, records, sources
from pit.data.judge import parse_judge_score
from pit.data.pairs import PreferencePair
from tests.conftest import REPO
from tests.helpers import without_run
from tests.test_cli import TINY, _env

# ----------------------------------------------------------------------------- helpers


def _load(path, preset):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(preset)


SFT = [*TINY, "--config.train.log_every=10", "--config.checkpoint.keep=3"]


def _pit(workdir, *extra, **kw):
  cmd = [sys.executable, "-m", "pit.main", *SFT, f"--workdir={workdir}", *extra]
  return subprocess.run(cmd, cwd=REPO, env=_env(1), capture_output=True, text=True,
                        timeout=kw.get("timeout", 600))


def _errors(stderr, kind="error"):
  return [l for l in stderr.splitlines() if l.startswith(f"pit: {kind}:")]


def _sft_params(workdir, step=None):
  from pit import sharding as shd
  from pit.model import ModelConfig
  from pit.params import model_def
  cfg = json.load(open(os.path.join(workdir, "config_sft.json")))
  mdef = model_def(ModelConfig.from_config(cfg["model"]))
  m = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  params, got = ck.restore_params(mdef.sharded_abstract(m, shd.DEFAULT_RULES), step)
  ck.close()
  return jax.device_get(params), got


def _damage(step_dir, kind, source=None):
  """Damage one saved step the ways disks and users do (`source`: the sibling step whose
  arrays "stale_state" puts in its place)."""
  state = os.path.join(step_dir, "state")
  arrays = sorted((os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs
                   if os.sep + "d" + os.sep in os.path.join(r, f)), key=os.path.getsize)
  if kind in ("bitflip", "bitflip_all"):   # 64 bytes flipped in the biggest / every array file
    for f in arrays[-1:] if kind == "bitflip" else arrays:
      b = bytearray(open(f, "rb").read())
      for i in range(min(64, len(b) // 2)):
        b[len(b) // 2 + i] ^= 0xFF
      open(f, "wb").write(bytes(b))
  elif kind == "stale_state":   # another step's arrays: they read fine, their values are wrong
    shutil.rmtree(state)
    shutil.copytree(os.path.join(os.path.dirname(step_dir), source, "state"), state)
  elif kind == "truncate":   # every array file cut in half
    for f in arrays:
      b = open(f, "rb").read()
      open(f, "wb").write(b[:len(b) // 2])
  elif kind == "no_metadata":
    os.remove(os.path.join(state, "_METADATA"))
  elif kind == "empty_data":
    open(os.path.join(step_dir, "data", "metadata"), "w").close()
  else:
    raise ValueError(kind)


# ----------------------------------------------- checkpoints, SIGTERM: real processes

STEPS = ["--config.train.steps=200", "--config.checkpoint.every=50"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted 200-step SFT run: what every interrupted run must end up equal to."""
  wd = tmp_path_factory.mktemp("faults") / "reference"
  r = _pit(wd, *STEPS)
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


def _wait_for_step(workdir, proc, step, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be signalled"
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(l)["step"] for l in f if l.strip().endswith("}")]
      if steps and max(steps) >= step:
        return
    time.sleep(0.05)
  raise AssertionError(f"no step {step} in {path}")


def test_sigint_is_handled_like_sigterm():
  """Ctrl-C (SIGINT) goes through the same handler as SIGTERM (tested end to end below)."""
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  preemption._state["installed"] = False
  try:
    preemption.handle_signals()
    assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is preemption._handler
    preemption.reset()
    with preemption.training():   # inside a training loop a signal becomes a request
      preemption._handler(signal.SIGINT, None)
      assert preemption.requested() == "SIGINT"
      preemption.reset()
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    preemption._state.update(installed=False)
    preemption.reset()


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_saves_the_current_step_exits_75_and_resumes_exactly(reference_run, tmp_path, sig):
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "pit.main", *SFT, f"--workdir={wd}", *STEPS]
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_step(wd, proc, 20)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == errors.EXIT_PREEMPTED, stderr[-3000:]
  stopped = _errors(stderr, "stopped")
  assert len(stopped) == 1 and "run the same command to resume" in stopped[0], stderr[-2000:]
  step = int(re.search(r"after step (\d+)", stopped[0]).group(1))
  assert 20 <= step < 200
  saved = sorted(int(n) for n in os.listdir(wd / "checkpoints") if n.isdigit())
  assert saved[-1] == step   # a checkpoint at the very step it stopped, not the last "every"
  assert not [n for n in os.listdir(wd / "checkpoints") if "tmp" in n]  # nothing half-written
  r = _pit(wd, *STEPS)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(wd / "sft_summary.json"))
  assert summary["run"]["resumed_from"] == step
  assert without_run(summary) == without_run(json.load(open(reference_run / "sft_summary.json")))
  jax.tree.map(np.testing.assert_array_equal, _sft_params(wd)[0], _sft_params(reference_run)[0])


def test_corrupt_checkpoint_is_named_moved_aside_and_training_falls_back(reference_run, tmp_path):
  wd = tmp_path / "run"
  r = _pit(wd, "--config.train.steps=100", "--config.checkpoint.every=50")
  assert r.returncode == 0, r.stderr[-3000:]
  # arrays that decode without error but are not the ones saved: only the checksums see it
  # (a bit flip in a zstd-compressed array file may instead fail to decode: see the next test)
  _damage(str(wd / "checkpoints" / "100"), "stale_state", source="50")
  r = _pit(wd, *STEPS)
  assert r.returncode == 0, r.stderr[-3000:]
  assert re.search(r"checkpoints step 100 is corrupt or unreadable: checksum mismatch in \S+",
                   r.stderr), r.stderr[-3000:]
  assert "resuming from step 50" in r.stderr and "Traceback" not in r.stderr
  assert sorted(os.listdir(wd / "checkpoints")) == ["100", "100.corrupt", "150", "200"]
  jax.tree.map(np.testing.assert_array_equal, _sft_params(wd)[0], _sft_params(reference_run)[0])
  for step in (100, 150, 200):   # every kept state is finite and verifies
    params, _ = _sft_params(wd, step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_no_restorable_checkpoint_stops_with_every_reason_then_starts_afresh(tmp_path):
  wd = tmp_path / "run"
  keep = ["--config.checkpoint.every=10", "--config.checkpoint.keep=4"]
  r = _pit(wd, "--config.train.steps=40", *keep)
  assert r.returncode == 0, r.stderr[-3000:]
  saved = sorted(int(n) for n in os.listdir(wd / "checkpoints"))
  assert saved == [10, 20, 30, 40]
  for step, kind in zip(saved, ["bitflip", "truncate", "no_metadata", "empty_data"]):
    _damage(str(wd / "checkpoints" / str(step)), kind)
  r = _pit(wd, "--config.train.steps=50", *keep)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  (line,) = _errors(r.stderr)
  assert "no checkpoint here restores" in line
  assert all(f"step {s}:" in line for s in saved), line
  # the bit flip is seen either by the decoder or, where the bytes still decode, by the checksums
  assert re.search(r"step 10: (checksum mismatch in \S+|its arrays are unreadable)", line), line
  r = _pit(wd, "--config.train.steps=50", *keep)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.load(open(wd / "sft_summary.json"))["run"]["resumed_from"] is None


def test_nan_stops_at_the_step_keeps_good_checkpoints_and_records_it(tmp_path):
  wd = tmp_path / "run"
  r = _pit(wd, "--config.train.steps=60", "--config.checkpoint.every=2",
           "--config.optim.learning_rate=1e6", "--config.optim.warmup_steps=0",
           "--config.train.log_every=1")
  assert r.returncode == 2, r.stderr[-3000:]
  (line,) = _errors(r.stderr)
  bad = int(re.search(r"non-finite .* at step (\d+)", line).group(1))
  assert "nothing after step" in line and "good checkpoints kept" in line
  saved = sorted(int(n) for n in os.listdir(wd / "checkpoints") if n.isdigit())
  assert saved and saved[-1] < bad
  for step in saved:   # never a non-finite state on disk
    params, _ = _sft_params(wd, step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  recs = [json.loads(l) for l in open(wd / "metrics.jsonl")]   # strict JSON, NaN visible
  assert any(isinstance(r.get("loss"), str) or isinstance(r.get("grad_norm"), str) for r in recs
             if r["step"] == bad)


def test_second_run_on_a_workdir_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "pit.main", *SFT, f"--workdir={wd}", *STEPS]
  first = subprocess.Popen(cmd, cwd=REPO, env=_env(1), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  _wait_for_step(wd, first, 10)
  r = _pit(wd, *STEPS)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  (line,) = _errors(r.stderr)
  assert f"in use by pid {first.pid} on host" in line and ".pit.lock" in line
  first.send_signal(signal.SIGKILL)
  first.wait()
  r = _pit(wd, *STEPS)            # the kernel dropped the dead run's lock: taken over
  assert r.returncode == 0, r.stderr[-3000:]
  steps = [r["step"] for r in map(json.loads, open(wd / "metrics.jsonl")) if r["split"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 200   # no duplicated or interleaved lines


def test_two_runs_started_together_one_is_refused(tmp_path):
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "pit.main", *SFT, f"--workdir={wd}", "--config.train.steps=30"]
  procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300)[1] for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 2], outs
  refused = outs[[p.returncode for p in procs].index(2)]
  assert "is in use by pid" in refused and "Traceback" not in refused


def test_disk_full_error_keeps_its_reason(tmp_path):
  wd = tmp_path / "run"
  wd.mkdir()
  os.symlink("/dev/full", wd / "config_sft.json")   # writes fail with ENOSPC
  r = _pit(wd, "--config.train.steps=2")
  assert r.returncode == 2
  (line,) = _errors(r.stderr)
  assert "No space left on device" in line


def test_one_line_errors_keep_the_os_reason_of_long_wrapped_messages():
  from pit.main import MAX_ERROR_CHARS, _one_line
  buried = ValueError("failed to write /ckpt/16/state: " + "ctx " * 300 +
                      "[OS error: No space left on device] " + "more " * 300)
  text = _one_line(buried)
  assert "/ckpt/16/state" in text and "No space left on device" in text
  assert len(text) <= MAX_ERROR_CHARS + 40
  try:
    try:
      raise OSError(28, "No space left on device", "/ckpt/16")
    except OSError as cause:
      raise RuntimeError("async save failed: " + "x" * 2000) from cause
  except RuntimeError as e:
    assert _one_line(e).endswith("(No space left on device)")


# ------------------------------------------------------- checkpoint integrity (in-process)


@pytest.mark.parametrize("kind", ["bitflip", "truncate", "no_metadata", "empty_data"])
def test_every_kind_of_damage_is_detected_on_restore(tmp_path, kind):
  from tests.helpers import mesh as make_mesh, tiny_mdef
  from pit import sharding as shd
  from pit.params import init_params
  mdef = tiny_mdef(d_model=64, d_ff=256)
  m = make_mesh((1, 2, 1))
  params = init_params(mdef, m, shd.DEFAULT_RULES, 0)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=5, async_save=False)
  for step in (1, 2):
    ck.save(step, {"params": jax.tree.map(lambda x: x * step, params)}, {"step": step}, force=True,
            metrics={"loss": 1.0 / step})
  ck.close()
  _damage(str(tmp_path / "ck" / "2"), kind)
  abstract = {"params": mdef.sharded_abstract(m, shd.DEFAULT_RULES)}
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=5, async_save=False)
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match=r"ck step 2 is corrupt"):
    ck.restore_params(abstract["params"])   # a sampler never falls back silently
  state, it, metrics, step = ck.restore_latest(abstract)
  assert step == 1 and it == {"step": 1} and metrics == {"loss": 1.0}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]),
               jax.device_get(params))
  assert sorted(os.listdir(tmp_path / "ck")) == ["1", "2.corrupt"]
  ck.close()


def test_a_checkpoint_of_another_model_is_incompatible_not_corrupt(tmp_path):
  from tests.helpers import mesh as make_mesh, tiny_mdef
  from pit import sharding as shd
  from pit.params import init_params
  m = make_mesh((1, 1, 1))
  small, big = tiny_mdef(d_model=32), tiny_mdef(d_model=64)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), async_save=False)
  ck.save(1, {"params": init_params(small, m, shd.DEFAULT_RULES, 0)}, {}, force=True)
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="saved for another model"):
    ck.restore_latest({"params": big.sharded_abstract(m, shd.DEFAULT_RULES)})
  assert os.listdir(tmp_path / "ck") == ["1"]   # nothing moved
  ck.close()


def test_checksums_match_numpy_on_every_dtype_and_any_sharding():
  import jax.numpy as jnp
  from tests.helpers import mesh as make_mesh
  rng = np.random.default_rng(0)
  tree = {"f32": rng.normal(size=(8, 16)).astype(np.float32),
          "i32": rng.integers(-5, 5, (8, 3)).astype(np.int32),
          "bool": rng.random((16,)) < 0.5, "scalar": np.float32(3.5),
          "f16": rng.normal(size=(8, 4)).astype(np.float16)}
  want = integrity.numpy_checksums(tree)
  assert integrity.leaf_checksums(tree) == want
  bf16 = jnp.asarray(rng.normal(size=(8, 8)), jnp.bfloat16)
  assert integrity.leaf_checksums({"b": bf16}) == integrity.numpy_checksums({"b": np.asarray(bf16)})
  m = make_mesh((2, 4, 1))
  sharded = jax.device_put(tree["f32"], jax.sharding.NamedSharding(
      m, jax.sharding.PartitionSpec(("data",), ("fsdp",))))
  assert integrity.leaf_checksums({"f32": sharded})["f32"] == want["f32"]
  flipped = tree["f32"].copy()
  flipped.view(np.uint32)[3, 5] ^= 1 << 7   # one bit
  assert integrity.numpy_checksums({"f32": flipped})["f32"] != want["f32"]
  swapped = tree["f32"].copy()
  swapped[0, [0, 1]] = swapped[0, [1, 0]]   # two words swapped: s1 equal, s2 differs
  got = integrity.numpy_checksums({"f32": swapped})["f32"]
  assert got[0] == want["f32"][0] and got[1] != want["f32"][1]


# ------------------------------------------------ every trainer: SIGTERM and NaN (in-process)

TRAINERS = {"sft": "configs/sft.py", "reward": "configs/reward.py",
            "gap_reward": "configs/gap_reward.py", "dpo": "configs/dpo.py", "ppo": "configs/ppo.py"}


def _trainer_config(name, *, steps=6, init_dir=None, **optim):
  c = _load(TRAINERS[name], "tiny")
  c.progress = False
  c.model.update(d_model=32, d_ff=64, num_layers=1, num_heads=4, num_kv_heads=2)
  c.train.update(steps=steps, batch_size=8, log_every=1, eval_every=0)
  c.checkpoint.update(every=2, keep=10)
  c.optim.update(warmup_steps=0, **optim)
  c.mesh.shape = (2, 4, 1)   # every fake device: data x fsdp
  if c.data.source == "synthetic":
    c.data.update(synthetic_train_size=64, synthetic_eval_size=16)
  if name == "dpo":
    c.dpo.oracle_eval_prompts = 0
  if name == "ppo":   # 8 rollouts / minibatch 4 x 1 epoch = 2 updates per rollout
    c.ppo.update(init_checkpoint_dir=str(init_dir), rollout_batch_size=8, max_new_tokens=8,
                 epochs=1, scorer="oracle")
    c.train.batch_size = 4
  return c


@pytest.fixture(scope="module")
def sft_init(tmp_path_factory):
  from pit.main import run
  wd = tmp_path_factory.mktemp("sft_init")
  run(_trainer_config("sft", steps=2), str(wd))
  return wd


def _final_checksums(workdir):
  """The saved state's checksums (pit.integrity) at its last step: equal iff the states are."""
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  step = ck.latest_step()
  meta = ck._read_json(step)
  ck.close()
  return step, meta["checksums"]["leaves"]


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_every_trainer_stops_cleanly_on_sigterm_and_resumes_to_the_same_state(
    name, tmp_path, monkeypatch, sft_init):
  from pit.main import run
  init = sft_init if name == "ppo" else None
  run(_trainer_config(name, init_dir=init), str(tmp_path / "ref"))
  calls = {"n": 0}

  def requested():   # SIGTERM arrives during step 3
    calls["n"] += 1
    return "SIGTERM" if calls["n"] >= 3 else None
  monkeypatch.setattr(preemption, "requested", requested)
  with pytest.raises(errors.Preempted, match=r"stopped by SIGTERM after step (3|4) of 6"):
    run(_trainer_config(name, init_dir=init), str(tmp_path / "run"))
  monkeypatch.undo()
  saved = sorted(int(n) for n in os.listdir(tmp_path / "run" / "checkpoints") if n.isdigit())
  assert saved[-1] == (4 if name == "ppo" else 3)   # PPO stops at its rollout boundary
  summary = run(_trainer_config(name, init_dir=init), str(tmp_path / "run"))
  assert summary["run"]["resumed_from"] == saved[-1]
  ref = json.load(open(tmp_path / "ref" / f"{name}_summary.json"))
  assert without_run(json.loads(json.dumps(summary))) == without_run(ref)
  assert _final_checksums(tmp_path / "run") == _final_checksums(tmp_path / "ref")


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_every_trainer_stops_on_a_non_finite_step_and_never_saves_it(name, tmp_path, sft_init,
                                                                     monkeypatch):
  from pit.main import run
  from pit.rl import scorers
  if name == "ppo":   # a 2-step SFT policy scores 0 everywhere: give PPO a signal to follow
    monkeypatch.setattr(scorers.OracleScorer, "__call__", lambda self, p, r, ref=None:
                        np.random.default_rng(len(r)).normal(size=len(p)).astype(np.float32))
  c = _trainer_config(name, steps=8, init_dir=sft_init if name == "ppo" else None,
                      learning_rate=1e30)
  c.checkpoint.every = 2 if name == "ppo" else 1   # PPO saves at rollout boundaries only
  with pytest.raises(errors.NonFiniteError, match=rf"{name}: non-finite .* at step (\d+)") as e:
    run(c, str(tmp_path))
  bad = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  saved = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert all(s < bad for s in saved) and (saved or name == "ppo"), (saved, bad)
  recs = records_of(tmp_path / "metrics.jsonl")
  assert any(r["step"] == bad and not all(math.isfinite(r[k]) for k in ("loss", "grad_norm")
                                          if k in r) for r in recs)


def records_of(path):
  from pit.metrics import read_jsonl
  return read_jsonl(str(path))


def test_a_non_finite_stage_stops_the_pit_pipeline_there(tmp_path):
  from pit.pipelines import pit as pit_pipeline
  c = _load("configs/synthetic.py", "pit_smoke")
  c.progress = False
  c.pit.policy_sft.optim.learning_rate = 1e30
  with pytest.raises(errors.NonFiniteError, match="sft: non-finite"):
    pit_pipeline.run(c, str(tmp_path))
  assert stages.is_done(str(tmp_path), "data") and not stages.is_done(str(tmp_path), "policy_sft")
  assert not (tmp_path / "pit_sft").exists()   # nothing downstream ran on a broken M_P


def test_metrics_writer_records_non_finite_values_as_strict_json(tmp_path):
  from pit.metrics import MetricsWriter, read_jsonl
  w = MetricsWriter(str(tmp_path))
  w.write(1, {"loss": float("nan"), "grad_norm": float("inf"), "ok": 1.5})
  w.close()
  line = open(tmp_path / "metrics.jsonl").read()
  rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
  assert rec["loss"] == "nan" and rec["grad_norm"] == "inf" and rec["ok"] == 1.5
  (back,) = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert math.isnan(back["loss"]) and back["grad_norm"] == math.inf


# --------------------------------------------------------------- every reader: damaged gzip


def _gz(path, text: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with gzip.open(path, "wt") as f:
    f.write(text)
  return path


def _hh_lines(n):
  return "".join(json.dumps({"chosen": f"\n\nHuman: q{i} {'x' * (i % 7)}\n\nAssistant: good {i}",
                             "rejected": f"\n\nHuman: q{i} {'x' * (i % 7)}\n\nAssistant: bad {i}"})
                 + "\n" for i in range(n))


def _pair_lines(n):
  return "".join(json.dumps({"prompt": f"p{i} " * 5, "chosen": f"good {i}", "rejected": f"bad {i}",
                             "response": f"good {i}", "reference": f"ref {i}"}) + "\n"
                 for i in range(n))


def _uf_lines(n):
  out = []
  for i in range(n):
    p = f"Prompt {i}?"
    out.append(json.dumps({
        "prompt": p, "prompt_id": f"id{i}", "score_chosen": 8.0, "score_rejected": 2.0,
        "chosen": [{"content": p, "role": "user"}, {"content": f"Good {i}.", "role": "assistant"}],
        "rejected": [{"content": p, "role": "user"}, {"content": f"Bad {i}.", "role": "assistant"}],
        "messages": [{"content": p, "role": "user"}]}) + "\n")
  return "".join(out)


def _data_cfg(**kw):
  c = ml_collections.ConfigDict(dict(source="jsonl", train_path="", eval_path="", on_error="raise",
                                     prompt_format="{prompt}", seed=0, tfds_name="", tfds_config="",
                                     data_dir="", manual_dir="", download=False))
  c.update(kw)
  return c


def _readers(tmp):
  """name -> (file to damage, read(on_error)): every way PIT reads a text file from a user."""
  from pit.data import synthetic
  from pit.eval import alpaca_eval
  from pit.pipelines import improve as improve_pipeline
  from pit.pipelines import ppo as ppo_pipeline
  jsonl = _gz(os.path.join(tmp, "pairs.jsonl.gz"), _pair_lines(400))
  alpaca = os.path.join(tmp, "outputs.json.gz")
  alpaca_eval.write_outputs(alpaca, [f"instruction {i} " * 5 for i in range(400)],
                            [f"output {i}" for i in range(400)], "g")
  gens = _gz(os.path.join(tmp, "generations.jsonl.gz"), "".join(
      json.dumps({"prompt": f"sort: {10 + i % 80} {11 + i % 80} 95 96\n", "response": "1 2"}) + "\n"
      for i in range(400)))
  hh = _gz(os.path.join(tmp, "hh", "harmless-base-test-part1.jsonl.gz"), _hh_lines(400))
  uf = _gz(os.path.join(tmp, "uf", "test_prefs.jsonl.gz"), _uf_lines(400))
  trees = os.path.join(tmp, "oasst", "2023-04-12_oasst_ready.trees.jsonl.gz")
  _gz(trees, "".join(json.dumps({"message_tree_id": f"t{i}", "prompt": {
      "message_id": f"m{i}", "text": f"question {i} " * 3, "role": "prompter", "lang": "en",
      "replies": [{"message_id": f"r{i}", "text": f"answer {i}", "role": "assistant", "lang": "en",
                   "rank": 0}]}}) + "\n" for i in range(400)))
  tfds_dir = os.path.join(tmp, "tfds")

  def improve_inputs(on_error):
    c = ml_collections.ConfigDict({"improve": {"input_path": jsonl, "max_prompts": 0},
                                   "data": _data_cfg(on_error=on_error)})
    return improve_pipeline.load_inputs(c, None)

  def ppo_refs(on_error):
    c = ml_collections.ConfigDict({"ppo": {"policy_template": "plain"},
                                   "data": _data_cfg(train_path=jsonl, on_error=on_error)})
    return ppo_pipeline.load_prompts_and_references(c)

  return {
      "sft records": (jsonl, lambda e: sources.load_sft_records(_data_cfg(train_path=jsonl, on_error=e))),
      "preference pairs": (jsonl, lambda e: sources.load_pairs(_data_cfg(train_path=jsonl, on_error=e))),
      "prompts": (jsonl, lambda e: sources.load_prompts(_data_cfg(eval_path=jsonl, on_error=e))),
      "pairs file": (jsonl, lambda e: pairs_lib.read_pairs_jsonl(jsonl, on_error=e)),
      "improve inputs": (jsonl, improve_inputs),
      "ppo references": (jsonl, ppo_refs),
      "alpaca_eval outputs": (alpaca, lambda e: alpaca_eval.read_outputs(alpaca)),
      "synthetic generations": (gens, lambda e: synthetic.read_generations(gens)),
      "hh_rlhf manual_dir": (hh, lambda e: sources.load_pairs(_data_cfg(
          source="tfds", tfds_name="hh_rlhf", tfds_config="harmless-base", on_error=e,
          manual_dir=os.path.dirname(hh), data_dir=os.path.join(tfds_dir, e)), "test")),
      "ultrafeedback manual_dir": (uf, lambda e: builders.load_pairs(
          "ultrafeedback_binarized", split="test_prefs", data_dir=os.path.join(tfds_dir, "uf" + e),
          manual_dir=os.path.dirname(uf), on_error=e)),
      "oasst1 manual_dir": (trees, lambda e: builders.load_sft(
          "oasst1", config="ift", split="train", data_dir=os.path.join(tfds_dir, "oa" + e),
          manual_dir=os.path.dirname(trees), on_error=e)),
  }


READERS = ["sft records", "preference pairs", "prompts", "pairs file", "improve inputs",
           "ppo references", "alpaca_eval outputs", "synthetic generations", "hh_rlhf manual_dir",
           "ultrafeedback manual_dir", "oasst1 manual_dir"]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_names_a_damaged_gzip_and_the_line_reached(tmp_path, reader, damage):
  path, read = _readers(str(tmp_path))[reader]
  read("raise")   # intact: reads
  raw = open(path, "rb").read()
  if damage == "truncated":
    raw = raw[:int(len(raw) * 0.6)]
  else:   # flipped bytes in the middle of the deflate stream
    b = bytearray(raw)
    for i in range(64):
      b[len(b) // 2 + i] ^= 0xA5
    raw = bytes(b)
  open(path, "wb").write(raw)
  for data_dir in (tmp_path / "tfds",):   # a damaged source is rebuilt, never a stale copy used
    if data_dir.exists():
      import shutil
      shutil.rmtree(data_dir)
  for on_error in ("raise", "skip"):   # skipping cannot recover an unreadable rest of file
    with pytest.raises(records.DataError) as e:
      read(on_error)
    msg = str(e.value)
    assert msg.startswith(path), msg
    if reader not in ("alpaca_eval outputs",):   # one JSON document: no lines to count
      assert re.match(re.escape(path) + r":\d+: ", msg), msg
    if damage == "truncated" or "truncated or corrupt" in msg:
      assert "truncated or corrupt" in msg, msg
    else:   # a flipped byte may first surface as the broken line it produced
      assert "malformed JSON" in msg or "UTF-8" in msg, msg


def test_cli_names_a_truncated_data_file_in_one_line(tmp_path):
  src = open(os.path.join(REPO, "data", "toy_sft.jsonl"), "rb").read()
  path = tmp_path / "t.jsonl.gz"
  path.write_bytes(gzip.compress(src)[:700])
  for on_error in ("raise", "skip"):
    r = _pit(tmp_path / on_error, f"--config.data.train_path={path}",
             f"--config.data.on_error={on_error}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = _errors(r.stderr)
    assert re.search(re.escape(str(path)) + r":\d+: file is truncated or corrupt after line \d+", line)


# ------------------------------------------------------- pairs with no preference to learn


def test_identical_chosen_and_rejected_are_dropped_and_counted_or_raised(tmp_path):
  rows = [{"prompt": "p", "chosen": "same", "rejected": "other"},
          {"prompt": "q", "chosen": "same answer", "rejected": "same answer "},   # whitespace only
          {"prompt": "r", "chosen": "a", "rejected": "b"}]
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(records.DataError, match=r"pairs\.jsonl:2: fields 'chosen' and 'rejected' are identical"):
    sources.load_pairs(_data_cfg(train_path=str(path)))
  report = sources.DataReport()
  got = sources.load_pairs(_data_cfg(train_path=str(path), on_error="skip"), report=report)
  assert [p.prompt for p in got] == ["p", "r"]
  assert report.as_dict()["skipped_by_reason"] == {pairs_lib.IDENTICAL: 1}
  # TFDS sources: a property of the dataset, dropped and counted whatever on_error says
  hh = tmp_path / "hh" / "harmless-base-test-part1.jsonl.gz"
  _gz(str(hh), _hh_lines(30) + json.dumps({"chosen": "\n\nHuman: x\n\nAssistant: same",
                                           "rejected": "\n\nHuman: x\n\nAssistant: same"}) + "\n")
  uf = tmp_path / "uf" / "test_prefs.jsonl.gz"
  tie = json.loads(_uf_lines(1))
  tie["rejected"] = tie["chosen"]
  _gz(str(uf), _uf_lines(5) + json.dumps(tie) + "\n")
  for name, kw in (("hh_rlhf", dict(config="harmless-base", split="test", manual_dir=hh.parent)),
                   ("ultrafeedback_binarized", dict(split="test_prefs", manual_dir=uf.parent))):
    rep = records.SkipReport()
    got = builders.load_pairs(name, data_dir=tmp_path / "tfds", report=rep, **kw)
    assert rep.counts[pairs_lib.IDENTICAL] == 1 and all(p.chosen != p.rejected for p in got)


def test_on_error_skip_reaches_the_tfds_builders_through_the_config(tmp_path):
  from pit.pipelines import pit as pit_pipeline
  lines = _hh_lines(40).splitlines(keepends=True)
  lines[2] = json.dumps({"chosen": "no assistant turn", "rejected": "\n\nHuman: a\n\nAssistant: b"}) + "\n"
  _gz(str(tmp_path / "m" / "harmless-base-test-part1.jsonl.gz"), "".join(lines))
  c = _load("configs/hh_rlhf.py", "smoke")
  c.data.update(manual_dir=str(tmp_path / "m"), data_dir=str(tmp_path / "tfds"), download=False)
  c.pit.update(train_split="test", eval_split="")
  assert c.data.on_error == "skip"
  out = stages.run_stages(str(tmp_path / "run"), [pit_pipeline.data_stage(c)])["data"]
  assert out["data"]["train"]["skipped_by_reason"] == {
      "field 'chosen' has no '\\n\\nAssistant:' turn": 1}
  assert out["counts"]["pairs_train"] + out["counts"]["pairs_eval"] == 39
  c.data.on_error = "raise"
  with pytest.raises(records.DataError, match=r"part1\.jsonl\.gz:3: field 'chosen' has no"):
    stages.run_stages(str(tmp_path / "run2"), [pit_pipeline.data_stage(c)])


# -------------------------------------- every encoder of (prompt, response): the same ids


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  from pit.data import tokenizer as tk
  from tests.test_tokenizers import CORPUS, _styled_dir
  d = tmp_path_factory.mktemp("tok")
  spm = tk.train_sentencepiece(CORPUS + ["sort: 42 17 19 88 ref: 17 19 42 88"] * 5, 400,
                               str(d / "spm" / "m"))
  return {"byte": tk.ByteTokenizer(), "sentencepiece": tk.SentencePieceTokenizer(spm),
          "hf_llama3": tk.HFTokenizer(_styled_dir(d, "llama3")),
          "hf_chatml": tk.HFTokenizer(_styled_dir(d, "chatml"))}


ENCODE_CASES = [("sort: 42 17 19 88\n", "17 19 42 88", "19 17 42 88"),
                ("\n\nHuman: how are you today?\n\nAssistant:", " I am fine, thank you.",
                 " Fine."),
                ("the quick brown fox", "jumps over the lazy dog", " jumps")]


class _CapturingSampler:
  """Records the prompt ids a generate function hands to the sampler."""

  def __init__(self, eos):
    self.seen, self.eos = [], eos

  def generate(self, params, ids, max_new_tokens, **kw):
    self.seen.extend(ids)
    from types import SimpleNamespace
    n = len(ids)
    return SimpleNamespace(tokens=np.full((n, 1), self.eos, np.int32),
                           lengths=np.zeros(n, np.int32), logprobs=np.zeros((n, 1), np.float32))


@pytest.mark.parametrize("kind", ["byte", "sentencepiece", "hf_llama3", "hf_chatml"])
def test_every_trainer_sampler_and_scorer_encodes_a_pair_identically(kind, tokenizers, tmp_path):
  """SFT rows, preference pairs, the gap RM's training rows, the reward-model and gap-RM
  scorers, PPO rollout prompts and the samplers of generate/improve/judges all see the same
  ids for the same (prompt, response), whatever the tokenizer (issue 12 #3)."""
  from pit import generation, pit_format
  from pit import sharding as shd
  from pit.data import gap_batching, pair_batching
  from pit.eval.llm_judge import LMJudge
  from pit.params import init_params
  from pit.pipelines import common
  from pit.rl import gap_scorer, scorers
  from pit.rl.rollouts import Rollouts
  from tests.helpers import mesh as make_mesh, tiny_mdef
  tok = tokenizers[kind]
  chat = getattr(tok, "chat_active", False)   # prompts go through the model's chat template
  expect = lambda x, y: (encoding.prompt_ids(tok, x) + tok.encode(y.lstrip() if chat else y)
                         + [tok.eos_id])
  if not chat:   # without a template the ids are exactly the plain concatenation
    assert expect("a b", " c") == tok.sequence_prefix + tok.encode("a b") + tok.encode(" c") + [tok.eos_id]
  lens = dict(max_len=256, max_response_len=64)
  m = make_mesh((1, 1, 1))
  rm = tiny_mdef(head="scalar", vocab_size=512, max_seq_len=256)
  params = init_params(rm, m, shd.DEFAULT_RULES, 0)
  rm_scorer = scorers.RewardModelScorer(rm, params, tok, m, shd.DEFAULT_RULES, batch_size=2,
                                        format_fn=scorers.template_format("{prompt}{response}"),
                                        **lens)
  gap = gap_scorer.gap_reward_scorer(rm, params, tok, m, shd.DEFAULT_RULES, template="plain",
                                     batch_size=2, **lens)
  path = tmp_path / "sft.jsonl"
  path.write_text("".join(json.dumps({"prompt": x, "response": y}) + "\n" for x, y, _ in ENCODE_CASES))
  cfg = ml_collections.ConfigDict({"data": {**_data_cfg(train_path=str(path)).to_dict(), **lens}})
  sft_rows = [e.tokens.tolist() for e in common.load_sft_examples(str(path), cfg, tok)]
  for (x, y, z), sft in zip(ENCODE_CASES, sft_rows):
    want = expect(x, y)
    assert sft == want
    pair = pair_batching.make_pair_example(PreferencePair(x, y, z), tok, prompt_format="{prompt}", **lens)
    assert pair.chosen.tokens.tolist() == want and pair.rejected.tokens.tolist() == expect(x, z)
    assert rm_scorer.encode(*rm_scorer.format_fn(x, y, None)) == want
    # r_gap: training row (y_w scored with y_l as the reference) == the scorer's row in RL
    ref_prompt = pit_format.policy_prompt(x, z, "plain")
    rows = gap_batching.make_gap_example(PreferencePair(x, y, z), tok, template="plain",
                                         prompt_format="{prompt}", **lens).rows
    assert rows[0].tokens.tolist() == expect(ref_prompt, y)
    assert gap.encode(*gap.format_fn(x, y, z)) == rows[0].tokens.tolist()
    # prompts handed to the sampler: rollouts (plain and reference-conditioned), improve, judge
    from pit.config_base import ppo_defaults
    pcfg = ppo_defaults()
    pcfg.update(rollout_batch_size=2, epochs=1, max_prompt_len=200)
    ro = Rollouts(None, None, mesh=m, rules=shd.DEFAULT_RULES, tokenizer=tok, sampler=None,
                  scorer=None, prompts=[x], pcfg=pcfg, minibatch_size=2)
    assert ro._encode_prompt(x, None) == encoding.prompt_ids(tok, x)
    ro_pit = Rollouts(None, None, mesh=m, rules=shd.DEFAULT_RULES, tokenizer=tok, sampler=None,
                      scorer=None, prompts=[x], references=[z], pcfg=pcfg, minibatch_size=2,
                      policy_text_fn=lambda p, r: pit_format.policy_prompt(p, r, "plain"))
    assert (ro_pit._encode_prompt(x, z) + tok.encode(y.lstrip() if chat else y) + [tok.eos_id]
            == rows[0].tokens.tolist())
    sampler = _CapturingSampler(tok.eos_id)
    generation.Generator(sampler, None, tok, generation.Settings(max_new_tokens=4, batch_size=1))([x], 0)
    assert sampler.seen == [encoding.prompt_ids(tok, x)]
    judge = LMJudge(tiny_mdef(vocab_size=512), None, tok, m, chat=False)
    assert judge._ids(x) == encoding.prompt_ids(tok, x)


# ------------------------------------------------------------------------ judge scores


@pytest.mark.parametrize("text,score", [
    ("Score: 4", 4.0), ("Score: **4**", 4.0), ("**Score:** 4", 4.0), ("**Score: 4**", 4.0),
    ("Score: [4]", 4.0), ("Score: (3)", 3.0), ("Score: 4/5", 4.0), ("Score: 4 / 5", 4.0),
    ("Score: 4 out of 5", 4.0), ("Score: 4.", 4.0), ("Score: 4.5.", 4.5), ("Total score: 3", 3.0),
    ("score:2", 2.0), ("The score is 3.", 3.0), ("Score = 2", 2.0), ("Score: `5`", 5.0),
    ("Score:\n**4**", 4.0), ("Score: 4 points, well done", 4.0), ("Score: 0", 0.0),
    ("Score: 1\nwait... Score: 3", 3.0),
    # ambiguous or malformed: None, never a number
    ("Score: 1e-1", None), ("Score: 1E1", None), ("Score: 3-4", None), ("Score: 3 or 4", None),
    ("Score: 3 to 4", None), ("Score: 3, 4", None), ("Score: 4/10", None), ("Score: 8/10", None),
    ("Score: 6", None), ("Score: -1", None), ("Score: +3", None), ("Score: .5", None),
    ("Score: five", None), ("Score: <total points>", None), ("Score:", None), ("", None),
    ("no score here", None), ("Score: 4a", None), ("Score: 4.5.6", None),
    ("Score: 2\nScore: 9", None),   # the final score decides, even when an earlier one was valid
    # prose after a labelled score never overrides it; without a label, "score is N" counts
    ("Score: 2\nThe maximum score is 5.", 2.0), ("Score: 4\n\nNote: a perfect score is 5.", 4.0),
    ("Score: 4\nThis score is justified because it is clear.", 4.0),
    ("The score is: 5", 5.0), ("Final score is = 2", 2.0), ("The score is **3**.", 3.0),
    ("The score is: 5\n\nThe response is:\n\nChina", 5.0),   # SmolLM2's, HH run 2026-12-02
    ("The score is: 10", None), ("The score is: 3-4", None), ("The score for it is 3", None),
    ("Score: 4 1/2", None), ("Score: 3 -> 4", None), ("Score: 4; 5", None),
])
def test_judge_scores_follow_the_documented_grammar(text, score):
  assert parse_judge_score(text) == score


def test_unparsed_judgements_are_counted_not_scored():
  from pit import improve as improve_lib
  fb = iter(["Score: 5", "Score: 1e-1", "Score: 3-4"])
  gen = lambda texts, call: [next(fb) if call % 2 == 0 else "refined" for _ in texts]
  res = improve_lib.self_refine(gen, ["a", "b", "c"], ["x", "y", "z"],
                                feedback_template="judge_compact", refine_template=
                                "{prompt}{response}{feedback}", max_iters=1)
  assert res.unparsed_judgements == [2]
  assert np.isnan(res.scores[0, 1]) and np.isnan(res.scores[0, 2]) and res.scores[0, 0] == 5.0


# --------------------------------------------------------- every stage: its fingerprint


def _pit_fps(**changes):
  from pit.pipelines import pit as pit_pipeline
  c = _load("configs/synthetic.py", "pit_smoke")
  for dotted, value in changes.items():
    node, parts = c, dotted.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = value
  return stages.fingerprints(pit_pipeline.build_stages(c))


ALL_STAGES = ["data", "policy_sft", "pit_sft", "reward", "gap_reward", "rl_1", "rl_2", "inference",
              "evaluate"]


@pytest.mark.parametrize("field,value,rerun", [
    # each stage's own section reruns it and exactly what reads it, directly or not
    ("pit.policy_sft.train.steps", 3, ALL_STAGES[1:]),   # M_PIT, both RMs start from M_P / M_PIT
    ("pit.pit_sft.train.steps", 3, ["pit_sft", "gap_reward", "rl_1", "rl_2", "inference", "evaluate"]),
    ("pit.reward.train.steps", 3, ["reward", "inference", "evaluate"]),
    ("pit.gap_reward.train.steps", 3, ["gap_reward", "rl_1", "rl_2", "inference", "evaluate"]),
    ("pit.rl.train.steps", 4, ["rl_1", "rl_2", "inference", "evaluate"]),
    ("improve.max_iters", 3, ["inference", "evaluate"]),
    ("improve.max_new_tokens", 9, ["rl_2", "inference", "evaluate"]),  # rl_2 samples y_ref with it
    ("ppo.kl_coef", 0.5, ["rl_1", "rl_2", "inference", "evaluate"]),
    ("gap_reward.tie_coef", 0.5, ["gap_reward", "rl_1", "rl_2", "inference", "evaluate"]),
    ("pit.reference_temperature", 0.5, ["rl_2", "inference", "evaluate"]),
    ("eval.temperatures", (0.0, 0.7), ["inference", "evaluate"]),
    ("eval.comparisons", (("pit", "original"),), ["evaluate"]),
    ("pit.dataset_name", "other", ["evaluate"]),
    ("pit.max_eval_prompts", 3, ALL_STAGES),   # the data stage writes the eval set
    ("pit.template", "{prompt}REF {reference}\n", ALL_STAGES),
    ("data.synthetic_train_size", 100, ALL_STAGES),
    # settings that change no result rerun nothing
    ("progress", False, []), ("pit.policy_sft.train.log_every", 7, []),
    ("checkpoint.keep", 9, []), ("mesh.shape", (2, 4, 1), []), ("rerun_from", "reward", []),
])
def test_a_changed_setting_reruns_exactly_the_stages_that_depend_on_it(field, value, rerun):
  base, changed = _pit_fps(), _pit_fps(**{field: value})
  assert list(base) == ALL_STAGES
  assert [s for s in ALL_STAGES if base[s] != changed[s]] == rerun


@pytest.mark.parametrize("change", ["optimizer", "layers", "param_dtype"])
def test_resuming_with_another_model_or_optimizer_moves_nothing(tmp_path, change):
  """A checkpoint of another configuration is refused as incompatible (param_dtype: restored
  with a cast), never quarantined as corrupt: changing a config by mistake loses nothing."""
  from pit import optim, train_step as ts
  from pit import sharding as shd
  from pit.params import init_params
  from tests.helpers import mesh as make_mesh, optim_cfg, tiny_mdef
  m = make_mesh((1, 1, 1))
  mdef = tiny_mdef()
  opt = optim.make_optimizer(optim_cfg())
  state, _ = ts.create_train_state(init_params(mdef, m, shd.DEFAULT_RULES, 0), opt, m,
                                   mdef.shardings(m, shd.DEFAULT_RULES))
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), async_save=False)
  ck.save(1, state, {}, force=True)
  other_def, other_opt = mdef, opt
  if change == "optimizer":
    other_opt = optim.make_optimizer(optim_cfg(grad_clip_norm=0.0))
  elif change == "layers":
    other_def = tiny_mdef(num_layers=3)
  else:
    other_def = tiny_mdef(param_dtype="bfloat16")
  abstract, _ = ts.abstract_train_state(other_def.abstract_params, other_opt, m,
                                        other_def.shardings(m, shd.DEFAULT_RULES))
  if change == "param_dtype":
    restored, _, _, step = ck.restore_latest(abstract)
    assert step == 1 and jax.tree.leaves(restored.params)[0].dtype == np.dtype("bfloat16")
  else:
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="another model or optimizer"):
      ck.restore_latest(abstract)
  assert os.listdir(tmp_path / "ck") == ["1"]
  ck.close()


def test_a_signal_during_a_restore_stops_the_run_and_blames_no_checkpoint(tmp_path, monkeypatch):
  """SIGTERM while a finished checkpoint is being read (outside any training loop) stops the
  run as a preemption; it is never reported as a corrupt checkpoint, nothing is moved."""
  from pit import sharding as shd
  from pit.params import init_params
  from tests.helpers import mesh as make_mesh, tiny_mdef
  m = make_mesh((1, 1, 1))
  mdef = tiny_mdef()
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), async_save=False)
  ck.save(1, {"params": init_params(mdef, m, shd.DEFAULT_RULES, 0)}, {}, force=True)
  ck.close()
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  preemption._state["installed"] = False
  preemption.handle_signals()
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), read_only=True)
  real_restore = ck.manager.restore

  def restore_then_signal(*a, **kw):   # the signal lands inside Orbax's read
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    return real_restore(*a, **kw)
  monkeypatch.setattr(ck.manager, "restore", restore_then_signal)
  try:
    with pytest.raises(errors.Preempted, match="stopped by SIGTERM"):
      ck.restore_params(mdef.sharded_abstract(m, shd.DEFAULT_RULES))
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    preemption._state.update(installed=False)
    preemption.reset()
    ck.close()
  assert os.listdir(tmp_path / "ck") == ["1"]
