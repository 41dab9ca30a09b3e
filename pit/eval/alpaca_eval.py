"""AlpacaEval model-output files: a JSON list (optionally gzipped) of
{"instruction", "output", "generator", "dataset"} objects, one per prompt.

`write_outputs` writes our generations in that format (AlpacaEval's own
evaluator reads them unchanged); `read_outputs` reads ours or AlpacaEval's
reference outputs (e.g. ../shared/data/alpaca_eval/*_model_outputs.json.gz) and
raises `DataError` naming file, list index and field for bad input; `align`
pairs two systems' outputs on the same instructions for `pit.eval.winrate`.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
from typing import Optional, Sequence

from pit.data.records import CORRUPT_STREAM_ERRORS, DataError

FIELDS = ("instruction", "output", "generator", "dataset")


@dataclasses.dataclass(frozen=True)
class AlpacaRecord:
  """One AlpacaEval model output: the instruction, the system's output, the generator
  (system) name and the dataset name."""
  instruction: str
  output: str
  generator: str
  dataset: str

  def to_json(self) -> dict:
    """The record as a dict of its four fields."""
    return dataclasses.asdict(self)


def _open(path: str, mode: str, gz: bool | None = None):
  gz = str(path).endswith(".gz") if gz is None else gz
  return gzip.open(path, mode) if gz else open(path, mode)


def write_outputs(path: str, instructions: Sequence[str], outputs: Sequence[str], generator: str,
                  datasets: Optional[Sequence[str]] = None) -> int:
  """Writes one record per (instruction, output); `datasets` defaults to 'pit'. Returns the count."""
  if len(instructions) != len(outputs):
    raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
  if datasets is not None and len(datasets) != len(instructions):
    raise ValueError(f"{len(datasets)} dataset names for {len(instructions)} instructions")
  if not generator:
    raise ValueError("generator name must be non-empty")
  recs = [AlpacaRecord(str(i), str(o), generator, "pit" if datasets is None else str(d)).to_json()
          for i, o, d in zip(instructions, outputs, datasets or [None] * len(outputs))]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with _open(tmp, "wt", gz=str(path).endswith(".gz")) as f:
    json.dump(recs, f, ensure_ascii=False, indent=1)
  os.replace(tmp, path)
  return len(recs)


def read_outputs(path: str, *, allow_empty_output: bool = True) -> list[AlpacaRecord]:
  """Reads an AlpacaEval outputs file; every record needs string `instruction`,
  `output` and `generator` (`dataset` optional, '' when absent); extra keys are ignored."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"AlpacaEval outputs file not found: {path}")
  try:
    with _open(path, "rb") as f:
      raw = f.read()
  except CORRUPT_STREAM_ERRORS as e:  # BadGzipFile (OSError), EOFError (cut), zlib.error
    raise DataError(f"{path}: file is truncated or corrupt ({type(e).__name__}: {e}); "
                    "re-download or re-create it") from None
  try:
    data = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
  out = []
  for i, rec in enumerate(data):
    if not isinstance(rec, dict):
      raise DataError(f"{path}: record [{i}]: expected a JSON object, got {type(rec).__name__}")
    for name in FIELDS:
      if name not in rec:
        if name == "dataset":
          continue
        raise DataError(f"{path}: record [{i}]: field '{name}' is missing")
      if not isinstance(rec[name], str):
        raise DataError(f"{path}: record [{i}]: field '{name}' must be a string, "
                        f"got {type(rec[name]).__name__}")
    if not rec["instruction"].strip():
      raise DataError(f"{path}: record [{i}]: field 'instruction' is empty")
    if not allow_empty_output and not rec["output"].strip():
      raise DataError(f"{path}: record [{i}]: field 'output' is empty")
    out.append(AlpacaRecord(rec["instruction"], rec["output"], rec["generator"], rec.get("dataset", "")))
  return out


def align(a: Sequence[AlpacaRecord], b: Sequence[AlpacaRecord]) -> tuple[list[str], list[str], list[str]]:
  """(instructions, outputs of a, outputs of b) for the instructions both cover, in a's order.

  Raises if an instruction repeats within one side (ambiguous pairing) or the
  sides share no instruction.
  """
  def index(recs, side):
    seen = {}
    for i, r in enumerate(recs):
      if r.instruction in seen:
        raise DataError(f"{side}: record [{i}] repeats the instruction of record [{seen[r.instruction]}]")
      seen[r.instruction] = i
    return seen
  ia, ib = index(a, "a"), index(b, "b")
  common = [r.instruction for r in a if r.instruction in ib]
  if not common:
    raise DataError("the two output sets share no instruction")
  return common, [a[ia[x]].output for x in common], [b[ib[x]].output for x in common]
