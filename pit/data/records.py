"""Reading prompt/response and text records from JSONL, with errors that name
the file, line and field; or, with on_error='skip', skipped, counted, reported."""
from __future__ import annotations

import collections
import gzip
import json
import logging
from typing import Iterator


class DataError(ValueError):
  """Bad input: the message names file, line and field."""


class SkipReport:
  def __init__(self):
    self.counts = collections.Counter()
    self.examples: list[str] = []

  def add(self, msg: str, reason: str):
    self.counts[reason] += 1
    if len(self.examples) < 10:
      self.examples.append(msg)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    if not self.total:
      return "no records skipped"
    return f"skipped {self.total} record(s): {dict(self.counts)}; e.g. {self.examples[:3]}"


def _open(path):
  """gzip by name or by magic bytes (downloaded files may lose their .gz name)."""
  if str(path).endswith(".gz"):
    return gzip.open(path, "rb")
  with open(path, "rb") as f:
    gz = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gz else open(path, "rb")


def read_jsonl(path: str, fields: tuple[str, ...], *, on_error: str = "raise",
               report: SkipReport | None = None) -> Iterator[dict]:
  """Like `read_jsonl_numbered`, without the line numbers."""
  for _, rec in read_jsonl_numbered(path, fields, on_error=on_error, report=report):
    yield rec


def read_jsonl_numbered(path: str, fields: tuple[str, ...], *, on_error: str = "raise",
                        report: SkipReport | None = None) -> Iterator[tuple[int, dict]]:
  """Yields records that have non-empty string values for every name in `fields`.

  One of the field tuples may be alternatives: pass e.g. ("prompt", "response")
  for pairs; a record failing any check raises DataError (or is skipped).
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
  report = report if report is not None else SkipReport()
  with _open(path) as f:
    for lineno, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start})") from None
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
          raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        for name in fields:
          if name not in rec:
            raise DataError(f"{path}:{lineno}: field '{name}' is missing")
          if not isinstance(rec[name], str):
            raise DataError(f"{path}:{lineno}: field '{name}' must be a string")
          if not rec[name].strip():
            raise DataError(f"{path}:{lineno}: field '{name}' is empty")
      except DataError as e:
        if on_error == "raise":
          raise
        report.add(str(e), str(e).split(": ", 1)[1].split(" (")[0])
        continue
      yield lineno, rec
  if report.total:
    logging.warning("%s: %s", path, report.summary())
