"""`pipeline=reward` and `pipeline=dpo` end to end: SIGKILL mid-run resumes to the
same final parameters as an uninterrupted run; config errors are one line."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import final_params, sigkill_when, without_run

SMALL = ["--config.progress=False", "--config.model.d_model=32", "--config.model.d_ff=64",
         "--config.model.num_layers=1", "--config.train.batch_size=8",
         "--config.data.synthetic_train_size=64", "--config.data.synthetic_eval_size=16",
         "--config.train.eval_every=0", "--config.train.log_every=2"]
ARGS = {"reward": ["--config=configs/reward.py:tiny", "--config.reward.margin_scale=0.5",
                   "--config.reward.center_coef=0.01"],
        "dpo": ["--config=configs/dpo.py:tiny", "--config.dpo.oracle_eval_prompts=0",
                "--config.dpo.label_smoothing=0.1"]}


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cmd(pipeline, workdir, *extra):
  return [sys.executable, "-m", "pit.main", *ARGS[pipeline], *SMALL, f"--workdir={workdir}", *extra]


def _run(pipeline, workdir, *extra, devices=2):
  return subprocess.run(_cmd(pipeline, workdir, *extra), cwd=REPO, env=_env(devices),
                        capture_output=True, text=True, timeout=600)




@pytest.mark.parametrize("pipeline", ["reward", "dpo"])
def test_sigkill_midway_resumes_to_identical_params(tmp_path, pipeline):
  args = ["--config.train.steps=12", "--config.checkpoint.every=4", "--config.mesh.shape=(1,2,1)"]
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  r = _run(pipeline, ref, *args)
  assert r.returncode == 0, r.stderr[-3000:]
  sigkill_when(_cmd(pipeline, killed, *args), cwd=REPO, env=_env(2),
               marker=killed / "checkpoints" / "4")
  assert not (killed / "checkpoints" / "12").exists()
  r = _run(pipeline, killed, *args)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(killed / f"{pipeline}_summary.json"))
  assert summary["run"]["resumed_from"] is not None and 4 <= summary["run"]["resumed_from"] < 12
  assert without_run(summary) == without_run(json.load(open(ref / f"{pipeline}_summary.json")))
  assert summary["final_eval"]["pairs"] == 16
  p_ref, s_ref = final_params(ref, pipeline)
  p_res, s_res = final_params(killed, pipeline)
  assert s_ref == s_res == 12
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_res)
  steps = [l["step"] for l in map(json.loads, open(killed / "metrics.jsonl")) if l["split"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 12
  if pipeline == "reward":   # SER's continuation: the whole RM, into another layout / remat
    cont = tmp_path / "continued"
    r = _run(pipeline, cont, "--config.train.steps=1", "--config.optim.learning_rate=0.0",
             "--config.optim.warmup_steps=0", "--config.mesh.shape=(1,2,1)",
             f"--config.reward.init_reward_model={ref}", "--config.model.scan_layers=True",
             "--config.model.remat=full")
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.load(open(cont / "reward_summary.json"))["final_eval"]
    want = json.load(open(ref / "reward_summary.json"))["final_eval"]
    for k in ("loss", "accuracy"):
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    r = _run(pipeline, tmp_path / "wider", "--config.train.steps=1", "--config.model.d_ff=128",
             f"--config.reward.init_reward_model={ref}", devices=1)
    errors = [l for l in r.stderr.splitlines() if l.startswith("pit: error:")]
    assert r.returncode == 2 and len(errors) == 1 and "model.d_ff" in errors[0], r.stderr[-2000:]
    assert "scan_layers" not in errors[0] and "remat" not in errors[0]
  if pipeline == "dpo":  # iterative DPO: policy and live reference = the previous iteration
    it2 = tmp_path / "iter2"
    r = _run(pipeline, it2, "--config.train.steps=2", "--config.mesh.shape=(1,2,1)",
             f"--config.dpo.init_checkpoint={ref}", f"--config.dpo.reference_checkpoint={ref}",
             "--config.dpo.reference=live")
    assert r.returncode == 0, r.stderr[-3000:]
    s2 = json.load(open(it2 / "dpo_summary.json"))
    before = s2["eval_before"]
    np.testing.assert_allclose(before["loss"], 0.6931472 * 0.9 + 0.6931472 * 0.1, rtol=1e-5)
    assert abs(before["kl_tokens"]) < 1e-5 and abs(before["reward_margin"]) < 1e-5
    # the init is the previous run's final policy
    prev = json.load(open(ref / "dpo_summary.json"))["final_eval"]
    np.testing.assert_allclose(before["logps_chosen"], prev["logps_chosen"], rtol=1e-5)
    assert before["logps_chosen"] != summary["eval_before"]["logps_chosen"]


@pytest.mark.parametrize("pipeline,args,needle", [
    ("dpo", ["--config.dpo.loss=nope"], "unknown DPO loss 'nope'"),
    ("dpo", ["--config.dpo.reference=sometimes"], "dpo.reference"),
    ("dpo", ["--config.dpo.init_checkpoint=/no/such/dir"], "/no/such/dir"),
    ("reward", ["--config.model.head=lm"], "model.head='scalar'"),
])
def test_config_errors_are_one_line(tmp_path, pipeline, args, needle):
  r = _run(pipeline, tmp_path / "w", *args, devices=1)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("pit: error:")]
  assert len(errors) == 1 and needle in errors[0], r.stderr[-2000:]


def test_synthetic_onpolicy_dpo_script(tmp_path):
  """launch/synthetic_dpo.sh: SFT -> N samples per prompt -> oracle best-vs-worst pairs
  -> DPO (configs/dpo.py:onpolicy), shrunk to seconds; a rerun skips the finished steps."""
  from pit.data import synthetic as syn
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in syn.eval_prompts(16, 3)))
  model = ["--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.num_layers=1",
           "--config.progress=False"]
  env = _env(1)
  env.update(PYTHON=sys.executable, NUM_SAMPLES="4", N_TRAIN="300", PROMPTS_TRAIN=str(prompts),
             PROMPTS_EVAL=str(prompts),
             SFT_FLAGS=" ".join(model + ["--config.train.steps=150", "--config.train.eval_every=0",
                                         "--config.checkpoint.every=150"]),
             GEN_FLAGS="--config.generate.batch_size=32")
  wd = tmp_path / "w"
  cmd = ["bash", "launch/synthetic_dpo.sh", str(wd), *model, "--config.train.steps=4",
         "--config.train.batch_size=4", "--config.train.eval_every=0",
         "--config.dpo.oracle_eval_prompts=8"]
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  samples = [json.loads(l) for l in open(wd / "sft" / "samples_train.jsonl")]
  assert len(samples) == 64 and [s["sample"] for s in samples[:4]] == [0, 1, 2, 3]
  pairs = [json.loads(l) for l in open(wd / "pairs_train.jsonl")]
  assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
  summary = json.load(open(wd / "dpo" / "dpo_summary.json"))
  assert summary["run"]["steps_run"] == 4 and summary["train_pairs"] == len(pairs)
  assert set(summary["oracle_before"]) == set(summary["oracle_after"]) == {
      "oracle_greedy", "oracle_sampled"}
  stamps = {p: os.stat(wd / "sft" / p).st_mtime_ns for p in
            ("metrics.jsonl", "samples_train.jsonl", "samples_eval.jsonl")}
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert stamps == {p: os.stat(wd / "sft" / p).st_mtime_ns for p in stamps}
  assert json.load(open(wd / "dpo" / "dpo_summary.json"))["run"]["resumed_from"] == 4
