"""Where every pipeline gets its records: `config.data.source` selects

  'jsonl'      data.train_path / data.eval_path (`.jsonl` or `.jsonl.gz`): SFT
               records {"prompt","response"} or {"text"}; pairs
               {"prompt","chosen","rejected"[,"margin"]}; prompts {"prompt"}.
  'tfds'       the TFDS builders in `pit.data.builders` (data.tfds_name,
               data.tfds_config, data.data_dir, data.manual_dir). Split names
               pass through to TFDS ("train", "test"); "eval" means "test".
               data_dir defaults to $TFDS_DATA_DIR or ~/tensorflow_datasets;
               the dataset is built from manual_dir on first use.
  'synthetic'  the oracle task of `pit.data.synthetic`, seed data.seed:
               data.synthetic_train_size records for "train" (ift_examples,
               preference_pairs), data.synthetic_eval_size for eval-like splits
               (held-out eval_prompts with gold responses, eval pairs), of the task
               variant data.synthetic_task ('sort', 'sort_long': `synthetic.TASKS`).

Bad records (malformed JSON, missing/empty/non-string field, non-UTF-8 bytes)
raise `records.DataError` naming file, line and field; with
data.on_error='skip' they are skipped, counted in the `DataReport` passed in,
logged as a warning, and the pipeline puts `report.as_dict()` in its summary.
Nothing is dropped silently.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from pit.data import batching, pairs, records
from pit.data.pairs import PreferencePair

SOURCES = ("jsonl", "tfds", "synthetic")
SFT_FIELDS, TEXT_FIELDS = ("prompt", "response"), ("text",)


@dataclasses.dataclass
class DataReport:
  """Everything data loading dropped or cut: skipped records and truncations."""
  skips: records.SkipReport = dataclasses.field(default_factory=records.SkipReport)
  truncation: batching.TruncationStats = dataclasses.field(default_factory=batching.TruncationStats)

  def as_dict(self) -> dict:
    """The counts for a summary: records skipped (total, by reason, 3 examples) and
    prompts/responses truncated."""
    return {"records_skipped": self.skips.total, "skipped_by_reason": dict(self.skips.counts),
            "skip_examples": list(self.skips.examples[:3]), **self.truncation.as_dict()}

  def log(self, what: str):
    """Logs the counts: a warning when anything was skipped or truncated."""
    d = self.as_dict()
    cut = d["prompts_cut"] + d["responses_cut"]
    level = logging.WARNING if (d["records_skipped"] or cut) else logging.INFO
    logging.log(level, "%s: %d record(s) skipped %s; truncated: %d prompt(s), %d response(s)",
                what, d["records_skipped"], d["skipped_by_reason"], d["prompts_cut"],
                d["responses_cut"])


def source_name(data_cfg) -> str:
  """data.source ('' -> 'jsonl'); ValueError naming the known sources otherwise."""
  src = data_cfg.get("source", "jsonl") or "jsonl"
  if src not in SOURCES:
    raise ValueError(f"data.source: unknown source {src!r} (known: {', '.join(SOURCES)})")
  return src


def _on_error(data_cfg) -> str:
  mode = data_cfg.get("on_error", "raise")
  if mode not in ("raise", "skip"):
    raise ValueError(f"data.on_error must be 'raise' or 'skip', got {mode!r}")
  return mode


def _is_eval(split: str) -> bool:
  return split in ("eval", "test", "validation", "valid")


def jsonl_path(data_cfg, split: str) -> str:
  """data.eval_path for eval-like splits, else data.train_path; checked to exist."""
  name = "eval_path" if _is_eval(split) else "train_path"
  path = data_cfg.get(name, "")
  if not path:
    raise ValueError(f"data.{name}: no {'evaluation' if name == 'eval_path' else 'training'} "
                     f"file given (data.source='jsonl', split={split!r})")
  if not os.path.exists(path):
    raise FileNotFoundError(f"data file not found: {path}")
  return path


def _tfds_kwargs(data_cfg, split: str) -> dict:
  name = data_cfg.get("tfds_name", "")
  if not name:
    raise ValueError("data.tfds_name: no TFDS dataset given (data.source='tfds')")
  data_dir = (data_cfg.get("data_dir", "") or os.environ.get("TFDS_DATA_DIR")
              or os.path.join("~", "tensorflow_datasets"))
  return dict(name=name, config=data_cfg.get("tfds_config", "") or None,
              split="test" if split == "eval" else split,
              data_dir=os.path.expanduser(data_dir),
              manual_dir=data_cfg.get("manual_dir", "") or None,
              download=bool(data_cfg.get("download", False)))


def _synthetic_n(data_cfg, split: str) -> int:
  if _is_eval(split):
    return int(data_cfg.get("synthetic_eval_size", 200))
  return int(data_cfg.get("synthetic_train_size", 2000))


def _synthetic_sft(data_cfg, split: str) -> list[dict]:
  """Train: `ift_examples`; eval: the gold responses to the held-out `eval_prompts`."""
  from pit.data import synthetic
  n, seed = _synthetic_n(data_cfg, split), int(data_cfg.get("seed", 0))
  task = data_cfg.get("synthetic_task", "sort")
  if _is_eval(split):
    return [{"prompt": p, "response": synthetic.gold_response(p)}
            for p in synthetic.eval_prompts(n, seed, task)]
  return synthetic.ift_examples(n, seed, task)


def _check(rec: Any, fields: tuple[str, ...], where: str, on_error: str,
           skips: records.SkipReport) -> bool:
  """Same checks as the JSONL reader, for records a builder/generator returned."""
  msg = None
  if not isinstance(rec, dict):
    msg = f"{where}: expected a record dict, got {type(rec).__name__}"
  else:
    for f in fields:
      if f not in rec:
        msg = f"{where}: field '{f}' is missing"
      elif not isinstance(rec[f], str):
        msg = f"{where}: field '{f}' must be a string"
      elif not rec[f].strip():
        msg = f"{where}: field '{f}' is empty"
      if msg:
        break
  if msg is None and fields == pairs.PAIR_FIELDS:
    err = pairs.pair_error(rec, where)
    msg = str(err) if err is not None else None
  if msg is None:
    return True
  skips.skip_or_raise(records.DataError(msg), on_error)
  return False


def _log_loaded(where: str, n: int, what: str, report: DataReport):
  level = logging.WARNING if report.skips.total else logging.INFO
  logging.log(level, "%s: %d %s (%s)", where, n, what, report.skips.summary())


def _sft_fields(rec) -> tuple[str, ...]:
  return TEXT_FIELDS if isinstance(rec, dict) and "text" in rec and "prompt" not in rec \
      else SFT_FIELDS


def _detect_jsonl_fields(path: str) -> tuple[str, ...]:
  """Format of the file from its first parseable record: prompt/response or text."""
  quiet = records.SkipReport()
  for rec in records.read_jsonl(path, (), on_error="skip", report=quiet):
    return _sft_fields(rec)
  raise records.DataError(f"{path}: no records")


def load_sft_records(data_cfg, split: str = "train", *, report: DataReport | None = None,
                     path: str | None = None) -> list[dict]:
  """SFT records {"prompt","response"} (loss on the response) or {"text"}; other
  fields of a record (e.g. a builder's "turns") are kept.

  `path` (jsonl only) reads that file instead of train_path/eval_path."""
  report = report if report is not None else DataReport()
  src, on_error = source_name(data_cfg), _on_error(data_cfg)
  if src == "jsonl":
    if path is None:
      path = jsonl_path(data_cfg, split)
    elif not os.path.exists(path):
      raise FileNotFoundError(f"data file not found: {path}")
    fields = _detect_jsonl_fields(path)
    out = list(records.read_jsonl(path, fields, on_error=on_error, report=report.skips))
    where = path
  else:
    if src == "tfds":
      kw = _tfds_kwargs(data_cfg, split)
      from pit.data import builders
      raw = builders.load_sft(kw.pop("name"), **kw, on_error=on_error, report=report.skips)
      where = f"tfds:{data_cfg.tfds_name}/{split}"
    else:
      raw, where = _synthetic_sft(data_cfg, split), f"synthetic/{split}"
    out = []
    for i, rec in enumerate(raw):
      fields = _sft_fields(rec)
      if _check(rec, fields, f"{where}:{i}", on_error, report.skips):
        out.append(dict(rec))
  if not out:
    raise records.DataError(f"{where}: no usable SFT records ({report.skips.summary()})")
  _log_loaded(where, len(out), "SFT records", report)
  return out


def load_pairs(data_cfg, split: str = "train", *,
               report: DataReport | None = None) -> list[PreferencePair]:
  """Preference pairs (prompt, chosen, rejected[, margin])."""
  report = report if report is not None else DataReport()
  src, on_error = source_name(data_cfg), _on_error(data_cfg)
  if src == "jsonl":
    where = jsonl_path(data_cfg, split)
    out = pairs.read_pairs_jsonl(where, on_error=on_error, report=report.skips)
  else:
    if src == "tfds":
      kw = _tfds_kwargs(data_cfg, split)
      from pit.data import builders
      raw = builders.load_pairs(kw.pop("name"), **kw, on_error=on_error, report=report.skips)
      where = f"tfds:{data_cfg.tfds_name}/{split}"
    else:
      from pit.data import synthetic
      raw = synthetic.preference_pairs(_synthetic_n(data_cfg, split), int(data_cfg.get("seed", 0)),
                                       split="eval" if _is_eval(split) else "train",
                                       task=data_cfg.get("synthetic_task", "sort"))
      where = f"synthetic/{split}"
    out = []
    for i, p in enumerate(raw):
      rec = p.to_json() if isinstance(p, PreferencePair) else p
      if _check(rec, pairs.PAIR_FIELDS, f"{where}:{i}", on_error, report.skips):
        out.append(p if isinstance(p, PreferencePair) else PreferencePair(
            rec["prompt"], rec["chosen"], rec["rejected"], float(rec.get("margin", 0.0)),
            {k: v for k, v in rec.items() if k not in pairs.PAIR_FIELDS + ("margin",)}))
  if not out:
    raise records.DataError(f"{where}: no usable preference pairs ({report.skips.summary()})")
  _log_loaded(where, len(out), "preference pairs", report)
  return out


def load_prompts(data_cfg, split: str = "eval", *, report: DataReport | None = None) -> list[str]:
  """Prompts to sample from: the "prompt" field of each record, in order
  (tfds: the prompts of the dataset's pairs; synthetic: `eval_prompts` for
  eval-like splits, the IFT prompts for "train")."""
  report = report if report is not None else DataReport()
  src, on_error = source_name(data_cfg), _on_error(data_cfg)
  if src == "jsonl":
    where = jsonl_path(data_cfg, split)
    out = [r["prompt"] for r in
           records.read_jsonl(where, ("prompt",), on_error=on_error, report=report.skips)]
  elif src == "tfds":
    out, where = [p.prompt for p in load_pairs(data_cfg, split, report=report)], \
        f"tfds:{data_cfg.tfds_name}/{split}"
  else:
    where, out = f"synthetic/{split}", []
    for i, p in enumerate(r["prompt"] for r in _synthetic_sft(data_cfg, split)):
      if _check({"prompt": p}, ("prompt",), f"{where}:{i}", on_error, report.skips):
        out.append(p)
  if not out:
    raise records.DataError(f"{where}: no usable prompts ({report.skips.summary()})")
  _log_loaded(where, len(out), "prompts", report)
  return out
