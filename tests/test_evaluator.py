"""Evaluation declared in config: intervals against their formulas, rows never mixing
decodings, scalar judges scored once, NaN judgements counted (issue 13)."""
import math

import numpy as np
import pytest

from pit.eval import evaluator, judges


def test_binomial_interval_is_clopper_pearson():
  from scipy.stats import beta
  for k, n in [(0, 10), (3, 10), (10, 10), (37, 200)]:
    lo, hi = evaluator.binomial_interval(k, n, 0.95)
    want_lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    want_hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    np.testing.assert_allclose([lo, hi], [100 * want_lo, 100 * want_hi], atol=1e-6)


def test_paired_difference_matches_the_paired_t_test():
  from scipy.stats import ttest_rel
  rng = np.random.default_rng(0)
  a, b = rng.normal(0.6, 0.2, 50), rng.normal(0.5, 0.2, 50)
  p = evaluator.paired_difference(a, b, 0.95)
  ci = ttest_rel(a, b).confidence_interval(0.95)
  np.testing.assert_allclose([p.low, p.high], [ci.low, ci.high], rtol=1e-10)
  np.testing.assert_allclose(p.diff, np.mean(a - b))
  np.testing.assert_allclose(p.stderr, np.std(a - b, ddof=1) / math.sqrt(50))
  a[3], b[7] = np.nan, np.nan     # unjudged responses leave their prompt out, counted
  q = evaluator.paired_difference(a, b)
  assert q.n == 48 and q.dropped == 2


def test_bootstrap_interval_covers_the_mean_at_its_level():
  rng = np.random.default_rng(1)
  hits = 0
  for rep in range(200):
    x = rng.choice([-1.0, 0.0, 1.0], size=80, p=[0.2, 0.3, 0.5])   # true mean 0.3
    lo, hi = evaluator.bootstrap_interval(x, 0.95, resamples=2000, seed=rep)
    hits += lo <= 0.3 <= hi
  assert 0.90 <= hits / 200 <= 0.99


def _judge(table):
  return judges.ScorerJudge(lambda p, r, ref: np.array([table[x] for x in r], np.float64), "toy")


def test_rows_compare_each_decoding_with_itself_and_score_each_system_once():
  prompts = ["p0", "p1", "p2", "p3"]
  outs = {"pit": {"t0": ["a", "b", "c", "d"], "t1": ["a", "a", "a", "x"]},
          "original": {"t0": ["b", "b", "d", "d"], "t1": ["c", "x", "a", "a"]},
          "greedy_only": {"t0": ["a", "a", "a", "a"]}}
  value = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0, "x": math.nan}
  calls = []
  j = _judge(value)
  j.scorer = (lambda f: lambda p, r, ref: (calls.append(tuple(r)), f(p, r, ref))[1])(j.scorer)
  rows = evaluator.evaluate(prompts, outs, [("pit", "original"), ("pit", "greedy_only")],
                            {"toy": j}, resamples=500)
  assert [(r.a, r.b, r.decoding) for r in rows] == [("pit", "original", "t0"), ("pit", "original", "t1"),
                                                     ("pit", "greedy_only", "t0")]
  assert len(calls) == 5   # pit t0, original t0, pit t1, original t1, greedy_only t0: once each
  t0, t1 = rows[0], rows[1]
  # brute force: +1 where pit scores higher, -1 lower, 0 equal or unjudged (NaN)
  assert (t0.result.wins, t0.result.losses, t0.result.ties) == (2, 0, 2)
  assert (t1.result.wins, t1.result.losses, t1.result.ties) == (1, 0, 3)
  assert t1.paired.n == 2 and t1.paired.dropped == 2 and j.unjudged == 2
  assert t0.delta_ci[0] <= t0.result.delta <= t0.delta_ci[1]
  with pytest.raises(ValueError, match="share no decoding"):
    evaluator.evaluate(prompts, {"a": {"t0": ["a"] * 4}, "b": {"t1": ["a"] * 4}}, [("a", "b")],
                       {"toy": _judge(value)})
  md = evaluator.table_markdown(rows)
  assert "| pit vs original | t1 | toy |" in md


def test_llm_judge_averages_its_parsed_samples_and_counts_the_rest():
  class FakeLM:
    def judge_texts(self, instructions, responses, temperature, seed):
      table = {0: ["Score: 4", "Score: 1e-1", "no"], 1: ["Score: 2", "Score: 5", "no"]}
      return table[seed]
  j = judges.LLMJudge(FakeLM(), samples=2, temperature=1.0)
  got = j.score(["q"] * 3, ["r1", "r2", "r3"])
  np.testing.assert_array_equal(got[:2], [3.0, 5.0])
  assert math.isnan(got[2]) and j.unjudged == 1
  with pytest.raises(ValueError, match="temperature > 0"):
    judges.LLMJudge(FakeLM(), samples=3, temperature=0.0)
