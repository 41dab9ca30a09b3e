"""Head-to-head win rate of system A vs system B, judged both ways round (PIT protocol).

Every prompt is judged twice: with A's response shown first, then with B's shown
first. A wins only when both orders prefer A, loses only when both prefer B;
any disagreement (or a tie in either order) is a tie. This cancels the judge's
position bias (PIT, Wang et al. 2023; SER uses the same rule).

Judges plug in through one interface:

  PairJudge(prompts, responses_first, responses_second) -> np.ndarray [n]

with values in {+1: first better, 0: tie, -1: second better}. `ScorerJudge`
turns any scalar scorer (an oracle function, a reward model, a pointwise LLM
judge) into a PairJudge; `pit.eval.llm_judge.LMJudge.pairwise` is the pairwise
LLM judge. Order-symmetric scorers still go through both orders, so every judge
follows the same protocol.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

PairJudge = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
# Scorer(prompts, responses, references or None) -> float [n]; higher is better.
Scorer = Callable[[Sequence[str], Sequence[str], Optional[Sequence[str]]], np.ndarray]


def check_preferences(pref, n: int, who: str = "judge") -> np.ndarray:
  """Validates a judge's output: shape [n], values in {-1, 0, 1}."""
  pref = np.asarray(pref)
  if pref.shape != (n,):
    raise ValueError(f"{who} returned shape {pref.shape}, expected ({n},)")
  if not np.all(np.isin(pref, (-1, 0, 1))):
    bad = np.flatnonzero(~np.isin(pref, (-1, 0, 1)))[0]
    raise ValueError(f"{who} returned {pref[bad]!r} at index {bad}; preferences must be -1, 0 or 1")
  return pref.astype(np.int8)


def sign_with_tolerance(diff, tol: float = 0.0) -> np.ndarray:
  """+1 where diff > tol, -1 where diff < -tol, 0 otherwise (NaN -> 0, a tie)."""
  diff = np.asarray(diff, np.float64)
  out = np.zeros(diff.shape, np.int8)
  out[diff > tol] = 1
  out[diff < -tol] = -1
  return out


class ScorerJudge:
  """PairJudge from a scalar scorer: first better iff score(first) - score(second) > tol.

  `references` (one per prompt of each call, or None) are passed to the scorer,
  e.g. an oracle's target answer or PIT's reference response. Both responses of
  a call are scored in one batched scorer call. A NaN score (unparseable judgement)
  makes that comparison a tie.
  """

  def __init__(self, scorer: Scorer, references: Optional[Sequence[str]] = None, tol: float = 0.0):
    self.scorer, self.references, self.tol = scorer, references, float(tol)

  def scores(self, prompts, responses_first, responses_second):
    """(scores of responses_first, scores of responses_second), float64 [n] each, from one
    scorer call on the 2n responses. Raises ValueError when the references or the scorer's
    output do not match n."""
    n = len(prompts)
    refs = None if self.references is None else list(self.references)
    if refs is not None and len(refs) != n:
      raise ValueError(f"ScorerJudge: {len(refs)} references for {n} prompts")
    s = np.asarray(self.scorer(list(prompts) * 2, list(responses_first) + list(responses_second),
                               None if refs is None else refs * 2), np.float64)
    if s.shape != (2 * n,):
      raise ValueError(f"scorer returned shape {s.shape}, expected ({2 * n},)")
    return s[:n], s[n:]

  def __call__(self, prompts, responses_first, responses_second) -> np.ndarray:
    s1, s2 = self.scores(prompts, responses_first, responses_second)
    return sign_with_tolerance(s1 - s2, self.tol)


@dataclasses.dataclass
class WinRateResult:
  """A vs B over n prompts judged in both orders: counts, percentages of the n
  prompts (win / lose / tie / consistency in [0, 100]; delta = win - lose in percentage
  points, in [-100, 100]) and one record per prompt."""
  name_a: str
  name_b: str
  n: int
  wins: int
  losses: int
  ties: int
  win: float        # % of prompts A wins (both orders prefer A)
  lose: float       # % of prompts B wins
  tie: float        # % ties (disagreeing orders or judge ties)
  delta: float      # win - lose, in percentage points
  consistency: float  # % of prompts whose two orders agree (incl. agreeing ties)
  records: list[dict]

  def summary(self) -> dict:
    """JSON-ready fields without the per-prompt records."""
    d = dataclasses.asdict(self)
    d.pop("records")
    return d


def combine_orders(pref_a_first, pref_b_first) -> np.ndarray:
  """Per-prompt outcome for A: +1 win, -1 lose, 0 tie.

  `pref_a_first`: judge output with A shown first (+1 = A better);
  `pref_b_first`: judge output with B shown first (+1 = B better).
  """
  a1 = np.asarray(pref_a_first, np.int8)
  a2 = -np.asarray(pref_b_first, np.int8)  # from A's point of view
  return np.where((a1 == a2) & (a1 != 0), a1, 0).astype(np.int8)


def summarize(outcome, pref_a_first, pref_b_first, *, name_a="A", name_b="B",
              prompts=None, responses_a=None, responses_b=None) -> WinRateResult:
  """The WinRateResult of per-prompt outcomes (+1 win, -1 lose, 0 tie for A) and the two
  orders' judgements; records carry the texts when `prompts` (and both responses) are given.
  Raises ValueError for zero prompts."""
  outcome = np.asarray(outcome)
  n = int(outcome.size)
  if n == 0:
    raise ValueError("win rate over zero prompts")
  wins, losses = int(np.sum(outcome == 1)), int(np.sum(outcome == -1))
  ties = n - wins - losses
  agree = int(np.sum(np.asarray(pref_a_first) == -np.asarray(pref_b_first)))
  records = []
  for i in range(n):
    r = {"index": i, "a_first": int(pref_a_first[i]), "b_first": int(pref_b_first[i]),
         "outcome": {1: "win", -1: "lose", 0: "tie"}[int(outcome[i])]}
    if prompts is not None:
      r.update(prompt=prompts[i], response_a=responses_a[i], response_b=responses_b[i])
    records.append(r)
  pct = lambda k: 100.0 * k / n
  return WinRateResult(name_a, name_b, n, wins, losses, ties, pct(wins), pct(losses), pct(ties),
                       pct(wins) - pct(losses), pct(agree), records)


def win_rate(prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
             judge: PairJudge, *, name_a: str = "A", name_b: str = "B",
             keep_texts: bool = True) -> WinRateResult:
  """A vs B on the same prompts, each prompt judged in both orders (one judge call per order,
  so per-prompt side inputs such as `ScorerJudge.references` stay aligned with `prompts`)."""
  n = len(prompts)
  if not (len(responses_a) == len(responses_b) == n):
    raise ValueError(f"win_rate: {n} prompts, {len(responses_a)} responses of {name_a}, "
                     f"{len(responses_b)} responses of {name_b}")
  if n == 0:
    raise ValueError("win_rate: no prompts")
  prompts, ra, rb = list(prompts), list(responses_a), list(responses_b)
  a_first = check_preferences(judge(prompts, ra, rb), n, "judge (A first)")
  b_first = check_preferences(judge(prompts, rb, ra), n, "judge (B first)")
  outcome = combine_orders(a_first, b_first)
  texts = dict(prompts=prompts, responses_a=ra, responses_b=rb) if keep_texts else {}
  return summarize(outcome, a_first, b_first, name_a=name_a, name_b=name_b, **texts)
