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


def test_status_two_keeps_pairs_with_a_probability_gap_above_delta():
  p_a = np.array([0.875, 0.25, 0.75, 0.625, 0.375, 0.5])   # binary fractions: exact gaps
  p_b = np.array([0.5, 0.625, 0.5, 0.375, 0.625, 0.5])
  keep, a_wins = ser.select_pairs(2, p_a, p_b, **{**RULES, "delta": 0.25})
  # gaps 0.375, 0.375, 0.25 (not > 0.25), 0.25, 0.25, 0
  assert keep.tolist() == [True, True, False, False, False, False]
  assert a_wins[keep].tolist() == [True, False]
  assert ser.select_pairs(2, p_a, p_b, **RULES)[0].tolist() == [True, True, False, False,
                                                                 False, False]
  with pytest.raises(ValueError, match="status must be 1 or 2"):
    ser.select_pairs(3, p_a, p_b, **RULES)
  with pytest.raises(ValueError, match="differ in shape"):
    ser.select_pairs(2, p_a, p_b[:2], **RULES)


def test_driver_switches_to_status_two_when_status_one_stops_helping():
  assert ser.next_status(1, kept=100, val_gain=0.02, min_gain=0.005) == 1
  assert ser.next_status(1, kept=100, val_gain=0.005, min_gain=0.005) == 1   # at the bound
  assert ser.next_status(1, kept=100, val_gain=0.004, min_gain=0.005) == 2
  assert ser.next_status(1, kept=100, val_gain=-0.1, min_gain=0.005) == 2
  assert ser.next_status(1, kept=0, val_gain=0.5, min_gain=0.005) == 2       # no new pairs
  assert ser.next_status(1, kept=10, val_gain=float("nan"), min_gain=0.0) == 2
  assert ser.next_status(2, kept=0, val_gain=0.5, min_gain=0.005) == 2       # never back


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
  c = _cfg()
  for field, value, match in (("unlabelled_source", "web", "unlabelled_source"),
                              ("final_rm", "first", "final_rm"),
                              ("seed_fraction", 1.0, "seed_fraction"),
                              ("tau_low", 0.7, "tau_low"),
                              ("delta", 1.0, "delta"),
                              ("max_loops", 0, "max_loops")):
    bad = _cfg()
    bad.ser[field] = value
    with pytest.raises(ValueError, match=match):
      ser.build_stages(bad)
  ser.build_stages(c)
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
  # the SFT policy learns the seed pairs' chosen answers only
  sft = _read(f"{d}/policy_sft_train.jsonl")
  assert sorted((r["prompt"], r["response"]) for r in sft) == sorted(
      (r["prompt"], r["chosen"]) for r in seed_train + seed_val)
  # the loops: each self-labels what is left of the pool, by its RM's probabilities, and trains
  # on those pairs plus the seed pairs, continuing the previous RM
  used, prev = set(), "seed_rm"
  by_id = {r["id"]: r for r in pool}
  for k in (1, 2, 3):
    name = f"loop_{k}"
    s = _summary(wd, name)
    assert s["trained"] and s["from"] == prev and s["pool"] == len(pool) - len(used)
    sel = _read(os.path.join(wd, name, "selected.jsonl"))
    ids = [r["id"] for r in sel]
    assert not used & set(ids) and len(ids) == s["kept"] <= 30
    used |= set(ids)
    rows = _read(os.path.join(wd, name, "train.jsonl"))
    assert rows[len(sel):] == seed_train
    for r, row in zip(sel, rows):
      src = by_id[r["id"]]
      winner = "a" if r["p_a"] > r["p_b"] else "b"
      assert r["label"] == winner and row["chosen"] == src[winner] and row["margin"] == 1.0
    right = [truth[i] == r["label"] for i, r in zip(ids, sel)]
    assert s["self_label_accuracy"]["accuracy"] == pytest.approx(np.mean(right))
    with open(os.path.join(wd, name, "config_reward.json")) as f:
      rc = json.load(f)
    assert rc["reward"]["init_reward_model"] == os.path.join(wd, prev)
    assert rc["reward"]["margin_scale"] == 1.0 and rc["train"]["steps"] == s["steps"]
    prev = name
  # PPO: from the SFT policy, KL to it, against the final RM (best validation accuracy)
  summaries = {n: _summary(wd, n) for n in ("seed_rm", "loop_1", "loop_2", "loop_3")}
  best = max(summaries, key=lambda n: (summaries[n]["accuracy"]["val"]["accuracy"],
                                       list(summaries).index(n)))
  with open(os.path.join(wd, "ppo", "config_ppo.json")) as f:
    pc = json.load(f)
  assert pc["ppo"]["reward_model_dir"] == os.path.join(wd, best)
  assert pc["ppo"]["init_checkpoint_dir"] == pc["ppo"]["reference_checkpoint_dir"] == \
      os.path.join(wd, "policy_sft")
  ev = _summary(wd, "evaluate")
  assert ev["final_rm"] == best
  with open(os.path.join(wd, "report.md")) as f:
    text = f.read()
  assert "full-label RM" in text and "loop_3" in text and "PPO (evolved RM) vs SFT policy" in text


def test_a_loop_that_finds_nothing_stops_the_loops(smoke_run, tmp_path):
  """Status 2 with a delta nothing passes: loop 1 tries status 1, then 2, keeps nothing and
  stops; later loops train nothing; PPO uses the seed RM."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  for stage in ("data", "policy_sft", "pool", "seed_rm", "full_rm"):
    shutil.copytree(os.path.join(smoke_run, stage), os.path.join(wd, stage))
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
  """SIGKILL once loop 2 has selected its pairs (its RM training under way); the same command
  finishes the run, and what it wrote equals the uninterrupted run's."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  for stage in ("data", "policy_sft", "pool", "seed_rm", "full_rm", "loop_1"):
    shutil.copytree(os.path.join(smoke_run, stage), os.path.join(wd, stage))
  cmd = [sys.executable, "-m", "pit.main",
         f"--config={os.path.join(REPO, 'configs', 'ser.py')}:synthetic_smoke",
         f"--workdir={wd}", "--config.progress=False"]
  marker = os.path.join(wd, "loop_2", "train.jsonl")
  proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not os.path.exists(marker):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(marker)
  assert not os.path.exists(os.path.join(wd, "loop_2", "stage_done.json"))
  subprocess.run(cmd, cwd=str(tmp_path), check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  assert not os.path.exists(os.path.join(wd, "superseded"))
  for name in ("loop_2", "loop_3"):
    a, b = _summary(wd, name), _summary(smoke_run, name)
    assert (a["kept"], a["accuracy"], a["self_label_accuracy"]) == \
        (b["kept"], b["accuracy"], b["self_label_accuracy"]), name
    assert _read(os.path.join(wd, name, "selected.jsonl")) == \
        _read(os.path.join(smoke_run, name, "selected.jsonl"))
  assert _summary(wd, "evaluate")["rows"] == _summary(smoke_run, "evaluate")["rows"]
