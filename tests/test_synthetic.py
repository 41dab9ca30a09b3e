"""The synthetic sort task: oracle vs. an independent brute-force reference,
graded corruption, pairs/IFT/EFT data, held-out prompts, judge prompts, the
TFDS builder and the CLI."""
import collections
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pit.data import judge
from pit.data import synthetic as syn
from tests.conftest import REPO


# ------------------------------------------------------------ reference oracle

def _ref_parse(text):
  """Character scan (no regex): digit tokens and the non-digit runs around them."""
  toks, runs, cur_tok, cur_run = [], [], "", ""
  for ch in text:
    if ch in "0123456789":
      if not cur_tok:
        runs.append(cur_run)
        cur_run = ""
      cur_tok += ch
    else:
      if cur_tok:
        toks.append(cur_tok)
        cur_tok = ""
      cur_run += ch
  if cur_tok:
    toks.append(cur_tok)
  runs.append(cur_run)
  return toks, runs


def ref_score(prompt, response):
  """The documented formula, recomputed in float64 by brute force."""
  items = prompt[len("sort: "):].strip().split(" ")
  n = len(items)
  toks, runs = _ref_parse(response)
  present = [x for x in items if x in toks]
  if not present:
    return 0.0, 0
  if not toks:
    bad = 1
  else:
    bad = sum(1 for r in runs[1:-1] if r != " ") + (runs[0] != "") + (runs[-1] != "")
  foreign = sum(1 for t in toks if t not in items)
  dups = sum(1 for i, t in enumerate(toks) if t in toks[:i])
  missing = n - len(present)
  concordant = 0
  for a, b in itertools.combinations(items, 2):
    lo, hi = (a, b) if int(a) < int(b) else (b, a)
    if lo in toks and hi in toks and toks.index(lo) < toks.index(hi):
      concordant += 1
  disorder = n * (n - 1) // 2 - concordant
  points = sum([bad == 0, foreign == 0, dups == 0, missing == 0, disorder == 0])
  fine = len(present) / n
  for e in (bad, foreign, dups, disorder):
    fine /= 1.0 + e / n
  return 0.5 * points / 5 + 0.5 * fine, points


def _responses(rng, prompt):
  """Gold, degraded, random, echo and garbage responses to one prompt."""
  items = prompt[6:].split()
  out = [syn.gold_response(prompt), syn.echo_response(prompt), syn.random_response(rng), "",
         "hello", " ".join(items[:2]), "  ".join(items), ",".join(sorted(items)) + ".",
         "0" + items[0], items[0] + items[1]]
  out += [syn.degrade(rng, prompt, int(k)) for k in rng.integers(0, syn.MAX_ERRORS + 1, 12)]
  alphabet = list("0123456789 ,.x") + items
  out += ["".join(rng.choice(alphabet, size=int(rng.integers(1, 12)))) for _ in range(6)]
  return out


def test_oracle_matches_reference():
  rng = np.random.default_rng(0)
  prompts = [syn.make_prompt(rng, "any") for _ in range(60)]
  pairs = [(p, r) for p in prompts for r in _responses(rng, p)]
  got = syn.oracle_scores([p for p, _ in pairs], [r for _, r in pairs])
  assert got.dtype == np.float32
  want = np.array([ref_score(p, r)[0] for p, r in pairs])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  for p, r in pairs:
    assert syn.oracle_score(p, r) == pytest.approx(ref_score(p, r)[0], abs=1e-12)
    assert syn.judge_points(p, r) == ref_score(p, r)[1]
  assert 0.0 <= got.min() and got.max() <= 1.0


def test_gold_garbage_and_prompt_validation():
  rng = np.random.default_rng(1)
  for _ in range(50):
    p = syn.make_prompt(rng, "any")
    items = p[6:].split()
    assert 4 <= len(items) <= 7 and len(set(items)) == len(items)
    assert all(10 <= int(x) <= 99 for x in items) and len(p.encode()) <= 48
    g = syn.gold_response(p)
    assert [int(x) for x in g.split(" ")] == sorted(int(x) for x in items)
    assert syn.oracle_score(p, g) == 1.0 and syn.judge_points(p, g) == 5
    assert syn.oracle_score(p, "") == 0.0 and syn.oracle_score(p, "garbage!") == 0.0
    foreign = [str(x) for x in range(10, 100) if str(x) not in items][:4]
    assert syn.oracle_score(p, " ".join(foreign)) == 0.0 and syn.judge_points(p, "") == 0
  for bad in ["sort: 1 2 3 4\n", "sort: 11 11 12 13\n", "sort: 11 12 13\n", "sort 11 12 13 14\n",
              "sort: " + " ".join(str(x) for x in range(11, 24)) + "\n"]:   # 13 items
    with pytest.raises(ValueError, match="sort prompt"):
      syn.oracle_score(bad, "11")


def test_mean_score_strictly_decreases_with_errors():
  rng = np.random.default_rng(2)
  prompts = [syn.make_prompt(rng) for _ in range(150)]
  means = [np.mean([syn.oracle_score(p, syn.degrade(rng, p, k)) for p in prompts])
           for k in range(syn.MAX_ERRORS + 1)]
  assert means[0] == 1.0
  assert all(a > b for a, b in zip(means, means[1:])), means
  assert means[-1] > 0.02  # degraded responses keep partial credit (half the items at least)


def test_each_error_lowers_and_each_fix_raises_the_score():
  rng = np.random.default_rng(3)
  kinds = collections.Counter()
  for _ in range(120):
    p = syn.make_prompt(rng)
    chain = syn.degrade_chain(rng, p, int(rng.integers(1, syn.MAX_ERRORS + 1)))
    assert chain[0] == syn.gold_response(p)
    ref = [ref_score(p, r)[0] for r in chain]
    # undoing the last error (stepping back along the chain) strictly raises the score
    assert all(a > b for a, b in zip(ref, ref[1:])), list(zip(chain, ref))
    for r in chain:
      assert len(r.encode()) <= syn.MAX_RESPONSE_BYTES
      toks, _ = _ref_parse(r)
      assert sum(t in p[6:].split() for t in set(toks)) >= (len(p[6:].split()) + 1) // 2
    for a, b in zip(chain, chain[1:]):
      ta, tb = _ref_parse(a)[0], _ref_parse(b)[0]
      kinds["len+" if len(tb) > len(ta) else "len-" if len(tb) < len(ta) else
            "same-tokens" if ta == tb else "reorder" if sorted(ta) == sorted(tb) else "replace"] += 1
  assert set(kinds) == {"len+", "len-", "same-tokens", "reorder", "replace"}, kinds
  with pytest.raises(ValueError, match="n_errors"):
    syn.degrade(rng, "sort: 11 12 13 14\n", syn.MAX_ERRORS + 1)


def test_preference_pairs_margins_and_mix():
  pairs = syn.preference_pairs(400, seed=0)
  assert len(pairs) == 400
  for p in pairs:
    m = p.meta
    assert set(m) >= {"chosen_score", "rejected_score", "chosen_errors", "rejected_errors"}
    assert m["chosen_score"] == pytest.approx(ref_score(p.prompt, p.chosen)[0], abs=1e-12)
    assert m["rejected_score"] == pytest.approx(ref_score(p.prompt, p.rejected)[0], abs=1e-12)
    assert p.margin > 0 and p.margin == pytest.approx(m["chosen_score"] - m["rejected_score"])
  ce = collections.Counter(p.meta["chosen_errors"] for p in pairs)
  gaps = collections.Counter(p.meta["rejected_errors"] - p.meta["chosen_errors"] for p in pairs)
  assert set(ce) >= {0, 1, 2, 3}
  assert 0.55 < sum(v for k, v in ce.items() if k > 0) / 400 < 0.85   # chosen often imperfect
  assert {1, 2, 3, 4} <= set(gaps)
  nested = [p for p in pairs if p.meta["nested"]]
  assert 0.45 < len(nested) / 400 < 0.75
  margins = np.array([p.margin for p in pairs])
  assert margins.min() < 0.1 and margins.max() > 0.4                   # a mix of gaps
  assert pairs == syn.preference_pairs(400, seed=0)                    # deterministic
  assert pairs != syn.preference_pairs(400, seed=1)


def test_held_out_eval_prompts_are_disjoint_from_training():
  ev = syn.eval_prompts(300, seed=0)
  assert ev == syn.eval_prompts(300, seed=0) and ev != syn.eval_prompts(300, seed=1)
  ev_sets = [frozenset(syn.parse_prompt(p)) for p in ev]
  assert len(set(ev_sets)) == 300 and all(syn.is_eval_items(s) for s in ev_sets)
  train = ([r["prompt"] for r in syn.ift_examples(2000, 0)] +
           [p.prompt for p in syn.preference_pairs(300, 0)] +
           [syn.make_prompt(np.random.default_rng(s)) for s in range(300)])
  train_sets = {frozenset(syn.parse_prompt(p)) for p in train}
  assert not train_sets & set(ev_sets)
  assert not any(syn.is_eval_items(s) for s in train_sets)
  val = syn.preference_pairs(50, seed=0, split="eval")
  assert all(syn.is_eval_items(syn.parse_prompt(p.prompt)) for p in val)
  # about 1/EVAL_MODULUS of item sets are held out
  rng = np.random.default_rng(9)
  frac = np.mean([syn.is_eval_items(syn.parse_prompt(syn.make_prompt(rng, "any")))
                  for _ in range(4000)])
  assert abs(frac - 1 / syn.EVAL_MODULUS) < 0.03


def test_ift_and_baselines():
  ift = syn.ift_examples(100, seed=3)
  assert ift == syn.ift_examples(100, seed=3)
  assert all(syn.oracle_score(r["prompt"], r["response"]) == 1.0 for r in ift)
  assert max(len(r["prompt"].encode()) for r in ift) <= 48
  assert max(len(r["response"].encode()) for r in ift) <= 32
  base = syn.random_baseline_score(300, seed=0)
  ev = syn.eval_prompts(300, 0)
  rng = np.random.default_rng([0, syn._STREAM["random"]])   # the documented draw
  responses = [syn.random_response(rng) for _ in ev]
  assert all(r.count(" ") + 1 in range(4, 8) and r.replace(" ", "").isdigit() for r in responses)
  assert base == pytest.approx(np.mean([ref_score(p, r)[0] for p, r in zip(ev, responses)]),
                               abs=1e-6)
  assert 0.0 < base < 0.15
  echo = syn.echo_baseline_score(ev)
  assert echo == pytest.approx(np.mean([ref_score(p, " ".join(p[6:].split()))[0] for p in ev]),
                               abs=1e-6)
  assert base < echo < 1.0


def test_judge_prompt_and_score_parser():
  full = judge.render_judge_prompt("sort: 12 11 {x}\n", "11 {response} 12", compact=False)
  assert "additive 5-point scoring system" in full and "User: sort: 12 11 {x}\n" in full
  assert "<response>11 {response} 12</response>" in full and "{instruction}" not in full
  assert 'format: "Score: <total points>"' in full
  compact = judge.render_judge_prompt("sort: 12 11\n", "11 12", compact=True)
  assert compact == "Judge, additive 0-5.\nUser: sort: 12 11\n<response>11 12</response>\n"
  for k in range(6):
    assert judge.parse_judge_score(f"+form -all\nScore: {k}") == float(k)
  assert judge.parse_judge_score("Score: 4.5") == 4.5
  assert judge.parse_judge_score("Score: 1\nwait... Score: 3") == 3.0
  assert judge.parse_judge_score("score:2") == 2.0
  for bad in ["", "no score here", "Score: 6", "Score: -1", "Score: five", "Score:", None,
              "Score: 2\nScore: 9"]:
    assert judge.parse_judge_score(bad) is None, bad


def test_eft_score_equals_judge_points():
  import re
  recs = syn.eft_examples(300, seed=0)
  assert recs == syn.eft_examples(300, seed=0)
  pat = re.compile(r"Judge, additive 0-5\.\nUser: (.*)\n<response>(.*)</response>\n", re.S)
  seen = set()
  for r in recs:
    m = pat.fullmatch(r["prompt"])
    assert m, r["prompt"]
    prompt, response = m.group(1) + "\n", m.group(2)
    k = syn.judge_points(prompt, response)
    assert judge.parse_judge_score(r["response"]) == k == r["points"] == ref_score(prompt, response)[1]
    assert r["response"].endswith(f"\nScore: {k}")
    assert len(r["prompt"].encode()) + len(r["response"].encode()) <= 160
    seen.add(k)
  assert seen == {0, 1, 2, 3, 4, 5}
  full = syn.eft_examples(5, seed=0, compact=False)
  assert all(judge.parse_judge_score(r["response"]) == r["points"] for r in full)
  assert all("additive 5-point" in r["prompt"] for r in full)


def test_tfds_builder_round_trip(tmp_path):
  import tensorflow_datasets as tfds
  from pit.data import builders
  from pit.data.builders import synthetic as sb
  builders.build("synthetic", config="small", data_dir=str(tmp_path))
  ds = tfds.data_source("synthetic/small", data_dir=str(tmp_path))
  for split, want in (("train", syn.preference_pairs(256, 0)),
                      ("validation", syn.preference_pairs(64, 0, split="eval"))):
    got = [sb.to_pair(ds[split][i]) for i in range(len(ds[split]))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
      assert (g.prompt, g.chosen, g.rejected) == (w.prompt, w.chosen, w.rejected)
      assert g.meta["nested"] == w.meta["nested"]
      assert (g.meta["chosen_errors"], g.meta["rejected_errors"]) == (
          w.meta["chosen_errors"], w.meta["rejected_errors"])
      for k in ("chosen_score", "rejected_score"):
        assert g.meta[k] == float(np.float32(w.meta[k]))
      assert g.margin == float(np.float32(w.margin))
  via_api = builders.load_pairs("synthetic", config="small", split="train", data_dir=str(tmp_path))
  assert [p.chosen for p in via_api] == [p.chosen for p in syn.preference_pairs(256, 0)]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "pit.data.synthetic", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_writes_files_and_scores(tmp_path):
  from pit.data.pairs import read_pairs_jsonl
  r = _cli("--out_dir", str(tmp_path), "--n_train", "40", "--n_eval", "20", "--seed", "1")
  assert r.returncode == 0, r.stderr
  for name in syn.FILES:
    assert os.path.getsize(tmp_path / f"{name}.jsonl") > 0
  assert read_pairs_jsonl(str(tmp_path / "pairs_train.jsonl")) == syn.preference_pairs(40, 1)
  assert len(read_pairs_jsonl(str(tmp_path / "pairs_eval.jsonl"))) == 20
  ev = [json.loads(l)["prompt"] for l in open(tmp_path / "prompts_eval.jsonl")]
  assert ev == syn.eval_prompts(20, 1)
  assert [json.loads(l) for l in open(tmp_path / "ift.jsonl")] == syn.ift_examples(40, 1)
  assert len(open(tmp_path / "eft.jsonl").readlines()) == 40
  assert [json.loads(l) for l in open(tmp_path / "sft_chosen.jsonl")] == [
      {"prompt": q.prompt, "response": q.chosen} for q in syn.preference_pairs(40, 1)]
  # score: gold -> 1, echo -> the echo baseline; an empty response is allowed
  gens = tmp_path / "generations.jsonl"
  with open(gens, "w") as f:
    for i, p in enumerate(ev):
      f.write(json.dumps({"prompt": p, "response": syn.gold_response(p) if i % 2 else ""}) + "\n")
  r = _cli("score", "--generations", str(gens))
  assert r.returncode == 0, r.stderr
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary["oracle_mean"] == pytest.approx(0.5) and summary["n"] == 20
  assert summary["random_baseline"] == pytest.approx(syn.random_baseline_score(20, 0))
  assert summary["echo_baseline"] == pytest.approx(syn.echo_baseline_score(ev))
  assert "random baseline" in r.stdout
  with open(gens, "a") as f:
    f.write('{"prompt": "sort: 1 2\\n", "response": "1 2"}\n')
  r = _cli("score", "--generations", str(gens))
  assert r.returncode != 0 and f"{gens}:21" in r.stderr and "Traceback" not in r.stderr


def test_best_vs_worst_pairs():
  from pit.data.pairs import best_vs_worst
  p = best_vs_worst("x", ["a", "b", "c", "d"], [0.2, 0.9, 0.1, 0.9])
  assert (p.chosen, p.rejected) == ("b", "c") and p.margin == pytest.approx(0.8)
  assert p.meta == {"chosen_score": 0.9, "rejected_score": 0.1, "n_candidates": 4}
  assert best_vs_worst("x", ["a", "b"], [0.5, 0.5]) is None          # no preference
  assert best_vs_worst("x", ["a", "a"], [0.1, 0.7]) is None          # same text
  assert best_vs_worst("x", ["a", "b"], [0.1, 0.3], min_gap=0.25) is None
  assert best_vs_worst("x", ["a"], [0.1]) is None
  with pytest.raises(ValueError, match="2 responses but 1 scores"):
    best_vs_worst("x", ["a", "b"], [0.1])


def test_cli_oracle_pairs_from_samples(tmp_path):
  from pit.data.pairs import read_pairs_jsonl
  ev = syn.eval_prompts(3, 0)
  rng = np.random.default_rng(0)
  rows = []
  for p in ev:                                   # 4 samples: gold, 1, 3 and 5 errors
    for k in (1, 0, 5, 3):
      rows.append({"prompt": p, "sample": len(rows) % 4, "response": syn.degrade(rng, p, k)})
  rows.append({"prompt": ev[0], "sample": 4, "response": ""})  # ungrouped order is fine
  gens = tmp_path / "samples.jsonl"
  gens.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "pairs.jsonl"
  r = _cli("pairs", "--generations", str(gens), "--out", str(out))
  assert r.returncode == 0, r.stderr
  stats = json.loads(r.stdout.strip().splitlines()[-1])
  assert stats["prompts"] == 3 and stats["pairs"] == 3
  assert (stats["candidates_min"], stats["candidates_max"], stats["empty_dropped"]) == (4, 4, 1)
  pairs = read_pairs_jsonl(str(out))
  assert [q.prompt for q in pairs] == ev
  for q in pairs:
    scores = [syn.oracle_score(q.prompt, r["response"]) for r in rows
              if r["prompt"] == q.prompt and r["response"]]
    assert q.chosen == syn.gold_response(q.prompt)
    assert q.margin == pytest.approx(max(scores) - min(scores))
  r = _cli("pairs", "--generations", str(tmp_path / "none.jsonl"), "--out", str(out))
  assert r.returncode == 2 and "none.jsonl" in r.stderr


def test_shipped_data_is_what_the_cli_regenerates(tmp_path):
  shipped = os.path.join(REPO, "data", "synthetic")
  syn.write_files(str(tmp_path), 10000, 500, 0, files=("ift", "prompts_eval"))
  for name in ("ift", "prompts_eval"):
    with open(os.path.join(shipped, f"{name}.jsonl"), "rb") as a, \
        open(tmp_path / f"{name}.jsonl", "rb") as b:
      assert a.read() == b.read(), name
    assert os.path.getsize(os.path.join(shipped, f"{name}.jsonl")) < 1 << 20


def _synthetic_config_module():
  import importlib.util
  spec = importlib.util.spec_from_file_location("syn_cfg", os.path.join(REPO, "configs",
                                                                        "synthetic.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_config_points_at_shipped_files():
  mod = _synthetic_config_module()
  c = mod.get_config("sft")
  assert c.pipeline == "sft" and os.path.exists(c.data.train_path)
  assert os.path.exists(c.generate.prompts_path)
  assert c.model.d_model == 128 and c.model.num_layers == 4   # 2 layers never learn to copy
  with pytest.raises(ValueError, match="unknown preset"):
    mod.get_config("nope")


# ------------------------------------------------------------ task variants

@pytest.mark.parametrize("task", sorted(syn.TASKS))
def test_task_variants_lengths_pairs_and_held_out_split(task):
  t = syn.get_task(task)
  rng = np.random.default_rng(5)
  lengths = collections.Counter()
  for _ in range(300):
    p = syn.make_prompt(rng, "any", task)
    n = len(syn.parse_prompt(p))
    lengths[n] += 1
    most = max(t.chosen_errors[0]) + max(t.gap_errors[0])               # as many as a pair gets
    for r in syn.degrade_chain(rng, p, int(rng.integers(1, most + 1))):
      assert len(r.encode()) <= syn.max_response_bytes(n)
    assert syn.oracle_score(p, syn.gold_response(p)) == 1.0
  assert set(lengths) == set(range(t.min_items, t.max_items + 1))
  pairs = syn.preference_pairs(3000, 0, task=task)
  assert all(syn.parse_prompt(q.prompt) for q in pairs)
  # no pair differs only in surrounding whitespace (the readers reject those as identical)
  assert all(q.chosen.strip() != q.rejected.strip() for q in pairs)
  nested = np.mean([q.meta["nested"] for q in pairs])
  assert abs(nested - t.nested_fraction) < 0.1
  chosen_errors = collections.Counter(q.meta["chosen_errors"] for q in pairs)
  assert set(chosen_errors) >= set(t.chosen_errors[0])   # (relabelled pairs may hold more)
  # held out: no eval item set is ever a training item set, for every generator
  ev = syn.eval_prompts(200, 0, task)
  ev_sets = {frozenset(syn.parse_prompt(p)) for p in ev}
  assert len(ev_sets) == 200 and all(syn.is_eval_items(s) for s in ev_sets)
  train = ([r["prompt"] for r in syn.ift_examples(500, 0, task)] + [q.prompt for q in pairs] +
           [syn.make_prompt(np.random.default_rng(s), "train", task) for s in range(200)])
  assert not {frozenset(syn.parse_prompt(p)) for p in train} & ev_sets
  assert all(syn.is_eval_items(syn.parse_prompt(q.prompt))
             for q in syn.preference_pairs(50, 0, split="eval", task=task))


def test_tasks_have_separate_streams_and_unknown_task_is_named():
  assert syn.eval_prompts(20, 0, "sort") != syn.eval_prompts(20, 0, "sort_long")
  assert syn.max_response_bytes(syn.MAX_ITEMS) == syn.MAX_RESPONSE_BYTES
  with pytest.raises(ValueError, match="unknown synthetic task 'nope'.*sort_long"):
    syn.preference_pairs(3, 0, task="nope")
  with pytest.raises(ValueError, match="unknown synthetic task"):
    syn.make_prompt(np.random.default_rng(0), "train", "nope")


def test_pit_preset_uses_the_harder_task_and_fits_its_lengths():
  """The PIT preset's lengths hold the longest sort_long rows without truncation."""
  c = _synthetic_config_module().get_config("pit")
  t = syn.get_task(c.data.synthetic_task)
  assert t.name == "sort_long"
  longest_prompt = len(syn.PREFIX) + 3 * t.max_items                   # "sort: " + items + "\n"
  longest_response = syn.max_response_bytes(t.max_items)
  assert c.data.max_response_len >= longest_response + 1                # + eos
  assert c.data.max_len >= 1 + longest_prompt + longest_response + 1   # bos ... eos
  pit_rows = c.pit.pit_sft.data
  m_pit = 1 + longest_prompt + len("ref: ") + longest_response + 1 + longest_response + 1
  assert pit_rows.max_len >= m_pit and c.pit.gap_reward.data.max_len >= m_pit
  assert c.generate.max_new_tokens >= longest_response + 1
  assert c.improve.max_new_tokens >= longest_response + 1 and c.ppo.max_new_tokens >= longest_response + 1
  assert c.ppo.max_prompt_len >= m_pit - longest_response - 1
  assert c.model.max_seq_len >= c.improve.max_prompt_len + c.improve.max_new_tokens


def test_judge_criteria_read_back_from_justifications():
  from pit.data import synthetic as syn
  p = "sort: 50 30 90 10 70\n"
  for r in ("10 30 50 70 90", "10 30 30 70 90", "90 70 50 30 10", "10,30,50,70,90", "17 18"):
    for compact, worked in itertools.product((True, False), (False, True)):
      text = syn.justification(p, r, compact, worked)
      assert text.startswith("check ") == worked
      if syn.error_counts(p, r)["present"] == 0:
        assert syn.read_justification(text) is None      # "irrelevant": no claims to check
      else:
        assert syn.read_justification(text) == list(syn.judge_criteria(p, r)), (r, text)
  assert syn.read_justification("+form +only\nScore: 2") is None
  assert syn.read_justification("+form +unique +only +all +sorted\nScore: 5") is None  # order
  assert syn.read_justification("") is None
  items = [(p, "10 30 50 70 90"), (p, "10 30 30 70 90")]
  right = [[syn.justification(p, r)] for _, r in items]
  wrong = [["-form -only -unique -all -sorted\nScore: 0", "garbage"],
           ["+form +only +unique +all +sorted\nScore: 5"]]
  assert all(syn.criterion_accuracy(items, right)[k]["accuracy"] == 100.0 for k in syn.CRITERIA)
  acc = syn.criterion_accuracy(items, wrong)
  assert (acc["judgements"], acc["readable"]) == (3, 2)
  assert acc["form"]["accuracy"] == 50.0 and acc["unique"]["accuracy"] == 0.0
  assert acc["unique"]["majority"] == 50.0 and acc["form"]["majority"] == 100.0


def _criteria_from_check(line: str) -> tuple[bool, ...]:
  """only / unique / all / sorted as a reader derives them from a worked check line."""
  assert line.startswith("check ") and " miss " in line, line
  body, miss = line[len("check "):].split(" miss ")
  flags = [] if body == "-" else [t[-1] if t[-1] in "xdv" else "" for t in body.split()]
  return ("x" not in flags, "d" not in flags, miss == "none",
          "v" not in flags and miss == "none")


def test_worked_check_flags_each_number_and_implies_the_oracles_criteria():
  p = "sort: 45 12 88 33\n"
  assert syn.worked_check(p, "12 45 12 7 33") == "check 12 45 12d 7x 33v miss 88"
  assert syn.worked_check(p, "12 33 45 88") == "check 12 33 45 88 miss none"
  assert syn.worked_check(p, "45 12 33 88") == "check 45 12v 33v 88 miss none"  # vs the running max
  assert syn.worked_check(p, "7 7, 88 12") == "check 7x 7d 88 12v miss 45 33"  # a foreign repeat is d
  assert syn.worked_check(p, "none") == "check - miss 45 12 88 33"
  # the line's flags give exactly the oracle's criteria on every kind of response the EFT
  # data and the judge evaluation draw (0-6 errors, random responses), both tasks
  rng = np.random.default_rng(3)
  seen = collections.Counter()
  for task in ("sort", "sort_long"):
    for _ in range(3000):
      q = syn.make_prompt(rng, "train", task)
      r = (syn.random_response(rng, task) if rng.random() < 0.1
           else syn.degrade(rng, q, int(rng.integers(0, 7))))
      truth = syn.judge_criteria(q, r)
      if syn.error_counts(q, r)["present"] == 0:
        continue
      assert _criteria_from_check(syn.worked_check(q, r)) == truth[1:], (q, r)
      seen.update(k for k, t in zip(syn.CRITERIA[1:], truth[1:]) if not t)
  assert min(seen.values()) > 100, seen    # every criterion failed often enough to be tested
  rows = syn.eft_examples(20, seed=0, task="sort_long", worked=True)
  assert all(r["response"].startswith("check ") for r in rows)
  assert [judge.parse_judge_score(r["response"]) for r in rows] == [r["points"] for r in rows]
