"""Reading prompt/response and text records from JSONL, with errors that name
the file, line and field; or, with on_error='skip', skipped, counted, reported."""
from __future__ import annotations

import collections
import gzip
import json
import logging
import zlib
from typing import Iterator


class DataError(ValueError):
  """Bad input: the message names file, line and field."""


def _reason(msg: str) -> str:
  """The reason part of "FILE:LINE: reason (details)", for counting skips by kind."""
  return msg.split(": ", 1)[-1].split(" (")[0]


class SkipReport:
  """Bad records skipped under data.on_error='skip': counts by reason and the first 10
  messages (each naming file, line and field)."""
  def __init__(self):
    self.counts = collections.Counter()
    self.examples: list[str] = []

  def add(self, msg: str, reason: str):
    """Counts one skipped record under `reason`, keeping `msg` while fewer than 10 are
    kept."""
    self.counts[reason] += 1
    if len(self.examples) < 10:
      self.examples.append(msg)

  @property
  def total(self) -> int:
    """Number of records skipped, all reasons together."""
    return sum(self.counts.values())

  def as_dict(self) -> dict:
    """JSON-ready {total, by_reason, examples} (what `merge` reads back)."""
    return {"total": self.total, "by_reason": dict(self.counts), "examples": list(self.examples)}

  def merge(self, other: "SkipReport | dict"):
    """Adds another report's counts and examples (a SkipReport or its `as_dict()`)."""
    d = other.as_dict() if isinstance(other, SkipReport) else other
    self.counts.update({k: int(v) for k, v in d.get("by_reason", {}).items()})
    for ex in d.get("examples", []):
      if len(self.examples) < 10:
        self.examples.append(ex)

  def skip_or_raise(self, err: "DataError", on_error: str, reason: str | None = None):
    """The one policy for a bad record: raise `err` (on_error='raise') or count it."""
    if on_error == "raise":
      raise err
    msg = str(err)
    self.add(msg, reason or _reason(msg))

  def summary(self) -> str:
    """One line for logs: the total, the counts by reason and up to 3 example
    messages ("no records skipped" when there were none)."""
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


# What a damaged gzip stream raises while it is read: BadGzipFile (an OSError: bad
# header, CRC or length), EOFError (cut short) or zlib.error (corrupt deflate data).
CORRUPT_STREAM_ERRORS = (OSError, EOFError, zlib.error)


def corrupt_file_error(path, lines_read: int, e: BaseException) -> DataError:
  """The one error for an unreadable (truncated / corrupt) file: names the file, the line
  reached and the reason. Raised whatever data.on_error says: the rest of the file cannot
  be read, so skipping would drop an unknown number of records silently."""
  reason = str(e) or type(e).__name__
  return DataError(f"{path}:{lines_read + 1}: file is truncated or corrupt after line "
                   f"{lines_read} ({type(e).__name__}: {reason}); re-download or re-create it")


def iter_lines(path) -> Iterator[tuple[int, bytes]]:
  """(line number, raw bytes) of a text file, gzipped or not. A truncated or corrupt
  gzip stream raises `corrupt_file_error` naming the file and the line reached."""
  lineno = 0
  with _open(path) as f:
    it = iter(f)
    while True:
      try:
        raw = next(it)
      except StopIteration:
        return
      except CORRUPT_STREAM_ERRORS as e:
        raise corrupt_file_error(path, lineno, e) from None
      lineno += 1
      yield lineno, raw


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
  for lineno, raw in iter_lines(path):
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
      report.skip_or_raise(e, on_error)
      continue
    yield lineno, rec
  if report.total:
    logging.warning("%s: %s", path, report.summary())
