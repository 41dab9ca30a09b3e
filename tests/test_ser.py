"""SER (pit/pipelines/ser.py): the status and filter rules on hand-made probabilities, the
driver's switching, accuracy and its standard error, the margin loss the loops train with,
what flows between the stages of the smoke run (seed split, hidden labels, pool consumption,
self-labels, continued RMs, the final RM driving PPO), and a SIGKILL inside a loop."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pit.pipelines import ser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = dict(tau_high=0.55, tau_low=0.45, delta=0.3)


def test_probabilities_are_the_sigmoid_of_the_reward():
  r = np.array([-800.0, -3.0, 0.0, 0.5, 40.0])
  want = [1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0 for x in r]
  np.testing.assert_allclose(ser.probabilities(r), want, rtol=1e-12, atol=1e-300)


def test_status_one_keeps_clear_good_bad_pairs_either_way_round():
  p_a = np.array([0.60, 0.40, 0.60, 0.55, 0.70, 0.50, 0.44, 0.56])
  p_b = np.array([0.40, 0.60, 0.50, 0.40, 0.80, 0.50, 0.56, 0.45])
  keep, a_wins = ser.select_pairs(1, p_a, p_b, **RULES)
  # rows 0, 1: one above 0.55 and the other below 0.45; 2: 0.50 is not below 0.45; 3: 0.55 is
  # not above 0.55 (strict); 4: both high; 5: both middling; 6, 7: 0.56 vs 0.44 / 0.45
  assert keep.tolist() == [True, True, False, False, False, False, True, False]
  assert a_wins[keep].tolist() == [True, False, False]


def test_status_two_keeps_status_one_pairs_and_pairs_with_a_gap_above_delta():
  p_a = np.array([0.875, 0.25, 0.75, 0.5, 0.5, 0.625])   # binary fractions: exact gaps
  p_b = np.array([0.5, 0.625, 0.5, 0.25, 0.5, 0.4375])
  # gaps 0.375, 0.375, 0.25, 0.25, 0, 0.1875; status-1 pairs (one > 0.55, the other < 0.45):
  # rows 1 and 5 -- row 5 is kept by status 2 for that alone, as the released code's filter does
  keep, a_wins = ser.select_pairs(2, p_a, p_b, **{**RULES, "delta": 0.25})
  assert keep.tolist() == [True, True, False, False, False, True]   # 0.25 is not > 0.25
  assert a_wins[keep].tolist() == [True, False, True]
  keep, _ = ser.select_pairs(2, p_a, p_b, **{**RULES, "delta": 0.2})
  assert keep.tolist() == [True, True, True, True, False, True]
  assert ser.select_pairs(1, p_a, p_b, **RULES)[0].tolist() == [False, True, False, False,
                                                                 False, True]
  with pytest.raises(ValueError, match="status must be 1 or 2"):
    ser.select_pairs(3, p_a, p_b, **RULES)
  with pytest.raises(ValueError, match="differ in shape"):
    ser.select_pairs(2, p_a, p_b[:2], **RULES)


def test_most_confident_keeps_the_largest_gaps_among_the_passing():
  keep = np.array([True, True, False, True, True])
  p_a = np.array([0.9, 0.6, 0.99, 0.2, 0.7])
  p_b = np.array([0.1, 0.5, 0.01, 0.3, 0.2])   # gaps 0.8, 0.1, (0.98 not passing), 0.1, 0.5
  assert ser.most_confident(keep, p_a, p_b, 2).tolist() == [True, False, False, False, True]
  assert ser.most_confident(keep, p_a, p_b, 3).tolist() == [True, True, False, False, True]
  assert ser.most_confident(keep, p_a, p_b, 0).tolist() == keep.tolist()
  assert ser.most_confident(keep, p_a, p_b, 9).tolist() == keep.tolist()


def test_driver_switches_to_status_two_when_status_one_stops_helping():
  go = dict(min_gain=0.005, z=1.0)
  assert ser.next_status(1, 100, 0.02, 0.01, **go) == 1
  assert ser.next_status(1, 100, 0.005, 0.001, **go) == 1      # at min_gain, above 1 s.e.
  assert ser.next_status(1, 100, 0.004, 0.001, **go) == 2      # below min_gain
  assert ser.next_status(1, 100, 0.02, 0.02, **go) == 2        # not above 1 s.e.: noise
  assert ser.next_status(1, 100, 0.02, 0.019, **go) == 1
  assert ser.next_status(1, 100, -0.1, 0.01, **go) == 2
  assert ser.next_status(1, 0, 0.5, 0.01, **go) == 2           # no new pairs
  assert ser.next_status(1, 10, float("nan"), 0.01, **go) == 2
  assert ser.next_status(2, 0, 0.5, 0.01, **go) == 2           # never back
  loop = lambda status, kept, gain, se: dict(status=status, kept=kept, val_gain=gain,
                                             val_gain_se=se)
  assert ser.planned_status([], **go) == 1
  assert ser.planned_status([loop(1, 50, 0.03, 0.01)], **go) == 1
  assert ser.planned_status([loop(1, 50, 0.03, 0.01), loop(1, 40, 0.0, 0.01)], **go) == 2
  # the last loop alone does not decide: once in status 2, a later good gain stays in 2
  assert ser.planned_status([loop(1, 50, 0.0, 0.01), loop(2, 40, 0.05, 0.01)], **go) == 2


def test_paired_difference_against_scipy():
  from scipy import stats
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 2, 60).astype(float), rng.integers(0, 2, 60).astype(float)
  d = ser.paired_difference(a, b)
  res = stats.ttest_rel(a, b)
  ci = res.confidence_interval(0.95)
  assert d["mean"] == pytest.approx(np.mean(a - b))
  assert d["se"] == pytest.approx(stats.sem(a - b))
  assert (d["low"], d["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_accuracy_and_its_standard_error():
  acc = ser.accuracy_se(ser.pair_credit([3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 2.0, -1.0]))
  x = np.array([1.0, 0.0, 0.5, 1.0])
  assert acc["n"] == 4 and acc["accuracy"] == pytest.approx(0.625)
  assert acc["se"] == pytest.approx(x.std() / 2.0)
  p, n = 0.8, 50   # without ties: the binomial s.e.
  acc = ser.accuracy_se([1.0] * 40 + [0.0] * 10)
  assert acc["se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
  assert math.isnan(ser.accuracy_se([])["accuracy"])


def test_config_checks_name_the_field():
  for field, value, match in (("unlabelled_source", "web", "unlabelled_source"),
                              ("final_rm", "first", "final_rm"),
                              ("retrain", "scratch", "retrain"),
                              ("seed_fraction", 1.0, "seed_fraction"),
                              ("seed_val_fraction", 0.0, "seed_val_fraction"),
                              ("tau_low", 0.7, "tau_low"),
                              ("tau_high", 1.0, "tau_high"),
                              ("delta", 1.0, "delta"),
                              ("label_noise", 0.5, "label_noise"),
                              ("max_loops", 0, "max_loops"),
                              ("max_kept_per_loop", -1, "max_kept_per_loop"),
                              ("max_pairs", -5, "max_pairs"),
                              ("sft_fraction", 1.0, "sft_fraction"),
                              ("sft_fraction", -0.1, "sft_fraction"),
                              ("rm_epochs", 0.0, "rm_epochs"),
                              ("margin", -1.0, "margin"),
                              ("min_gain", float("nan"), "min_gain")):
    bad = _cfg()
    bad.ser[field] = value
    with pytest.raises(ValueError, match=match):
      ser.build_stages(bad)
  ser.build_stages(_cfg())
  bad = _cfg()
  bad.ser.update(unlabelled_source="policy", pool_temperature=0.0)
  with pytest.raises(ValueError, match="pool_temperature"):
    ser.build_stages(bad)
  bad = _cfg()
  bad.ser.update(unlabelled_source="policy", pool_samples=3)
  with pytest.raises(ValueError, match="pool_samples"):
    ser.build_stages(bad)
  bad = _cfg()
  bad.model.head = "scalar"
  with pytest.raises(ValueError, match="model.head='scalar'"):
    ser.build_stages(bad)
  with pytest.raises(ValueError, match="model.init_from"):
    ser.build_stages(_cfg("hf"))


def _cfg(preset="synthetic_smoke"):
  sys.path.insert(0, REPO)
  from configs import ser as cfgmod
  c = cfgmod.get_config(preset)
  c.progress = False
  return c


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _summary(wd, stage):
  with open(os.path.join(wd, stage, "stage_done.json")) as f:
    return json.load(f)["summary"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  from pit import main
  wd = str(tmp_path_factory.mktemp("ser") / "run")
  main.run(_cfg(), wd)
  return wd


def _workdir_from(smoke_run, tmp_path, stages_done):
  """A new workdir holding copies of the smoke run's stages `stages_done` (reused, not rerun)."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  for stage in stages_done:
    shutil.copytree(os.path.join(smoke_run, stage), os.path.join(wd, stage))
  return wd


def _config(wd, stage, pipeline):
  with open(os.path.join(wd, stage, f"config_{pipeline}.json")) as f:
    return json.load(f)


def test_what_flows_between_the_stages(smoke_run):
  wd = smoke_run
  d = os.path.join(wd, "data")
  seed_train, seed_val = _read(f"{d}/seed_train.jsonl"), _read(f"{d}/seed_val.jsonl")
  full, pool = _read(f"{d}/full_train.jsonl"), _read(f"{d}/unlabelled.jsonl")
  truth = {r["id"]: r["better"] for r in _read(f"{d}/unlabelled_truth.jsonl")}
  n = len(full)
  assert len(seed_train) + len(seed_val) + len(pool) == n
  assert len(seed_train) + len(seed_val) == round(0.3 * n)   # the smoke's seed_fraction
  # the pool carries no label: a/b in random order, the hidden label kept apart
  assert all(set(r) == {"id", "prompt", "a", "b"} for r in pool)
  assert 0 < sum(v == "a" for v in truth.values()) < len(truth)
  key = lambda r: (r["prompt"], r["chosen"], r["rejected"])
  full_keys = {key(r) for r in full}
  for r in pool:   # every pool pair is a training pair, the hidden label names its chosen
    w, l = (r["a"], r["b"]) if truth[r["id"]] == "a" else (r["b"], r["a"])
    assert (r["prompt"], w, l) in full_keys
  assert all(r["margin"] == 1.0 for r in seed_train + full)
  # each RM trains on its own file; the SFT policy on the chosen answers of the SFT split (the
  # smoke's default sft_fraction 0.3 of the training pairs), which no RM file holds
  assert _config(wd, "seed_rm", "reward")["data"]["train_path"] == f"{d}/seed_train.jsonl"
  assert _config(wd, "full_rm", "reward")["data"]["train_path"] == f"{d}/full_train.jsonl"
  assert _config(wd, "policy_sft", "sft")["data"]["train_path"] == f"{d}/policy_sft_train.jsonl"
  sft = _read(f"{d}/policy_sft_train.jsonl")
  counts = _summary(wd, "data")["counts"]
  assert len(sft) == counts["sft_pairs"] == round(0.3 * (counts["sft_pairs"] + n))
  assert not {(r["prompt"], r["response"]) for r in sft} & \
      {(r["prompt"], r["chosen"]) for r in full}
  assert not {r["prompt"] for r in sft} & {r["prompt"] for r in full}
  # PPO's prompts: those of both splits (prompts carry no label)
  rl = {r["prompt"] for r in _read(f"{d}/rl_prompts.jsonl")}
  assert {r["prompt"] for r in sft} | {r["prompt"] for r in full} == rl
  # the loops: each self-labels what is left of the pool with the best RM so far (validation),
  # keeps exactly the pairs its status passes (the 30 most confident), labels them by p, and
  # continues that RM on them plus the seed pairs
  used = set()
  by_id = {r["id"]: r for r in pool}
  summaries = {"seed_rm": _summary(wd, "seed_rm")}
  go = dict(min_gain=0.0, z=1.0)
  for k in (1, 2, 3):
    name = f"loop_{k}"
    s = _summary(wd, name)
    prev = [summaries[f"loop_{j}"] for j in range(1, k)]
    assert s["status_planned"] == ser.planned_status(prev, **go)
    best = ser.best_rm(["seed_rm"] + [f"loop_{j}" for j in range(1, k)], summaries, "best_val")
    assert s["trained"] and s["from"] == best and s["pool"] == len(pool) - len(used)
    scores = _read(os.path.join(wd, name, "scores.jsonl"))
    assert [r["id"] for r in scores] == [r["id"] for r in pool if r["id"] not in used]
    p_a, p_b = np.array([r["p_a"] for r in scores]), np.array([r["p_b"] for r in scores])
    keep, _ = ser.select_pairs(s["status"], p_a, p_b, tau_high=0.55, tau_low=0.45, delta=0.0)
    assert int(keep.sum()) == s["passed"]
    keep = ser.most_confident(keep, p_a, p_b, 30)
    sel = _read(os.path.join(wd, name, "selected.jsonl"))
    ids = [r["id"] for r in sel]
    assert ids == [r["id"] for r, kk in zip(scores, keep) if kk] and len(ids) == s["kept"]
    assert not used & set(ids)
    used |= set(ids)
    rows = _read(os.path.join(wd, name, "train.jsonl"))
    assert rows[len(sel):] == seed_train and s["train_rows"] == len(rows)
    for r, row in zip(sel, rows):
      src = by_id[r["id"]]
      winner = "a" if r["p_a"] > r["p_b"] else "b"
      assert r["label"] == winner and row["chosen"] == src[winner] and row["margin"] == 1.0
    right = [truth[i] == r["label"] for i, r in zip(ids, sel)]
    assert s["self_label_accuracy"]["accuracy"] == pytest.approx(np.mean(right))
    rc = _config(wd, name, "reward")
    assert rc["reward"]["init_reward_model"] == os.path.join(wd, best)
    assert s["retrain"] == "continue" and s["earlier_kept_rows"] == 0
    assert rc["reward"]["margin_scale"] == 1.0 and rc["train"]["steps"] == s["steps"]
    with open(os.path.join(wd, name, "credits.json")) as f:
      after = json.load(f)["val"]
    with open(os.path.join(wd, best, "credits.json")) as f:
      before = json.load(f)["val"]
    assert s["val_gain"] == pytest.approx(np.mean(after) - np.mean(before))
    assert s["accuracy"]["val"]["accuracy"] == pytest.approx(np.mean(after))
    summaries[name] = s
  # PPO: from the SFT policy, KL to it, against the final RM (best validation accuracy)
  best = ser.best_rm(["seed_rm", "loop_1", "loop_2", "loop_3"], summaries, "best_val")
  pc = _config(wd, "ppo", "ppo")
  assert pc["ppo"]["reward_model_dir"] == os.path.join(wd, best)
  assert pc["ppo"]["init_checkpoint_dir"] == pc["ppo"]["reference_checkpoint_dir"] == \
      os.path.join(wd, "policy_sft")
  ev = _summary(wd, "evaluate")
  assert ev["final_rm"] == best
  with open(os.path.join(wd, best, "credits.json")) as f:
    fin = json.load(f)["test"]
  with open(os.path.join(wd, "seed_rm", "credits.json")) as f:
    seed = json.load(f)["test"]
  assert ev["differences"]["final_vs_seed"]["mean"] == pytest.approx(np.mean(fin) - np.mean(seed))
  with open(os.path.join(wd, "report.md")) as f:
    text = f.read()
  assert "full-label RM" in text and "loop_3" in text and "PPO (evolved RM) vs SFT policy" in text
  assert f"the {counts['sft_pairs']} pairs of the SFT split" in text


def test_hidden_labels_never_change_the_selection(smoke_run, tmp_path):
  """loop_1 rerun on a copy whose hidden labels are all flipped: the same pairs, the same
  self-labels, the same RM; only the reported self-label accuracy changes."""
  wd = _workdir_from(smoke_run, tmp_path, ("data", "policy_sft", "pool", "seed_rm", "full_rm"))
  path = os.path.join(wd, "pool", "unlabelled_truth.jsonl")
  # and an annotator's label beside each: the data's own (unflipped) one, which the flipped
  # hidden label now calls wrong on every pair
  flipped = [{"id": r["id"], "better": "b" if r["better"] == "a" else "a",
              "annotator": r["better"]} for r in _read(path)]
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in flipped))
  from pit import stages
  built = [s for s in ser.build_stages(_cfg()) if s.name in (
      "data", "policy_sft", "pool", "seed_rm", "full_rm", "loop_1")]
  stages.run_stages(wd, built)
  assert _read(os.path.join(wd, "loop_1", "selected.jsonl")) == \
      _read(os.path.join(smoke_run, "loop_1", "selected.jsonl"))
  a, b = _summary(wd, "loop_1"), _summary(smoke_run, "loop_1")
  assert a["accuracy"] == b["accuracy"]
  assert a["self_label_accuracy"]["accuracy"] == pytest.approx(
      1.0 - b["self_label_accuracy"]["accuracy"])
  assert a["annotator_accuracy"]["accuracy"] == 0.0
  assert a["annotator_accuracy"]["n"] == a["labelled_kept"] == a["kept"] > 0
  assert "annotator_accuracy" not in b   # no annotator labels without label_noise


def test_annotator_labels_are_wrong_at_the_rate_asked():
  from pit.data.pairs import PreferencePair
  pairs = [PreferencePair(f"p{i}", f"w{i}", f"l{i}", 0.5, {"k": i}) for i in range(4000)]
  out = ser.annotator_labels(pairs, 0.25, np.random.default_rng(3))
  wrong = [q for q in out if q.meta.get("label_flipped")]
  # binomial(4000, 0.25): mean 1000, s.d. 27.4
  assert abs(len(wrong) - 1000) < 4.5 * 27.4
  for p, q in zip(pairs, out):
    if q.meta.get("label_flipped"):
      assert (q.prompt, q.chosen, q.rejected, q.margin) == (p.prompt, p.rejected, p.chosen, 0.5)
      assert q.meta["k"] == p.meta["k"] and "label_flipped" not in p.meta
    else:
      assert q is p
  again = ser.annotator_labels(pairs, 0.25, np.random.default_rng(3))
  assert [q.chosen for q in again] == [q.chosen for q in out]
  assert ser.annotator_labels(pairs, 0.0, np.random.default_rng(3)) == pairs
  for rate in (0.5, -0.1):
    with pytest.raises(ValueError, match="label_noise"):
      ser.annotator_labels(pairs, rate, np.random.default_rng(3))


def test_label_noise_reaches_every_training_label_and_no_test_label(tmp_path):
  """label_noise: the SFT answers, seed, validation and full-label pairs carry the annotators'
  labels (the same label for a pair wherever it appears), the pool's hidden label stays the
  data's own with the annotator's beside it, the held-out test pairs are untouched; 0 leaves
  the data stage's settings (and so old workdirs) as they were."""
  from pit import stages
  got = {}
  for noise in (0.0, 0.4):
    c = _cfg()
    c.ser.label_noise = noise
    wd = str(tmp_path / f"run{noise}")
    built = ser.build_stages(c)
    data = [s for s in built if s.name == "data"]
    assert ("label_noise" in data[0].settings.ser) == bool(noise)
    stages.run_stages(wd, data)
    d = os.path.join(wd, "data")
    got[noise] = {n: _read(f"{d}/{n}.jsonl") for n in (
        "seed_train", "seed_val", "full_train", "pairs_eval", "unlabelled", "unlabelled_truth",
        "policy_sft_train")}
    got[noise]["counts"] = _summary(wd, "data")["counts"]
  clean, noisy = got[0.0], got[0.4]
  key = lambda r: (r["prompt"], frozenset((r["chosen"], r["rejected"])))
  true_chosen = {key(r): r["chosen"] for r in clean["full_train"]}
  assert [key(r) for r in noisy["full_train"]] == [key(r) for r in clean["full_train"]]
  annotator = {key(r): r["chosen"] for r in noisy["full_train"]}
  wrong = [k for k in annotator if annotator[k] != true_chosen[k]]
  assert len(wrong) == noisy["counts"]["annotator_wrong"]["rm_data"] > 0.25 * len(annotator)
  assert clean["counts"]["annotator_wrong"] == {"sft": 0, "rm_data": 0}
  for name in ("seed_train", "seed_val"):   # the annotator's label, as in full_train
    assert all(annotator[key(r)] == r["chosen"] for r in noisy[name])
    assert any(annotator[key(r)] != true_chosen[key(r)] for r in noisy[name])
  assert noisy["pairs_eval"] == clean["pairs_eval"]
  # nothing a model or the driver reads says which labels are wrong (nor the data's scores)
  for name in ("seed_train", "seed_val", "full_train", "unlabelled", "policy_sft_train"):
    text = json.dumps(noisy[name])
    assert "label_flipped" not in text and "chosen_score" not in text, name
  # the SFT answers: the annotators' chosen ones
  sft_clean = [(r["prompt"], r["response"]) for r in clean["policy_sft_train"]]
  sft_noisy = [(r["prompt"], r["response"]) for r in noisy["policy_sft_train"]]
  assert [p for p, _ in sft_noisy] == [p for p, _ in sft_clean]
  n_sft_wrong = sum(a != b for a, b in zip(sft_clean, sft_noisy))
  assert n_sft_wrong == noisy["counts"]["annotator_wrong"]["sft"] > 0
  # the pool: hidden label = the true better answer; annotator = the noisy full_train's chosen
  for r, t in zip(noisy["unlabelled"], noisy["unlabelled_truth"]):
    k = (r["prompt"], frozenset((r["a"], r["b"])))
    assert r[t["better"]] == true_chosen[k] and r[t["annotator"]] == annotator[k]
  assert all(set(t) == {"id", "better"} for t in clean["unlabelled_truth"])


def test_sft_split_takes_whole_prompts():
  """Pairs of one prompt never straddle the SFT split and the RM data; with one pair per prompt
  the split is the first round(fraction x N) pairs; order is kept."""
  from pit.data.pairs import PreferencePair
  mk = lambda prompt, i: PreferencePair(prompt, f"w{i}", f"l{i}")
  pairs = [mk(p, i) for i, p in enumerate("aabcbddde")]
  sft, rm = ser.sft_split(pairs, 0.3)          # target 3: a (2 pairs), b (2) -> 4 pairs
  assert [p.prompt for p in sft] == list("aabb") and [p.prompt for p in rm] == list("cddde")
  assert [p.chosen for p in sft] == ["w0", "w1", "w2", "w4"]
  assert ser.sft_split(pairs, 0.0) == ([], pairs)
  unique = [mk(str(i), i) for i in range(10)]
  assert ser.sft_split(unique, 0.3) == (unique[:3], unique[3:])
  sft, rm = ser.sft_split(pairs, 0.99)
  assert len(sft) == 9 and rm == []


def test_sft_split_is_the_papers_or_the_seed_pairs(tmp_path):
  """sft_fraction 0.3: the policy learns the chosen answers of 30 % of the training pairs, the
  RM data (seed share, validation, pool, full-label) is the other 70 %, disjoint;
  sft_fraction 0: the policy learns the seed training pairs' chosen answers and the RM data is
  every pair."""
  from pit import stages
  got = {}
  for frac in (0.3, 0.0):
    c = _cfg()
    c.ser.sft_fraction = frac
    wd = str(tmp_path / f"run{frac}")
    stages.run_stages(wd, [s for s in ser.build_stages(c) if s.name == "data"])
    d = os.path.join(wd, "data")
    sft = [(r["prompt"], r["response"]) for r in _read(f"{d}/policy_sft_train.jsonl")]
    full = _read(f"{d}/full_train.jsonl")
    seed = _read(f"{d}/seed_train.jsonl") + _read(f"{d}/seed_val.jsonl")
    got[frac] = (sft, full, seed, _summary(wd, "data")["counts"])
  sft, full, seed, counts = got[0.3]
  total = counts["sft_pairs"] + counts["train_pairs"]
  assert len(sft) == counts["sft_pairs"] == round(0.3 * total) > 0
  assert len(full) == counts["train_pairs"]
  assert len(seed) == round(_cfg().ser.seed_fraction * len(full))
  assert not {p for p, _ in sft} & {r["prompt"] for r in full}
  sft0, full0, _, counts0 = got[0.0]
  assert counts0["sft_pairs"] == 0 and len(full0) == total
  assert sft0 == [(r["prompt"], r["chosen"])
                  for r in _read(str(tmp_path / "run0.0" / "data" / "seed_train.jsonl"))]
  # the same shuffle: the paper's split takes the first pairs for SFT, the RM data is the rest
  n_sft = counts["sft_pairs"]
  key = lambda r: (r["prompt"], r["chosen"], r["rejected"])
  assert [key(r) for r in full0[n_sft:]] == [key(r) for r in full]
  assert sft == [(r["prompt"], r["chosen"]) for r in full0[:n_sft]]


def test_a_loop_that_finds_nothing_stops_the_loops(smoke_run, tmp_path):
  """Status 2 with a delta nothing passes: loop 1 tries status 1, then 2, keeps nothing and
  stops; later loops train nothing; PPO uses the seed RM."""
  wd = _workdir_from(smoke_run, tmp_path, ("data", "policy_sft", "pool", "seed_rm", "full_rm"))
  c = _cfg()
  c.ser.update(delta=0.99, tau_high=0.99, tau_low=0.01)
  built = [s for s in ser.build_stages(c) if s.name.startswith("loop_") or s.name in (
      "data", "policy_sft", "pool", "seed_rm", "full_rm")]
  from pit import stages
  stages.run_stages(wd, built)
  s1, s2 = _summary(wd, "loop_1"), _summary(wd, "loop_2")
  assert s1["switched_in_loop"] and s1["status"] == 2 and s1["kept"] == 0 and s1["stopped"]
  assert s2["stopped"] and not s2["trained"] and s2["reason"] == "stopped at loop_1"
  assert ser.final_rm(c, {n: _summary(wd, n) for n in ("seed_rm", "loop_1", "loop_2",
                                                      "loop_3")}) == "seed_rm"


def test_killed_inside_a_loop_resumes_there(smoke_run, tmp_path):
  """SIGKILL once loop 2's RM has saved its first training step; the same command resumes it
  there (its selection read back, not redone) and finishes the run, and what it wrote equals
  the uninterrupted run's."""
  wd = _workdir_from(smoke_run, tmp_path,
                     ("data", "policy_sft", "pool", "seed_rm", "full_rm", "loop_1"))
  cmd = [sys.executable, "-m", "pit.main",
         f"--config={os.path.join(REPO, 'configs', 'ser.py')}:synthetic_smoke",
         f"--workdir={wd}", "--config.progress=False"]
  ckpts = os.path.join(wd, "loop_2", "checkpoints")   # its RM saved a training step
  saved = lambda: os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))
  proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not saved():
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert saved()
  assert not os.path.exists(os.path.join(wd, "loop_2", "stage_done.json"))
  rerun = subprocess.run(cmd, cwd=str(tmp_path), check=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
  assert "resum" in rerun.stderr and not os.path.exists(os.path.join(wd, "superseded"))
  with open(os.path.join(wd, "loop_2", "reward_summary.json")) as f:
    assert json.load(f)["run"]["resumed_from"] is not None
  for name in ("loop_2", "loop_3"):
    a, b = _summary(wd, name), _summary(smoke_run, name)
    assert (a["kept"], a["accuracy"], a["self_label_accuracy"]) == \
        (b["kept"], b["accuracy"], b["self_label_accuracy"]), name
    assert _read(os.path.join(wd, name, "selected.jsonl")) == \
        _read(os.path.join(smoke_run, name, "selected.jsonl"))
  assert _summary(wd, "evaluate")["rows"] == _summary(smoke_run, "evaluate")["rows"]


def test_fresh_retraining_starts_each_loop_rm_from_the_policy_on_every_kept_pair(smoke_run,
                                                                                  tmp_path):
  """ser.retrain='fresh': each loop self-labels with the best RM so far (as 'continue' does)
  but trains a new RM from the SFT policy on its kept pairs, then every earlier loop's kept
  pairs with their self-labels, then the seed pairs."""
  wd = _workdir_from(smoke_run, tmp_path, ("data", "policy_sft", "pool", "seed_rm", "full_rm"))
  c = _cfg()
  c.ser.retrain = "fresh"
  built = [s for s in ser.build_stages(c) if s.name.startswith("loop_") or s.name in (
      "data", "policy_sft", "pool", "seed_rm", "full_rm")]
  from pit import stages
  stages.run_stages(wd, built)
  d = os.path.join(wd, "data")
  seed_train = _read(f"{d}/seed_train.jsonl")
  by_id = {r["id"]: r for r in _read(f"{d}/unlabelled.jsonl")}

  def pairs(loop):   # a loop's kept pairs as training rows, from its selection and the pool
    out = []
    for r in _read(os.path.join(wd, loop, "selected.jsonl")):
      src = by_id[r["id"]]
      w, l = (src["a"], src["b"]) if r["label"] == "a" else (src["b"], src["a"])
      out.append((src["prompt"], w, l))
    return out

  key = lambda r: (r["prompt"], r["chosen"], r["rejected"])
  summaries = {"seed_rm": _summary(wd, "seed_rm")}
  earlier = []
  for k in (1, 2, 3):
    name = f"loop_{k}"
    s = _summary(wd, name)
    assert s["trained"], name
    best = ser.best_rm(["seed_rm"] + [f"loop_{j}" for j in range(1, k)], summaries, "best_val")
    assert s["from"] == best
    rows = _read(os.path.join(wd, name, "train.jsonl"))
    mine = pairs(name)
    assert [key(r) for r in rows] == mine + earlier + [key(r) for r in seed_train]
    assert all(r["margin"] == 1.0 for r in rows)
    assert s["train_rows"] == len(rows) and s["earlier_kept_rows"] == len(earlier)
    assert s["retrain"] == "fresh" and "a new RM" in ser._trained_on(s)
    rc = _config(wd, name, "reward")
    assert rc["reward"]["init_reward_model"] == ""
    assert rc["reward"]["init_checkpoint"] == os.path.join(wd, "policy_sft")
    earlier += mine
    summaries[name] = s


def test_retrain_touches_only_the_loops_and_what_reads_them():
  """'continue' leaves the loops' settings (and so every workdir made before the option) as
  they were; 'fresh' changes the loop stages' fingerprints and what reads them, nothing
  before; a fresh loop reads the policy only when RMs start from it."""
  from pit import stages
  cont, fresh = _cfg(), _cfg()
  fresh.ser.retrain = "fresh"
  built_c, built_f = ser.build_stages(cont), ser.build_stages(fresh)
  fp_c, fp_f = stages.fingerprints(built_c), stages.fingerprints(built_f)
  changed = {n for n in fp_c if fp_c[n] != fp_f[n]}
  assert changed == {n for n in fp_c if n.startswith("loop_")} | {"ppo", "evaluate"}
  loop_c = {s.name: s for s in built_c}["loop_1"]
  loop_f = {s.name: s for s in built_f}["loop_1"]
  assert "retrain" not in loop_c.settings.ser and loop_f.settings.ser.retrain == "fresh"
  assert "policy_sft" not in loop_c.inputs and "policy_sft" in loop_f.inputs
  fresh.ser.reward_init_from_policy = False
  loop_r = {s.name: s for s in ser.build_stages(fresh)}["loop_2"]
  assert "policy_sft" not in loop_r.inputs and "loop_1" in loop_r.inputs
