"""Evaluation fine-tuning (EFT) data: the LLM-as-a-Judge skill as SFT rows (Self-Rewarding LMs,
Yuan et al. 2024, §3.1 and §4.1 "EFT data").

A row is (judge prompt for an instruction and a response -> a justification ending in
"Score: k"). The paper builds them from ranked human responses: the seed model writes a
judgement of every response; a prompt's judgements are kept only when the ordering of their
scores agrees with the human ranking; the over-represented score is down-sampled so the
scores are balanced. `from_judgements` does the filter, `balance_scores` the down-sampling.
Where an oracle knows the criteria (the synthetic task), the justification and score come from
the oracle (`pit.data.synthetic.eft_examples`) and only the balancing applies.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from pit.data import judge


def ordering_agrees(scores: Sequence[float], reference: Sequence[float]) -> bool:
  """True when sgn(s_i - s_j) == sgn(r_i - r_j) for every pair i < j (ties must match ties),
  as `pit.eval.rm_agreement`'s exact match."""
  s, r = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
  ds = np.sign(s[:, None] - s[None, :])
  dr = np.sign(r[:, None] - r[None, :])
  return bool(np.all(ds == dr))


def trim_judgement(text: str) -> str:
  """The judgement up to the end of its last "Score: k" line (what a judge should stop after;
  text the model wrote beyond it is not taught)."""
  labels = list(judge._LABEL_RE.finditer(text)) or list(judge._PROSE_LABEL_RE.finditer(text))
  if not labels:
    return text
  end = text.find("\n", labels[-1].end())
  return text if end < 0 else text[:end]


def from_judgements(groups: Sequence[dict], judgements: Sequence[Sequence[Sequence[str]]], *,
                    render: Callable[[str, str], str] | None = None,
                    compact: bool = False) -> tuple[list[dict], dict]:
  """EFT rows from the seed model's judgements of ranked candidates.

  groups[g] = {"prompt", "responses": [text], "reference": [score, higher better]};
  judgements[g][c] = the judgement texts sampled for candidate c (the first one with a readable
  score is that candidate's judgement). A group is kept when every candidate has a readable
  judgement and the scores order the candidates as the reference does (`ordering_agrees`);
  each kept candidate gives a row {"prompt": render(prompt, response) (default: the additive
  judge prompt, `compact` or not; pass the one the judgements were made with), "response": the
  judgement cut after its score line (`trim_judgement`), "points": score}. counts: groups,
  candidates, unparsed_candidates, groups_unparsed (some candidate had no readable judgement),
  groups_disagree, groups_kept, rows."""
  if len(groups) != len(judgements):
    raise ValueError(f"{len(groups)} groups but {len(judgements)} judgement groups")
  counts = dict(groups=len(groups), candidates=0, unparsed_candidates=0, groups_unparsed=0,
                groups_disagree=0, groups_kept=0, rows=0)
  rows = []
  for g, (grp, texts) in enumerate(zip(groups, judgements)):
    if len(texts) != len(grp["responses"]):
      raise ValueError(f"group {g}: {len(grp['responses'])} responses but {len(texts)} "
                       "judgement lists")
    picked = []
    for samples in texts:
      counts["candidates"] += 1
      hit = next(((t, s) for t in samples if (s := judge.parse_judge_score(t)) is not None), None)
      if hit is None:
        counts["unparsed_candidates"] += 1
      picked.append(hit)
    if any(p is None for p in picked):
      counts["groups_unparsed"] += 1
      continue
    if not ordering_agrees([s for _, s in picked], grp["reference"]):
      counts["groups_disagree"] += 1
      continue
    counts["groups_kept"] += 1
    for resp, (text, score) in zip(grp["responses"], picked):
      prompt = (render(grp["prompt"], resp) if render is not None else
                judge.render_judge_prompt(grp["prompt"], resp, compact=compact))
      rows.append({"prompt": prompt, "response": trim_judgement(text), "points": float(score)})
  counts["rows"] = len(rows)
  return rows, counts


def balance_scores(rows: Sequence[dict], seed: int, *,
                   key: str = "points") -> tuple[list[dict], dict]:
  """Down-samples the over-represented score: every score keeps at most as many rows as the
  second most frequent score has (Yuan et al. 2024 down-sample the dominant score 4); rows are
  drawn at random (`seed`) and returned in their original order. counts: before (score ->
  rows), after, dropped."""
  by: dict[float, list[int]] = {}
  for i, r in enumerate(rows):
    by.setdefault(float(r[key]), []).append(i)
  sizes = sorted((len(v) for v in by.values()), reverse=True)
  cap = sizes[1] if len(sizes) > 1 else (sizes[0] if sizes else 0)
  rng = np.random.default_rng(seed)
  keep: set[int] = set()
  for v in by.values():
    chosen = v if len(v) <= cap else rng.choice(v, size=cap, replace=False).tolist()
    keep.update(int(i) for i in chosen)
  out = [r for i, r in enumerate(rows) if i in keep]
  fmt = lambda d: {f"{k:g}": len(v) for k, v in sorted(d.items())}
  after: dict[float, list[int]] = {}
  for r in out:
    after.setdefault(float(r[key]), []).append(0)
  return out, {"before": fmt(by), "after": fmt(after), "dropped": len(rows) - len(out)}
