"""`pipeline=pit` end to end on the synthetic task (smoke sizes), stage configs, HH data."""
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from pit import stages
from pit.data import builders
from pit.pipelines import pit as pit_pipeline
from tests.conftest import REPO
from tests.test_cli import _env


def _load(path, preset):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(preset)


def test_stage_config_merges_overrides_and_names_unknown_fields():
  c = _load("configs/synthetic.py", "pit")
  gap = pit_pipeline.derive(c, "gap_reward", "gap_reward")
  assert gap.pipeline == "gap_reward" and gap.model.head == "scalar"
  assert gap.data.max_len == 112 and gap.train.steps == c.pit.gap_reward.train.steps
  assert gap.model.d_model == c.model.d_model and c.model.head == "lm"  # root untouched
  c.pit.reward.train.no_such_field = 3
  with pytest.raises(ValueError, match=r"pit.reward.train.no_such_field: no such config field"):
    pit_pipeline.derive(c, "reward", "reward")
  c = _load("configs/synthetic.py", "pit")
  c.pit.rl_rounds = ("data", "nope")
  with pytest.raises(ValueError, match=r"pit.rl_rounds\[1\]: 'nope'"):
    pit_pipeline._check(c)


def test_presets_build():
  for path, presets in (("configs/synthetic.py", ("pit", "pit_smoke", "sft")),
                        ("configs/hh_rlhf.py", ("tiny", "smoke", "llama7b"))):
    for p in presets:
      assert isinstance(_load(path, p), ml_collections.ConfigDict)
  big = _load("configs/hh_rlhf.py", "llama7b")
  assert big.model.d_model == 4096 and big.model.dtype == "bfloat16" and big.model.remat == "full"


def _run(workdir, *extra):
  cmd = [sys.executable, "-m", "pit.main", "--config=configs/synthetic.py:pit_smoke",
         "--config.progress=False", f"--workdir={workdir}", *extra]
  return subprocess.run(cmd, cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=900)


def test_synthetic_smoke_runs_every_stage_writes_the_report_and_skips_done_stages(tmp_path):
  wd = tmp_path / "pit"
  r = _run(wd)
  assert r.returncode == 0, r.stderr[-3000:]
  names = ["data", "policy_sft", "pit_sft", "reward", "gap_reward", "rl_1", "rl_2", "inference",
           "evaluate"]
  for n in names:
    assert (wd / n / "stage_done.json").exists(), n
  report = (wd / "report.md").read_text()
  for row in ("Original vs y_w", "PIT vs Original", "Self-Refine vs Original",
              "PIT vs Self-Refine", "PIT (SFT only) vs Original", "PIT vs Original (greedy)"):
    assert row in report
  assert "oracle: win / lose / Δ (%)" in report and "reward model: win / lose / Δ (%)" in report
  for png in ("RL_gap_reward_of_rollouts.png", "oracle_score_per_inference_iteration.png",
              "RL_oracle_score_of_rollouts.png"):
    assert (wd / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  outputs = json.loads((wd / "evaluate" / "alpaca_eval_pit.json").read_text())
  assert len(outputs) == 8 and set(outputs[0]) >= {"instruction", "output", "generator"}
  refs = [json.loads(l) for l in (wd / "rl_2" / "references.jsonl").read_text().splitlines()]
  assert len(refs) == 16 and all("reference" in x for x in refs)  # M_P's own answers
  rl = [json.loads(l) for l in (wd / "rl_1" / "metrics.jsonl").read_text().splitlines()]
  assert all(0.0 <= r["oracle_score"] <= 1.0 for r in rl if r["split"] == "train")  # monitor
  infer = json.loads((wd / "inference" / "stage_done.json").read_text())["summary"]
  by_iter = infer["oracle_by_iteration"]
  assert set(by_iter) == {"pit", "pit_no_stop", "pit_sft", "self_refine"}
  assert all(len(v) == 3 for v in by_iter.values())  # t = 0, 1, 2
  assert infer["original_temperature"] == 1.0 and "oracle_original_greedy" in infer
  sampled = infer["sampled_improvement"]   # RL vs SFT-only on the sampled distribution
  assert sampled["samples"] == 4 and set(sampled["oracle"]) == {"pit", "pit_sft"}
  assert set(sampled["oracle_diff"]) == {"pit-pit_sft"}
  assert "One sampled improvement of the Original" in report
  greedy = json.loads((wd / "evaluate" / "alpaca_eval_original_greedy.json").read_text())
  assert len(greedy) == 8
  # M_PIT^SFT started from M_P (pit.pit_sft_init_from_policy in the smoke preset)
  assert json.loads((wd / "pit_sft" / "config_sft.json").read_text())["train"][
      "init_checkpoint"] == str(wd / "policy_sft")
  # The same command again finds every stage done and only re-reads the summaries.
  before = (wd / "report.md").stat().st_mtime_ns
  r = _run(wd)
  assert r.returncode == 0 and r.stderr.count("already done, skipping") == len(names)
  assert (wd / "report.md").stat().st_mtime_ns == before
  report_text = (wd / "report.md").read_text()
  pit_outputs = (wd / "inference" / "outputs" / "pit.json").read_text()
  # A finished stage's checkpoint damaged on disk is never used: the stage that reads it
  # names it, the finished stage is reopened and redone, and the results are the same.
  from tests.test_faults import _damage
  last = max(int(n) for n in os.listdir(wd / "pit_sft" / "checkpoints") if n.isdigit())
  _damage(str(wd / "pit_sft" / "checkpoints" / str(last)), "bitflip_all")
  r = _run(wd, "--config.rerun_from=inference")
  assert r.returncode == 0, r.stderr[-3000:]
  assert re.search(r"pit_sft/checkpoints step \d+ is corrupt or unreadable", r.stderr)
  assert "reopening the finished stage pit_sft" in r.stderr
  assert (wd / "inference" / "outputs" / "pit.json").read_text() == pit_outputs
  assert (wd / "report.md").read_text() == report_text
  # Killed after a stage's last checkpoint but before it was marked done (and before the
  # report): the rerun writes the same stage summary and the same report.
  os.remove(wd / "policy_sft" / "stage_done.json")
  os.remove(wd / "evaluate" / "stage_done.json")
  os.remove(wd / "report.md")
  r = _run(wd)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "stage 3/9 pit_sft: already done, skipping" in r.stderr   # M_P's result is unchanged
  assert (wd / "report.md").read_text() == report_text


def test_hh_rlhf_data_stage_on_the_shared_file(shared_dir, tmp_path):
  c = _load("configs/hh_rlhf.py", "smoke")
  c.data.manual_dir = os.path.join(shared_dir, "data", "hh-rlhf")
  c.data.data_dir = str(tmp_path / "tfds")
  summary = stages.run_stages(str(tmp_path), [pit_pipeline.data_stage(c)])["data"]
  counts = summary["counts"]
  skipped = summary["data"]["train"]["records_skipped"]
  by_reason = summary["data"]["train"]["skipped_by_reason"]
  assert counts["pairs_train"] + counts["pairs_eval"] + skipped == 1800  # every line accounted
  assert by_reason[builders.MISMATCH] == 2        # lines 1255, 1689: counted, not silent
  assert 0 < skipped - 2 < 10  # empty replies, counted rather than silently dropped
  row = json.loads((tmp_path / "data" / "pit_sft_train.jsonl").read_text().splitlines()[0])
  assert row["prompt"].startswith("\n\nHuman:") and row["prompt"].endswith("\n\nAssistant:")
  assert "Can you give a better response than that one?" in row["prompt"]


def test_sampled_improvement_means_and_paired_difference():
  """Means over samples and prompts and the paired per-prompt difference, against numpy."""
  import numpy as np
  prompts, refs = ["a", "bb", "ccc"], ["x", "y", "z"]
  seen = []

  def gen_fn(shift):
    def gen(inputs, call):
      seen.append(inputs)
      return [f"{len(i) + shift + call}" for i in inputs]
    return gen

  score = lambda ps, rs: np.array([float(r) * len(p) for p, r in zip(ps, rs)])
  out = pit_pipeline.sampled_improvement({"pit": gen_fn(2), "pit_sft": gen_fn(0)}, prompts, refs,
                                         {"oracle": score}, template="plain", samples=3)
  lens = np.array([len(pit_pipeline.pit_format.policy_prompt(p, r, "plain"))
                   for p, r in zip(prompts, refs)], np.float64)
  w = np.array([1.0, 2.0, 3.0])
  pit_pp = np.mean([(lens + 2 + k) * w for k in range(3)], axis=0)
  sft_pp = np.mean([(lens + k) * w for k in range(3)], axis=0)
  assert seen[0] == [pit_pipeline.pit_format.policy_prompt(p, r, "plain")
                     for p, r in zip(prompts, refs)]
  assert out["samples"] == 3
  np.testing.assert_allclose(out["oracle"]["pit"], pit_pp.mean())
  np.testing.assert_allclose(out["oracle"]["pit_sft"], sft_pp.mean())
  d = pit_pp - sft_pp
  np.testing.assert_allclose(out["oracle_diff"]["pit-pit_sft"], [d.mean(), d.std(ddof=1) / np.sqrt(3)])
