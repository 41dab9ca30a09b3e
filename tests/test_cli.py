"""`python -m pit.main`: errors, the sft + generate pipelines, and SIGKILL-resume."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import final_params, sigkill_when, without_run

TINY = ["--config=configs/sft.py:tiny", "--config.progress=False",
        "--config.model.d_model=64", "--config.model.d_ff=128", "--config.train.batch_size=16"]


def _env(devices=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "pit.main", *TINY, f"--workdir={workdir}", *extra]


def _run(workdir, *extra, devices=1, timeout=600):
  return subprocess.run(_cmd(workdir, *extra), cwd=REPO, env=_env(devices), capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["--config.pipeline=nope"], "unknown pipeline 'nope'"),
    (["--config.model.no_such_field=3"], "unknown config field"),
    (["--config.train.steps=abc"], "config.train.steps"),
    (["--config.data.train_path=/no/such/file.jsonl"], "/no/such/file.jsonl"),
    (["--config.pipeline=generate"], "no checkpoint"),
])
def test_bad_invocations_fail_with_one_line(tmp_path, args, needle):
  r = _run(tmp_path / "w", *args)
  assert r.returncode != 0
  assert "Traceback" not in r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("pit: error:")]
  assert len(errors) == 1 and needle in errors[0], r.stderr[-2000:]


def test_missing_workdir_and_bad_preset(tmp_path):
  r = subprocess.run([sys.executable, "-m", "pit.main", "--config=configs/sft.py"], cwd=REPO,
                     env=_env(), capture_output=True, text=True)
  assert r.returncode != 0 and "--workdir is required" in r.stderr and "Traceback" not in r.stderr
  r = _run(tmp_path / "w", "--config=configs/sft.py:nope")
  assert r.returncode != 0 and "unknown preset 'nope'" in r.stderr


def test_sft_trains_then_generate_samples(tmp_path):
  wd = tmp_path / "run"
  # decay_steps 0: the cosine spans the run's 120 steps (the preset's 300 would leave the
  # learning rate near 2.2e-3 at step 120), ending at end_lr_ratio 0.1 x 3e-3
  r = _run(wd, "--config.train.steps=120", "--config.train.log_every=10",
           "--config.train.eval_every=60", "--config.optim.decay_steps=0")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  assert [l for l in lines if l["split"] == "train"][-1]["learning_rate"] == pytest.approx(
      3e-4, rel=0.01)
  train = [l["loss"] for l in lines if l["split"] == "train"]
  evals = [l["nll"] for l in lines if l["split"] == "eval"]
  assert train[-1] < 0.7 * train[0], train
  assert len(evals) == 2 and evals[-1] < evals[0]
  assert os.listdir(wd / "tensorboard")  # event files written
  r = _run(wd, "--config.pipeline=generate", "--config.generate.max_new_tokens=8")
  assert r.returncode == 0, r.stderr[-3000:]
  gens = [json.loads(l) for l in open(wd / "generations.jsonl")]
  assert len(gens) == 4 and all(g["checkpoint_step"] == 120 for g in gens)
  assert all(0 < g["num_tokens"] <= 8 for g in gens)
  # N samples per prompt, prompt-major, distinct draws at temperature 1
  r = _run(wd, "--config.pipeline=generate", "--config.generate.max_new_tokens=8",
           "--config.generate.num_samples=3", "--config.generate.temperature=1.0",
           "--config.generate.output=samples.jsonl")
  assert r.returncode == 0, r.stderr[-3000:]
  samples = [json.loads(l) for l in open(wd / "samples.jsonl")]
  assert [s["sample"] for s in samples] == [0, 1, 2] * 4
  assert [s["prompt"] for s in samples] == [g["prompt"] for g in gens for _ in range(3)]
  assert len({s["response"] for s in samples}) > 4
  r = _run(wd, "--config.pipeline=generate", "--config.generate.num_samples=2")
  assert r.returncode != 0 and "temperature > 0" in r.stderr
  # train.init_checkpoint: a second SFT starts from these params (lr 0: they stay)
  wd2 = tmp_path / "from_init"
  r = _run(wd2, f"--config.train.init_checkpoint={wd}", "--config.train.steps=1",
           "--config.optim.learning_rate=0.0", "--config.optim.warmup_steps=0")
  assert r.returncode == 0, r.stderr[-3000:]
  jax.tree.map(np.testing.assert_array_equal, final_params(wd)[0], final_params(wd2)[0])




def test_sigkill_midway_resumes_to_identical_params(tmp_path):
  args = ["--config.train.steps=40", "--config.checkpoint.every=8", "--config.train.log_every=4",
          "--config.mesh.shape=(2,4,1)", "--config.train.accum_steps=2"]
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  r = _run(ref, *args, devices=8)
  assert r.returncode == 0, r.stderr[-3000:]
  sigkill_when(_cmd(killed, *args), cwd=REPO, env=_env(8),
               marker=killed / "checkpoints" / "16")
  assert not (killed / "checkpoints" / "40").exists()
  r = _run(killed, *args, devices=8)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(killed / "sft_summary.json"))
  assert summary["run"]["resumed_from"] is not None and 16 <= summary["run"]["resumed_from"] < 40
  reference = json.load(open(ref / "sft_summary.json"))
  assert without_run(summary) == without_run(reference)   # same figures as never killed
  assert summary["final_train"]["loss"] > 0 and summary["final_eval"]["nll"] > 0
  # Killed after the final checkpoint but before the summary: the rerun trains no step and
  # writes the same summary (the last train metrics are restored from the checkpoint).
  os.remove(killed / "sft_summary.json")
  r = _run(killed, *args, devices=8)
  assert r.returncode == 0, r.stderr[-3000:]
  again = json.load(open(killed / "sft_summary.json"))
  assert again["run"] == {"steps_run": 0, "resumed_from": 40}
  assert without_run(again) == without_run(reference)
  p_ref, s_ref = final_params(ref)
  p_res, s_res = final_params(killed)
  assert s_ref == s_res == 40
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_res)
  steps = [l["step"] for l in map(json.loads, open(killed / "metrics.jsonl")) if l["split"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 40  # no duplicated steps after resume


def test_help_lists_every_registered_pipeline():
  from pit import main
  from pit.pipelines import PIPELINES
  assert sorted(main.PIPELINE_NAMES) == sorted(PIPELINES)
  assert ", ".join(main.PIPELINE_NAMES) in main._help()
