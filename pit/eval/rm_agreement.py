"""Reward-model agreement with reference rankings (Self-Rewarding LMs, Yuan et al. 2024, Table 4:
pairwise accuracy, 5-best %, exact match %, Spearman, Kendall tau).

Input: groups, one per prompt, each a set of k >= 2 candidate responses with a
model score and a reference score (higher = better; pass `-rank` for human ranks
where rank 0 is best, see `reference_from_ranks`). Definitions (s = model score,
r = reference score, sgn = sign, pairs are unordered i < j within one prompt):

- pairwise accuracy: over all pairs, pooled over prompts, with r_i != r_j:
  share where sgn(s_i - s_j) == sgn(r_i - r_j). A model tie (s_i == s_j) on such a
  pair earns `tie_credit` (default 0: a tie does not agree with a strict order).
- exact match %: share of prompts whose whole (weak) ordering agrees:
  sgn(s_i - s_j) == sgn(r_i - r_j) for every pair (ties must match ties).
- 5-best %: over all candidates (pooled) that the model gives its perfect score
  (s >= `best_score`, 5 for the 5-point judge): share that are a reference-best
  candidate of their prompt (r == max r; tied bests all count). NaN when the
  model gives no perfect score.
- Spearman / Kendall tau: per prompt, Spearman's rho = Pearson correlation of average
  ranks (ties get the mean rank) and Kendall's tau-b = sum sgn(ds) sgn(dr) /
  sqrt(#pairs untied in s * #pairs untied in r), both computed by `scipy.stats`
  (`spearmanr`, `kendalltau(variant='b')`); averaged over the prompts where it is
  defined (neither side constant). `*_prompts` counts them.

Groups with fewer than two candidates are skipped and counted (`skipped_groups`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class AgreementResult:
  """The agreement metrics of `agreement` (see the module docstring): percentages in
  [0, 100], correlations in [-1, 1] (NaN where undefined) and the counts behind them."""
  pairwise_accuracy: float   # %
  best5: float               # %
  exact_match: float         # %
  spearman: float
  kendall_tau: float
  num_prompts: int
  num_pairs: int             # pairs with different reference scores
  num_model_ties: int        # of those, pairs the model tied
  num_perfect: int           # candidates with model score >= best_score
  spearman_prompts: int
  kendall_prompts: int
  skipped_groups: int

  def as_dict(self) -> dict:
    """JSON-ready fields."""
    return dataclasses.asdict(self)


def reference_from_ranks(ranks) -> np.ndarray:
  """Human ranks (0 = best) -> reference scores (higher = better)."""
  return -np.asarray(ranks, np.float64)


def _signs(x):
  """[k, k] sgn(x_i - x_j) and the mask of pairs i < j."""
  x = np.asarray(x, np.float64)
  k = x.shape[0]
  return np.sign(x[:, None] - x[None, :]), np.triu(np.ones((k, k), bool), 1)


def _statistic(fn, s, r) -> float:
  """A scipy.stats rank statistic of one group; NaN when either side is constant (no ranking
  to correlate: scipy warns and returns NaN there too)."""
  s, r = np.asarray(s, np.float64), np.asarray(r, np.float64)
  if np.all(s == s[0]) or np.all(r == r[0]):
    return math.nan
  return float(fn(s, r).statistic)


def spearman(s, r) -> float:
  """Spearman's rho (`scipy.stats.spearmanr`: Pearson correlation of average ranks, ties get
  the mean rank); NaN if either side is constant."""
  from scipy import stats
  return _statistic(stats.spearmanr, s, r)


def kendall_tau_b(s, r) -> float:
  """Kendall's tau-b (`scipy.stats.kendalltau`, variant 'b': concordant minus discordant
  pairs over sqrt(pairs untied in s * pairs untied in r)); NaN if either side is constant."""
  from scipy import stats
  return _statistic(lambda a, b: stats.kendalltau(a, b, variant="b"), s, r)


def agreement(model_scores: Sequence[Sequence[float]], reference_scores: Sequence[Sequence[float]],
              *, best_score: float = 5.0, tie_credit: float = 0.0) -> AgreementResult:
  """Agreement over prompts; `model_scores[p]` and `reference_scores[p]` score prompt p's candidates."""
  if len(model_scores) != len(reference_scores):
    raise ValueError(f"{len(model_scores)} model score groups vs {len(reference_scores)} reference groups")
  if not 0.0 <= tie_credit <= 1.0:
    raise ValueError(f"tie_credit must be in [0, 1], got {tie_credit}")
  credit = pairs = model_ties = exact = prompts = skipped = 0
  perfect = perfect_best = 0
  rhos, taus = [], []
  for p, (s, r) in enumerate(zip(model_scores, reference_scores)):
    s, r = np.asarray(s, np.float64), np.asarray(r, np.float64)
    if s.ndim != 1 or s.shape != r.shape:
      raise ValueError(f"group {p}: model scores shape {s.shape} vs reference shape {r.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(r))):
      raise ValueError(f"group {p}: scores must be finite (drop unparseable judgements first)")
    if s.size < 2:
      skipped += 1
      continue
    prompts += 1
    ss, upper = _signs(s)
    sr, _ = _signs(r)
    strict = upper & (sr != 0)
    pairs += int(np.sum(strict))
    credit += float(np.sum(ss[strict] == sr[strict])) + tie_credit * float(np.sum(ss[strict] == 0))
    model_ties += int(np.sum(ss[strict] == 0))
    exact += int(np.all(ss[upper] == sr[upper]))
    top = s >= best_score
    perfect += int(np.sum(top))
    perfect_best += int(np.sum(top & (r == r.max())))
    rhos.append(spearman(s, r))
    taus.append(kendall_tau_b(s, r))
  if prompts == 0:
    raise ValueError("no prompt has two or more candidates")
  mean = lambda v: float(np.nanmean(v)) if np.any(np.isfinite(v)) else math.nan
  return AgreementResult(
      pairwise_accuracy=100.0 * credit / pairs if pairs else math.nan,
      best5=100.0 * perfect_best / perfect if perfect else math.nan,
      exact_match=100.0 * exact / prompts,
      spearman=mean(rhos), kendall_tau=mean(taus), num_prompts=prompts, num_pairs=pairs,
      num_model_ties=model_ties, num_perfect=perfect,
      spearman_prompts=int(np.sum(np.isfinite(rhos))), kendall_prompts=int(np.sum(np.isfinite(taus))),
      skipped_groups=skipped)
