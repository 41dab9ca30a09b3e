"""Preference pairs: the one record type every preference method consumes
(reward models, DPO, PIT's gap reward model and policy, evaluation).

Sources: JSONL files of `{"prompt", "chosen", "rejected"}` (optional numeric
`margin`; any other fields are kept in `meta`), the TFDS builders in
`pit.data.builders`, and the synthetic oracle task (`pit.data.synthetic`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from pit.data import records


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """One preference: a rendered prompt x, the chosen response y_w, the rejected response
  y_l, an optional known quality gap `margin` and any source fields in `meta`."""
  prompt: str            # rendered prompt text (e.g. "\n\nHuman: ...\n\nAssistant:")
  chosen: str            # the better response y_w
  rejected: str          # the worse response y_l
  margin: float = 0.0    # known quality gap (score difference) when the source has one
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    """The JSONL record of `read_pairs_jsonl`: prompt, chosen, rejected, margin when
    non-zero, and the meta fields (those not clashing with the former)."""
    out = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
    if self.margin:
      out["margin"] = self.margin
    out.update({k: v for k, v in self.meta.items() if k not in out})
    return out


PAIR_FIELDS = ("prompt", "chosen", "rejected")
IDENTICAL = "fields 'chosen' and 'rejected' are identical"


def pair_error(rec: dict, where: str) -> "records.DataError | None":
  """What makes a well-typed pair unusable: chosen and rejected the same text (up to
  surrounding whitespace), which holds no preference to learn and would be trained on as
  noise. None for a usable pair."""
  if rec["chosen"].strip() == rec["rejected"].strip():
    return records.DataError(f"{where}: {IDENTICAL} (no preference to learn)")
  return None


def read_pairs_jsonl(path: str, *, on_error: str = "raise",
                     report: records.SkipReport | None = None) -> list[PreferencePair]:
  """Pairs from JSONL; bad lines raise `DataError` naming file, line and field
  (or are skipped and counted with on_error='skip')."""
  report = report if report is not None else records.SkipReport()
  out = []
  for lineno, rec in records.read_jsonl_numbered(path, PAIR_FIELDS, on_error=on_error,
                                                 report=report):
    margin = rec.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
      report.skip_or_raise(records.DataError(
          f"{path}:{lineno}: field 'margin' must be a finite number"), on_error)
      continue
    err = pair_error(rec, f"{path}:{lineno}")
    if err is not None:
      report.skip_or_raise(err, on_error)
      continue
    meta = {k: v for k, v in rec.items() if k not in PAIR_FIELDS + ("margin",)}
    out.append(PreferencePair(rec["prompt"], rec["chosen"], rec["rejected"], float(margin), meta))
  return out


def write_pairs_jsonl(path: str, pairs: Iterable[PreferencePair]) -> int:
  """Writes pairs as JSONL, atomically; returns the count."""
  from pit import jsonio
  return jsonio.write_jsonl_atomic(path, (p.to_json() for p in pairs))


def best_vs_worst(prompt: str, responses: Sequence[str], scores: Sequence[float],
                  min_gap: float = 0.0) -> PreferencePair | None:
  """The pair (highest-scored, lowest-scored) of N candidates for one prompt,
  as Self-Rewarding LMs (Yuan et al., 2024) build DPO data; the first wins a
  tie. None when the scores differ by no more than `min_gap` or the two texts
  are equal (no preference to learn). margin = the score gap."""
  if len(responses) != len(scores):
    raise ValueError(f"{len(responses)} responses but {len(scores)} scores")
  if len(responses) < 2:
    return None
  hi = max(range(len(scores)), key=lambda i: (scores[i], -i))
  lo = min(range(len(scores)), key=lambda i: (scores[i], i))
  gap = float(scores[hi]) - float(scores[lo])
  if gap <= min_gap or responses[hi].strip() == responses[lo].strip():   # as `pair_error`
    return None
  return PreferencePair(prompt, responses[hi], responses[lo], margin=gap, meta={
      "chosen_score": float(scores[hi]), "rejected_score": float(scores[lo]),
      "n_candidates": len(responses)})
