"""Shared parts of the TFDS builders: where the source files come from
(manual_dir, official download, or a clear error), field checks that name
file/line/field, row readers for JSONL and parquet, and string features that
work without TensorFlow.

TFDS 4.9.10 without TensorFlow: `GeneratorBasedBuilder` with
`file_format='array_record'` builds and `tfds.data_source` reads back.
`tfds.features.Text`, numpy scalars (`np.int32`, `np.float32`, `np.float64`,
`np.bool_`) and `tfds.features.Sequence` of those (also of dicts) work; strings
read back as UTF-8 `bytes` (decode with `decode_record`). A split with zero
examples cannot be written ("No examples were yielded"), so builders only
declare splits that have data.
"""
from __future__ import annotations

import glob
import inspect
import logging
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from pit.data import records
from pit.data.records import DataError


# The key of `metadata['skipped']` for bad records that belong to no one split (read for
# every split).
SOURCE_SKIPS = "all_splits"


class SourceMissingError(FileNotFoundError):
  """Neither manual files nor a permitted download: names what is missing."""


def text():
  """A UTF-8 string feature (`tfds.features.Text`; reads back as bytes)."""
  return tfds.features.Text()


class PitBuilder(tfds.core.GeneratorBasedBuilder):
  """Base: `manual_dir` (local copies of the official files) or, with
  `allow_download=True`, the official URLs through `dl_manager`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First PIT release."}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The builder's source file (TFDS's own lookup needs `importlib_resources`)."""
    # TFDS's own lookup goes through `importlib_resources`, which is not
    # installed (and not needed): the builder's source file is enough.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, manual_dir: str | None = None, allow_download: bool = False, **kwargs):
    self._pit_manual_dir = manual_dir
    self._pit_allow_download = allow_download
    self._pit_stats: dict[str, Any] = {}
    self._pit_skips: dict[str, records.SkipReport] = {}
    super().__init__(**kwargs)

  def make_info(self, **kwargs) -> tfds.core.DatasetInfo:
    """DatasetInfo that keeps source order (no shuffling by key hash) and a
    metadata dict for the builder's counts."""
    return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict(), **kwargs)

  # Subclasses: file names in a manual_dir (for messages) and the lookup.
  def expected_manual_files(self) -> list[str]:
    """The source file names a manual_dir should hold (for error messages).
    Subclasses implement it; NotImplementedError here."""
    raise NotImplementedError

  def official_urls(self) -> dict[str, list[str]]:
    """{group (usually a split): [URL]} of the official source files.
    Subclasses implement it; NotImplementedError here."""
    raise NotImplementedError

  def find_manual_files(self, manual_dir: str) -> dict[str, list[str]]:
    """{group (usually a split): [path]} of the source files found in `manual_dir`
    (empty lists for missing groups). Subclasses implement it; NotImplementedError here."""
    raise NotImplementedError

  @property
  def _pit_id(self) -> str:
    cfg = self.builder_config.name if self.builder_config else None
    return f"{self.name}/{cfg}" if cfg else self.name

  def resolve_sources(self, dl_manager) -> dict[str, list[str]]:
    """group -> local file paths, from manual_dir or the official download."""
    if self._pit_manual_dir:
      mdir = os.fspath(self._pit_manual_dir)
      if not os.path.isdir(mdir):
        raise SourceMissingError(f"{self._pit_id}: manual_dir {mdir} does not exist")
      found = {k: v for k, v in self.find_manual_files(mdir).items() if v}
      if not found:
        raise SourceMissingError(
            f"{self._pit_id}: no source files in manual_dir {mdir}; expected "
            f"{', '.join(self.expected_manual_files())}")
      self.info.metadata["source_digest"] = self.manual_digest(mdir)
      return found
    if self._pit_allow_download:
      urls = self.official_urls()
      return {k: [os.fspath(p) for p in dl_manager.download(v)] for k, v in urls.items()}
    urls = [u for v in self.official_urls().values() for u in v]
    raise SourceMissingError(
        f"{self._pit_id}: no source data: pass manual_dir holding "
        f"{', '.join(self.expected_manual_files())}, or download=True to fetch "
        f"{urls[0]}{f' (+{len(urls) - 1} more)' if len(urls) > 1 else ''}")

  def manual_digest(self, mdir: str) -> str:
    """Content hash of the source files this builder reads from `mdir` (names and bytes):
    kept in metadata.json, so a build from files that have changed since is redone
    (`pit.data.builders.build`) instead of silently reused."""
    import hashlib
    from pit.stages import file_digest
    h = hashlib.sha256()
    for group, paths in sorted(self.find_manual_files(mdir).items()):
      for path in paths:
        h.update(f"{group}\0{os.path.basename(path)}\0{file_digest(path)}".encode())
    return h.hexdigest()

  def present_splits(self, dl_manager, splits) -> dict:
    """{split: self._generate_examples(split, files)} for the splits whose source files
    exist (TFDS cannot write an empty split); the missing ones are logged."""
    files = self.resolve_sources(dl_manager)
    missing = [s for s in splits if s not in files]
    if missing:
      logging.warning("%s: no source file for split(s) %s; building only %s",
                      self._pit_id, missing, sorted(files))
    return {s: self._generate_examples(s, files[s]) for s in splits if s in files}

  def set_stats(self, key: str, value: Any):
    """Counts kept in the dataset's metadata.json (`builder.info.metadata['stats']`)."""
    self._pit_stats[key] = value
    self.info.metadata["stats"] = dict(self._pit_stats)

  def skips(self, split: str) -> records.SkipReport:
    """The bad source records of `split`. Builders never stop on a bad record: they skip it
    and record it here (kept in metadata.json as `metadata['skipped'][split]`), and
    `pit.data.builders.records` applies data.on_error when the split is read, so a
    dataset built once behaves the same under 'raise' (an error naming the first bad
    record's file, line and field) and 'skip' (counted and reported)."""
    return self._pit_skips.setdefault(split, records.SkipReport())

  def bad_record(self, split: str, err: DataError):
    """Records a bad source record of `split` as skipped (see `skips`) and updates
    `metadata['skipped']`."""
    self.skips(split).skip_or_raise(err, "skip")
    self.info.metadata["skipped"] = {s: r.as_dict() for s, r in self._pit_skips.items()}

  def finish_split(self, split: str):
    """Stores `split`'s skipped records in the metadata (also when there were none)."""
    self.skips(split)
    self.info.metadata["skipped"] = {s: r.as_dict() for s, r in self._pit_skips.items()}


def first_existing(mdir: str, names: list[str]) -> list[str]:
  """The files matching the first of the glob patterns `names` (relative to `mdir`)
  that matches any, sorted; [] when none does."""
  for n in names:
    hits = sorted(glob.glob(os.path.join(mdir, n)))
    if hits:
      return hits
  return []


# ----------------------------------------------------------------- rows + fields

def read_rows(path: str, skips: records.SkipReport | None = None
              ) -> Iterator[tuple[str, int, dict]]:
  """(where, line or row number, record) for every row of a JSONL(.gz) or parquet file; `where` is
  "file:line" (JSONL) or "file: row N" (parquet, 1-based). With `skips`, malformed JSONL
  lines are recorded there and skipped instead of raised. A truncated or corrupt file
  always raises, naming it."""
  with open(path, "rb") as fh:
    is_parquet = fh.read(4) == b"PAR1"
  if is_parquet:
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise DataError(f"{path}: reading parquet needs pyarrow (not installed); "
                      "export the split to JSONL instead") from None
    try:
      table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError kinds
      raise DataError(f"{path}: parquet file is truncated or corrupt ({type(e).__name__}: "
                      f"{e}); re-download or re-create it") from None
    for i, rec in enumerate(table.to_pylist(), start=1):
      yield f"{path}: row {i}", i, rec
  else:
    kw = dict(on_error="skip", report=skips) if skips is not None else {}
    for lineno, rec in records.read_jsonl_numbered(path, (), **kw):
      yield f"{path}:{lineno}", lineno, rec


_MISSING = object()


def field(obj: Any, key: str | int, typ, where: str, name: str, *, optional: bool = False,
          nonempty: bool = False):
  """obj[key] checked to be of `typ` (absent/None -> None when optional); errors name
  where (file:line) and the dotted field path."""
  if isinstance(key, int):
    val = obj[key] if isinstance(obj, list) and -len(obj) <= key < len(obj) else _MISSING
  else:
    val = obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING
  if val is _MISSING or val is None:
    if optional:
      return None
    raise DataError(f"{where}: field '{name}' is missing")
  ok = isinstance(val, typ) and not (typ in (int, float, (int, float)) and isinstance(val, bool))
  if not ok:
    tn = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
    raise DataError(f"{where}: field '{name}' must be {tn}, got {type(val).__name__}")
  if nonempty and isinstance(val, (str, list)) and not (val.strip() if isinstance(val, str) else val):
    raise DataError(f"{where}: field '{name}' is empty")
  return val


# ----------------------------------------------------------------- read back

def decode_record(x):
  """data_source record -> plain Python: bytes -> str, numpy -> Python,
  Sequence-of-dict (dict of lists) -> list of dicts."""
  if isinstance(x, dict):
    out = {k: decode_record(v) for k, v in x.items()}
    return out
  if isinstance(x, (bytes, np.bytes_)):
    return bytes(x).decode("utf-8")
  if isinstance(x, np.ndarray):
    if x.dtype == object or x.dtype.kind in "SO":
      return [decode_record(v) for v in x.tolist()]
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, list):
    return [decode_record(v) for v in x]
  return x


def unzip(seq: dict) -> list[dict]:
  """TFDS Sequence({...}) reads back as a dict of equal-length lists."""
  keys = list(seq)
  n = len(seq[keys[0]]) if keys else 0
  return [{k: seq[k][i] for k in keys} for i in range(n)]


def log_counts(what: str, counts: dict):
  """Logs `counts` at INFO, prefixed by `what`."""
  logging.info("%s: %s", what, counts)
