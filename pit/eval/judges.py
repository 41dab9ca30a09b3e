"""Judges behind one contract, for evaluation, self-judging and pair building.

    judge.score(prompts, responses, references=None) -> float64 [n]   (NaN: no judgement)

Higher is better. A NaN is a judgement that could not be read (an LLM judge's
unparseable output); it is never turned into a number: `score` reports how many
there were (`Judge.unjudged`) and the pairwise protocol counts a NaN as a tie.
Implementations:

  OracleJudge        the synthetic task's ground-truth oracle (`pit.data.synthetic`), in [0, 1]
  RewardModelJudge   a reward model or PIT's gap reward model (`pit.rl.scorers`), unbounded;
                     the gap model needs `references` (r_gap(x, y, y_ref))
  LLMJudge           a language model prompted with the additive 5-point prompt of
                     Self-Rewarding LMs (Yuan et al. 2024, Fig. 2), `samples` judgements per
                     response (sampled at `temperature` when > 1) averaged, in [0, 5]
  PairwiseLLMJudge   the A/B log-probability judge (`LMJudge.pairwise`), pairwise only

`pairwise(judge)` gives the {-1, 0, +1} verdicts `pit.eval.winrate.win_rate` judges
both ways round with.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from pit.eval import winrate


class Judge:
  """Base: subclasses implement `_score`; `score` validates shape and counts NaNs."""
  name = "judge"
  kind = "scalar"          # "scalar": score(); "pairwise": only verdicts on two responses
  needs_references = False

  def __init__(self):
    self.unjudged = 0      # responses with no readable judgement so far

  def score(self, prompts: Sequence[str], responses: Sequence[str],
            references: Optional[Sequence[str]] = None) -> np.ndarray:
    """float64 [n] scores; NaN where no judgement could be made."""
    n = len(prompts)
    if len(responses) != n or (references is not None and len(references) != n):
      raise ValueError(f"{self.name}: {n} prompts, {len(responses)} responses, "
                       f"{'no' if references is None else len(references)} references")
    if self.needs_references and references is None:
      raise ValueError(f"{self.name} needs reference responses")
    out = np.asarray(self._score(list(prompts), list(responses),
                                 None if references is None else list(references)), np.float64)
    if out.shape != (n,):
      raise ValueError(f"{self.name} returned shape {out.shape}, expected ({n},)")
    bad = int(np.isnan(out).sum())
    if bad:
      self.unjudged += bad
      logging.warning("%s: %d of %d responses got no readable judgement (NaN, counted)",
                      self.name, bad, n)
    return out

  def _score(self, prompts, responses, references):
    raise NotImplementedError


class ScorerJudge(Judge):
  """A judge from any scorer function `scorer(prompts, responses, references) -> [n]`."""

  def __init__(self, scorer, name: str, needs_references: bool = False):
    super().__init__()
    self.scorer, self.name, self.needs_references = scorer, name, needs_references

  def _score(self, prompts, responses, references):
    return self.scorer(prompts, responses, references)


def oracle_judge() -> ScorerJudge:
  """The synthetic task's oracle (`pit.data.synthetic.oracle_scores`), in [0, 1]."""
  from pit.data.synthetic import oracle_scores
  return ScorerJudge(lambda p, r, ref: oracle_scores(p, r), "oracle")


def reward_model_judge(scorer, name: str = "reward model") -> ScorerJudge:
  """A `pit.rl.scorers.RewardModelScorer` (ordinary or gap reward model)."""
  gap = getattr(getattr(scorer, "format_fn", None), "__qualname__", "").startswith("gap_format")
  return ScorerJudge(scorer, name, needs_references=gap)


class LLMJudge(Judge):
  """Pointwise LLM-as-a-Judge: the additive 5-point prompt, `samples` judgements per response
  averaged over those that parse (`pit.data.judge.parse_judge_score`); NaN when none does.
  Yuan et al. 2024 average three sampled judgements (temperature 1); `samples=1` with
  `temperature=0` is the greedy judge."""
  name = "LLM judge"

  def __init__(self, lm_judge, samples: int = 1, temperature: float = 0.0, seed: int = 0):
    super().__init__()
    if samples < 1:
      raise ValueError(f"LLMJudge: samples must be >= 1, got {samples}")
    if samples > 1 and temperature <= 0:
      raise ValueError("LLMJudge: several samples need temperature > 0 (greedy repeats itself)")
    self.lm, self.samples, self.temperature, self.seed = lm_judge, int(samples), float(temperature), seed

  def _score(self, prompts, responses, references):
    from pit.data.judge import parse_judge_score
    draws = []
    for k in range(self.samples):
      texts = self.lm.judge_texts(prompts, responses, temperature=self.temperature,
                                  seed=self.seed + k)
      draws.append([parse_judge_score(t) for t in texts])
    out = np.full(len(prompts), np.nan)
    for i in range(len(prompts)):
      got = [d[i] for d in draws if d[i] is not None]
      if got:
        out[i] = float(np.mean(got))
    return out


class PairwiseLLMJudge(Judge):
  """The A/B judge (`pit.eval.llm_judge.LMJudge.pairwise`): verdicts only."""
  kind = "pairwise"
  name = "LLM judge"

  def __init__(self, lm_judge):
    super().__init__()
    self.lm = lm_judge

  def verdicts(self, prompts, first, second) -> np.ndarray:
    """int8 [n]: +1 first better, -1 second better, 0 tie."""
    return self.lm.pairwise(prompts, first, second)


def pairwise(judge: Judge, references: Optional[Sequence[str]] = None) -> winrate.PairJudge:
  """{-1, 0, +1} verdicts of `judge` on (first, second) for `winrate.win_rate`; a scalar
  judge prefers the higher score (NaN: a tie)."""
  if judge.kind == "pairwise":
    return judge.verdicts
  return winrate.ScorerJudge(judge.score, references)


def from_config(names, *, rt, data_source: str, reward_model_dir: str = "",
                llm_judge_dir: str = "", batch_size: int = 32, pairwise_llm: bool = True) -> dict:
  """The judges of `eval.judges` a run has, by name: "oracle" (synthetic data only),
  "reward_model" (the reward model in `reward_model_dir`, scoring the token rows it was
  trained on), "llm_judge" (an HF directory: the A/B judge when `pairwise_llm`, else the
  5-point judge). A name the run cannot serve is left out (logged)."""
  from pit.rl import scorers
  out = {}
  for name in names:
    if name == "oracle" and data_source == "synthetic":
      out["oracle"] = oracle_judge()
    elif name == "reward_model" and reward_model_dir:
      out["reward_model"] = reward_model_judge(scorers.reward_model_scorer(
          reward_model_dir, rt.tokenizer, rt.mesh, rt.rules,
          format_fn=scorers.template_format("{prompt}{response}"), batch_size=batch_size),
          "reward_model")
    elif name == "llm_judge" and llm_judge_dir:
      from pit.eval.llm_judge import LMJudge
      lm = LMJudge.from_hf(llm_judge_dir, mesh=rt.mesh, rules=rt.rules)
      out["llm_judge"] = PairwiseLLMJudge(lm) if pairwise_llm else LLMJudge(lm)
    else:
      logging.info("judge %r: not available in this run (skipped)", name)
  return out
