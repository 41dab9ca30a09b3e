"""Multi-process runs: two CPU processes joined by `jax.distributed` (2 devices each, one
4-device mesh) against one process with the same 4-device mesh. SFT, generation, DPO (with its
precomputed reference log-probs and the oracle evaluation that samples) and PPO (rollouts,
scoring, GAE) must give the same metrics, samples and parameters: each process feeds its share
of every training batch, generation and scoring run over the global mesh and their results are
gathered on every process (`pit.sharding.to_host`)."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import final_params

MODEL = ["--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.num_layers=2",
         "--config.progress=False", "--config.mesh.shape=(2,2,1)"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(workdir, args, processes: int, timeout: float = 600) -> list[str]:
  """`python -m pit.main` as one process of 4 devices or `processes` processes sharing them;
  returns each process's stderr."""
  cmd = [sys.executable, "-m", "pit.main", f"--workdir={workdir}", *args]
  if processes == 1:
    r = subprocess.run(cmd, cwd=REPO, env=_env(4), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return [r.stderr]
  port = _free_port()
  procs = [subprocess.Popen(
      cmd + ["--config.distributed.enabled=True",
             f"--config.distributed.coordinator_address=127.0.0.1:{port}",
             f"--config.distributed.num_processes={processes}",
             f"--config.distributed.process_id={i}"],
      cwd=REPO, env=_env(4 // processes), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True) for i in range(processes)]
  errs = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=timeout)
      errs.append((p.returncode, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (rc, err) in enumerate(errs):
    assert rc == 0, f"process {i} of {processes}:\n{err[-4000:]}"
  return [err for _, err in errs]


def _train_metrics(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  from pit.trainer import TIMING_METRICS
  return [{k: v for k, v in r.items() if isinstance(v, (int, float)) and k not in TIMING_METRICS + ("time",)}
          for r in rows]


def _assert_metrics_close(a_dir, b_dir, rtol=2e-4):
  a, b = _train_metrics(a_dir), _train_metrics(b_dir)
  assert [r["step"] for r in a] == [r["step"] for r in b] and a
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys(), (ra.keys(), rb.keys())
    for k in ra:
      np.testing.assert_allclose(rb[k], ra[k], rtol=rtol, atol=1e-5, err_msg=f"step {ra['step']} {k}")




@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """SFT -> generate -> DPO -> PPO, once in one process and once in two."""
  root = tmp_path_factory.mktemp("multihost")
  out = {}
  for n in (1, 2):
    w = root / f"p{n}"
    sft = w / "sft"
    out[n, "sft_logs"] = _run(sft, ["--config=configs/sft.py:tiny", *MODEL, "--config.train.steps=6",
               "--config.train.batch_size=8", "--config.train.log_every=1",
               "--config.train.eval_every=6", "--config.checkpoint.every=3"], n)
    _run(sft, ["--config=configs/sft.py:tiny", *MODEL, "--config.pipeline=generate",
               "--config.generate.max_new_tokens=8", "--config.generate.batch_size=4",
               "--config.generate.num_samples=2", "--config.generate.temperature=1.0",
               "--config.generate.output=samples.jsonl"], n)
    out[n, "dpo_logs"] = _run(w / "dpo", ["--config=configs/dpo.py:tiny", *MODEL, f"--config.dpo.init_checkpoint={sft}",
                     "--config.data.synthetic_train_size=64", "--config.data.synthetic_eval_size=16",
                     "--config.dpo.oracle_eval_prompts=8", "--config.generate.max_new_tokens=8",
                     "--config.train.steps=4", "--config.train.batch_size=8",
                     "--config.train.log_every=1", "--config.train.eval_every=4",
                     "--config.dpo.reference=precompute"], n)
    _run(w / "ppo", ["--config=configs/ppo.py:tiny", *MODEL, f"--config.ppo.init_checkpoint_dir={sft}",
                     "--config.data.synthetic_train_size=32", "--config.ppo.rollout_batch_size=8",
                     "--config.train.batch_size=4", "--config.ppo.epochs=1",
                     "--config.ppo.max_new_tokens=8", "--config.train.steps=4",
                     "--config.checkpoint.every=2", "--config.train.log_every=2"], n)
    out[n] = w
  return out


def test_sft_two_processes_equal_one(runs):
  _assert_metrics_close(runs[1] / "sft", runs[2] / "sft")
  import jax
  p1, s1 = final_params(runs[1] / "sft", "sft")
  p2, s2 = final_params(runs[2] / "sft", "sft")
  assert s1 == s2 == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), p1, p2)


def test_each_process_tokenises_only_its_share(runs):
  """No process holds the whole tokenised dataset: process p encodes the examples
  i = p (mod 2), 1/2 of each dataset (pit.data.sharded), the rest only when a batch needs it."""
  for stage, datasets in (("sft", ["toy_sft.jsonl"]), ("dpo", ["train pairs", "eval pairs"])):
    logs = runs[2, f"{stage}_logs"]
    for what in datasets:
      counts = []
      for p, log in enumerate(logs):
        (m,) = re.findall(re.escape(what) + rf": (\d+) of (\d+) tokenised on process {p} of 2",
                          log) or [None]
        assert m, f"{stage} process {p}: no share line for {what}"
        counts.append((int(m[0]), int(m[1])))
      total = counts[0][1]
      assert total > 8 and [k for k, _ in counts] == [-(-total // 2), total // 2], (stage, counts)
    assert " tokenised on process" not in runs[1, f"{stage}_logs"][0]   # one process: all


def test_generation_two_processes_equal_one(runs):
  a = [json.loads(l) for l in open(runs[1] / "sft" / "samples.jsonl")]
  b = [json.loads(l) for l in open(runs[2] / "sft" / "samples.jsonl")]
  assert len(a) == 8 and [(r["prompt"], r["sample"]) for r in a] == [(r["prompt"], r["sample"]) for r in b]
  assert [r["response"] for r in a] == [r["response"] for r in b]
  assert len({r["response"] for r in a}) > 1


def test_dpo_two_processes_equal_one(runs):
  _assert_metrics_close(runs[1] / "dpo", runs[2] / "dpo")
  s1 = json.load(open(runs[1] / "dpo" / "dpo_summary.json"))
  s2 = json.load(open(runs[2] / "dpo" / "dpo_summary.json"))
  for key in ("oracle_before", "oracle_after"):   # sampled and scored over the global mesh
    assert s1[key] and s1[key] == s2[key], key


def test_ppo_two_processes_equal_one(runs):
  assert any("score" in r for r in _train_metrics(runs[1] / "ppo"))   # rollouts were scored
  _assert_metrics_close(runs[1] / "ppo", runs[2] / "ppo")
