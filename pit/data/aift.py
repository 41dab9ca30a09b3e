"""AI-feedback training (AIFT) pairs (Self-Rewarding LMs, Yuan et al. 2024, §3.2 steps 2-3 and
§3.3; the teacher variants of the Self-Reward RLHF report, `../shared/seeds/002`).

Self-rewarding: each prompt has N candidates; each candidate is judged k times with the
additive 5-point prompt; its score is the mean over the judgements whose score could be read
(`pit.data.judge.parse_judge_score`) and NaN when none could (never a number). The pair is the
highest- vs the lowest-scored candidate; a prompt with fewer than two scored candidates, or
whose best and worst scores tie, gives no pair (each counted).

Teacher demonstration: chosen = the teacher's answer, rejected = the student's; a prompt where
either is empty or the two are the same text gives no pair (counted).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pit.data import judge
from pit.data.pairs import PreferencePair


def candidate_scores(judgements: Sequence[Sequence[str]]) -> tuple[list[float], list[list],
                                                                    dict]:
  """judgements[c] = the k judgement texts of candidate c -> (mean readable score per candidate,
  NaN when none; the parsed scores [c][k], None where unreadable; counts: judgements,
  unparsed_judgements, unscored_candidates)."""
  parsed = [[judge.parse_judge_score(t) for t in texts] for texts in judgements]
  means = []
  for ps in parsed:
    ok = [p for p in ps if p is not None]
    means.append(float(np.mean(ok)) if ok else math.nan)
  counts = {"judgements": sum(len(p) for p in parsed),
            "unparsed_judgements": sum(p is None for ps in parsed for p in ps),
            "unscored_candidates": sum(math.isnan(m) for m in means)}
  return means, parsed, counts


def best_vs_worst_pairs(prompts: Sequence[str], candidates: Sequence[Sequence[str]],
                        scores: Sequence[Sequence[float]]) -> tuple[list[PreferencePair], dict]:
  """One pair per prompt: highest- vs lowest-scored candidate (NaN scores left out; the first of
  equal scores wins). counts: prompts, pairs, too_few_scores (< 2 scored candidates), ties (best
  == worst), same_text (best and worst are the same text), empty_candidates (left out)."""
  if not (len(prompts) == len(candidates) == len(scores)):
    raise ValueError(f"{len(prompts)} prompts, {len(candidates)} candidate lists, "
                     f"{len(scores)} score lists")
  counts = dict(prompts=len(prompts), pairs=0, too_few_scores=0, ties=0, same_text=0,
                empty_candidates=0)
  pairs = []
  for p, cands, sc in zip(prompts, candidates, scores):
    if len(cands) != len(sc):
      raise ValueError(f"prompt {p[:40]!r}: {len(cands)} candidates but {len(sc)} scores")
    ok = []
    for c, s in zip(cands, sc):
      if not c.strip():
        counts["empty_candidates"] += 1
      elif not math.isnan(float(s)):
        ok.append((c, float(s)))
    if len(ok) < 2:
      counts["too_few_scores"] += 1
      continue
    hi = max(range(len(ok)), key=lambda i: (ok[i][1], -i))
    lo = min(range(len(ok)), key=lambda i: (ok[i][1], i))
    if ok[hi][1] == ok[lo][1]:
      counts["ties"] += 1
      continue
    if ok[hi][0].strip() == ok[lo][0].strip():
      counts["same_text"] += 1
      continue
    pairs.append(PreferencePair(p, ok[hi][0], ok[lo][0], margin=ok[hi][1] - ok[lo][1], meta={
        "chosen_score": ok[hi][1], "rejected_score": ok[lo][1], "n_scored": len(ok),
        "n_candidates": len(cands)}))
  counts["pairs"] = len(pairs)
  return pairs, counts


def teacher_demo_pairs(prompts: Sequence[str], teacher: Sequence[str],
                       student: Sequence[str]) -> tuple[list[PreferencePair], dict]:
  """Teacher demonstration: (teacher's answer, student's answer) per prompt. counts: prompts,
  pairs, empty (either answer empty), same_text."""
  if not (len(prompts) == len(teacher) == len(student)):
    raise ValueError(f"{len(prompts)} prompts, {len(teacher)} teacher and {len(student)} "
                     "student answers")
  counts = dict(prompts=len(prompts), pairs=0, empty=0, same_text=0)
  pairs = []
  for p, t, s in zip(prompts, teacher, student):
    if not t.strip() or not s.strip():
      counts["empty"] += 1
    elif t.strip() == s.strip():
      counts["same_text"] += 1
    else:
      pairs.append(PreferencePair(p, t, s, meta={"source": "teacher_demonstration"}))
  counts["pairs"] = len(pairs)
  return pairs, counts
