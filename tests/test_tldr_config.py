"""configs/tldr.py: presets build with consistent settings; the smoke preset runs every PIT
stage end to end on a small manual_dir in the official comparisons JSON-lines format."""
import json
import os
import random
import subprocess
import sys

import pytest

from pit import pit_format
from pit.pipelines import pit as pit_pipeline
from tests.conftest import REPO
from tests.test_cli import _env
from tests.test_pit_pipeline import _load

PRESETS = ("tiny", "smoke", "llama7b")
STAGES = ("data", "policy_sft", "pit_sft", "reward", "gap_reward", "rl_1", "rl_2", "inference",
          "evaluate")
WORDS = ("my", "girlfriend", "and", "I", "have", "been", "together", "for", "two", "years",
         "but", "lately", "she", "wants", "to", "move", "across", "the", "country", "job",
         "money", "rent", "friends", "advice", "what", "should", "do", "help")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_consistent(preset):
  c = _load("configs/tldr.py", preset)
  pit_pipeline._check(c)
  assert c.pipeline == "pit" and c.data.source == "tfds"
  assert c.data.tfds_name == "summarize_from_feedback" and c.pit.train_split == "train"
  assert c.pit.eval_split == ("" if preset == "tiny" else "validation")
  assert c.pit.dataset_name == "OpenAI/Summary (TL;DR)"
  for tmpl in (c.pit.template, c.improve.template, c.ppo.policy_template):
    assert pit_format.template(tmpl) == c.pit.template
  L = c.model.max_seq_len
  for section in ("policy_sft", "pit_sft", "reward", "gap_reward"):
    s = pit_pipeline.derive(c, "sft", section)
    assert s.data.max_response_len < s.data.max_len <= L, section
    buckets = tuple(s.data.buckets)
    assert buckets == tuple(sorted(buckets)) and buckets[-1] == s.data.max_len
  gap = pit_pipeline.derive(c, "gap_reward", "gap_reward")
  assert gap.model.head == "scalar" and c.ppo.reward_max_len == gap.data.max_len
  pit_prompt = gap.data.max_len - gap.data.max_response_len  # M_PIT's input, reference included
  for g in (c.improve, c.ppo):
    assert g.max_prompt_len == pit_prompt and g.max_prompt_len + g.max_new_tokens <= L
    assert max(g.prompt_buckets) == g.max_prompt_len
  rl = pit_pipeline.derive(c, "ppo", "rl")
  updates = c.ppo.epochs * c.ppo.rollout_batch_size // rl.train.batch_size
  assert c.ppo.rollout_batch_size % rl.train.batch_size == 0
  assert rl.train.steps % updates == 0 and rl.checkpoint.every % updates == 0


def test_template_renders_the_reference_as_a_tldr():
  c = _load("configs/tldr.py", "tiny")
  x = "SUBREDDIT: r/advice\n\nTITLE: T\n\nPOST: P\n\nTL;DR:"
  assert pit_format.policy_prompt(x, " the old one", c.pit.template) == (
      x + " the old one\n\nBETTER TL;DR:")
  assert pit_format.gap_input(x, " new", " old", c.pit.template).endswith("BETTER TL;DR: new")


def _text(rng, lo, hi):
  out = ""
  while len(out) < rng.randint(lo, hi):
    out += " " + rng.choice(WORDS)
  return out


def _comparison(rng, i, split, post):
  return {"info": {"id": f"t3_{i}", "post": post, "title": f"Title {i % 7}",
                   "subreddit": "relationships"},
          "split": split,
          "summaries": [{"text": _text(rng, 40, 160), "policy": "sup2", "note": None},
                        {"text": _text(rng, 40, 160), "policy": "ref"}],
          "choice": rng.randint(0, 1), "worker": "w1", "batch": "batch3",
          "extra": {"confidence": rng.randint(1, 9)}}


def _write_manual_dir(root, n_train=60, n_valid=18, n_cnndm=2):
  """comparisons/batch3.json (Reddit: train + valid1) and comparisons/cnndm0.json (valid2)."""
  rng = random.Random(0)
  posts = [_text(rng, 400, 1500).strip() for _ in range(24)]  # posts repeat across comparisons
  rows = [_comparison(rng, i, "train", posts[i % 20]) for i in range(n_train)]
  rows += [_comparison(rng, n_train + i, "valid1", posts[20 + i % 4]) for i in range(n_valid)]
  cnndm = [{"info": {"id": None, "article": _text(rng, 800, 1500), "title": "News", "site": "cnn"},
            "split": "valid2", "choice": 0, "worker": "w2", "batch": "cnndm0", "extra": {},
            "summaries": [{"text": " a story", "policy": "p"}, {"text": " another", "policy": "q"}]}
           for _ in range(n_cnndm)]
  for name, recs in (("batch3.json", rows), ("cnndm0.json", cnndm)):
    os.makedirs(os.path.join(root, "comparisons"), exist_ok=True)
    with open(os.path.join(root, "comparisons", name), "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in recs))


def _lines(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_smoke_runs_every_stage_on_a_comparisons_fixture(tmp_path):
  _write_manual_dir(tmp_path / "manual")
  wd = tmp_path / "tldr"
  cmd = [sys.executable, "-m", "pit.main", "--config=configs/tldr.py:smoke",
         "--config.progress=False", f"--workdir={wd}",
         f"--config.data.manual_dir={tmp_path / 'manual'}",
         f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.download=False"]
  r = subprocess.run(cmd, cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  for n in STAGES:
    assert (wd / n / "stage_done.json").exists(), n
  report = (wd / "report.md").read_text()
  assert "OpenAI/Summary (TL;DR)" in report and "PIT vs Original" in report
  counts = json.loads((wd / "data" / "stage_done.json").read_text())["summary"]["counts"]
  assert counts["pairs_train"] == 60 and counts["pairs_eval"] == 20 and counts["eval_set"] == 4
  evals = _lines(wd / "data" / "pairs_eval.jsonl")
  assert sum(p["prompt"].startswith("TITLE: News\n\nARTICLE:") for p in evals) == 2  # CNN/DM kept
  assert all(r["prompt"].startswith("SUBREDDIT: r/relationships\n\nTITLE: ")
             for r in _lines(wd / "data" / "eval_set.jsonl"))  # Reddit comes first
  row = _lines(wd / "data" / "pit_sft_train.jsonl")[0]
  assert row["prompt"].endswith("\n\nBETTER TL;DR:") and "\n\nTL;DR: " in row["prompt"]
  assert row["response"].startswith(" ")
