"""TFDS builders for the seed datasets (array_record; no TensorFlow needed).

  BUILDERS                      name -> builder class
  build(name, ...)              download_and_prepare (no-op when already built)
  data_source(name, ...)        `tfds.data_source` of one split (builds if needed)
  records(name, ...)            that split decoded to plain Python dicts
  load_pairs(name, ...)         list[PreferencePair] (hh_rlhf, summarize_from_feedback,
                                ultrafeedback_binarized, synthetic)
  load_sft(name, ...)           list[{"prompt", "response"}] (oasst1 ift, hh_rlhf
                                chosen, ultrafeedback_binarized chosen)

Sources: `manual_dir` with local copies of the official files (names in each
builder's docstring and `builder.expected_manual_files()`), or `download=True`
for the official URLs; neither -> `SourceMissingError` naming what is missing.
A built dataset lives in `<data_dir>/<name>/<config>/1.0.0`; delete it to
rebuild from other sources (e.g. after adding a split's file).

Prompts are rendered in the plain HH template (`pit.data.tokenizer.
render_plain_chat`: "\\n\\nHuman: ...\\n\\nAssistant:"); responses from sources
other than HH-RLHF get one leading space so `prompt + response` reads like HH.
The structured turns are kept in `meta["turns"]` (pairs) / "turns" (SFT) as
[(role, text)] for re-rendering with a model's own chat template.
"""
from __future__ import annotations

import importlib
import logging
import os
import shutil

import tensorflow_datasets as tfds

from pit.data import tokenizer as tokenizer_lib
from pit.data.builders import _base
from pit.data.builders._base import SourceMissingError, decode_record, unzip  # noqa: F401
from pit.data.builders.hh_rlhf import HhRlhf
from pit.data.builders.oasst1 import Oasst1
from pit.data.builders.summarize_from_feedback import SummarizeFromFeedback
from pit.data.builders.ultrafeedback_binarized import UltrafeedbackBinarized
from pit.data.pairs import IDENTICAL, PreferencePair
from pit.data.records import DataError, SkipReport

BUILDERS: dict[str, type] = {
    "hh_rlhf": HhRlhf,
    "summarize_from_feedback": SummarizeFromFeedback,
    "oasst1": Oasst1,
    "ultrafeedback_binarized": UltrafeedbackBinarized,
}

try:  # the synthetic oracle task's builder, written separately
  _synthetic = importlib.import_module("pit.data.builders.synthetic")
except ModuleNotFoundError as e:
  if e.name != "pit.data.builders.synthetic":
    raise
  _synthetic = None
if _synthetic is not None:
  for _cls in vars(_synthetic).values():
    if (isinstance(_cls, type) and issubclass(_cls, tfds.core.GeneratorBasedBuilder)
        and _cls.__module__ == _synthetic.__name__ and getattr(_cls, "name", None)):
      BUILDERS[_cls.name] = _cls


def _cls(name: str) -> type:
  if name not in BUILDERS:
    raise KeyError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)}")
  return BUILDERS[name]


def make_builder(name: str, *, config: str | None = None, data_dir: str,
                 manual_dir: str | None = None, download: bool = False):
  """The builder `name` (a key of BUILDERS) writing array_record under `data_dir`; a
  PitBuilder also gets `manual_dir` and whether it may download. Nothing is built yet.
  Raises KeyError for an unknown name."""
  cls = _cls(name)
  kwargs = dict(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
  if issubclass(cls, _base.PitBuilder):
    kwargs.update(manual_dir=os.fspath(manual_dir) if manual_dir else None, allow_download=download)
  return cls(**kwargs)


def build(name: str, *, config: str | None = None, data_dir: str, manual_dir: str | None = None,
          download: bool = False):
  """download_and_prepare; returns the builder (its `info.metadata['stats']` holds counts).
  A dataset built from a manual_dir whose files have changed since (their content hash,
  `PitBuilder.manual_digest`) is built again, with a warning, rather than reused stale."""
  b = make_builder(name, config=config, data_dir=data_dir, manual_dir=manual_dir, download=download)
  built = os.path.exists(os.path.join(b.data_dir, "dataset_info.json"))
  if built and manual_dir and isinstance(b, _base.PitBuilder) and os.path.isdir(manual_dir):
    recorded = (getattr(b.info, "metadata", None) or {}).get("source_digest")
    if recorded != b.manual_digest(os.fspath(manual_dir)):
      logging.warning("%s: the source files in %s changed since the dataset was built in %s; "
                      "building it again", name, manual_dir, b.data_dir)
      shutil.rmtree(b.data_dir)
      b = make_builder(name, config=config, data_dir=data_dir, manual_dir=manual_dir,
                       download=download)
  dl_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir else None)
  b.download_and_prepare(download_config=dl_config)
  return b


def data_source(name: str, *, config: str | None = None, split: str, data_dir: str,
                manual_dir: str | None = None, download: bool = False):
  """`tfds.data_source` of one split, building the dataset first if needed."""
  b = build(name, config=config, data_dir=data_dir, manual_dir=manual_dir, download=download)
  return _split_source(b, name, split, data_dir)


def _split_source(b, name: str, split: str, data_dir: str):
  if split not in b.info.splits:
    raise KeyError(
        f"{name}/{b.builder_config.name if b.builder_config else ''}: split {split!r} is not in the "
        f"built dataset (has {sorted(b.info.splits)}) at {b.data_dir}; its source file was "
        f"missing when it was built: delete that folder and build again with the file present")
  full = f"{name}/{b.builder_config.name}" if b.builder_config else name
  return tfds.data_source(full, split=split, data_dir=os.fspath(data_dir))


def skipped_records(b, split: str) -> SkipReport:
  """The bad source records a build skipped for `split` (`PitBuilder.skips`, kept in
  metadata.json), including those that belong to no one split."""
  out = SkipReport()
  meta = getattr(b.info, "metadata", None) or {}
  by_split = meta.get("skipped", {}) or {}
  for key in (split, _base.SOURCE_SKIPS):
    if by_split.get(key):
      out.merge(by_split[key])
  return out


def records(name: str, *, config: str | None = None, split: str, data_dir: str,
            manual_dir: str | None = None, download: bool = False, on_error: str = "raise",
            report: SkipReport | None = None) -> list[dict]:
  """Every record of a split as plain Python (strings decoded, sequences as lists of dicts).

  The bad source records the build skipped (`PitBuilder.skips`) are handled by `on_error`:
  'raise' -> DataError naming the first one's file, line and field; 'skip' -> counted in
  `report` (a `pit.data.records.SkipReport`) and logged."""
  b = build(name, config=config, data_dir=data_dir, manual_dir=manual_dir, download=download)
  ds = _split_source(b, name, split, data_dir)
  skipped = skipped_records(b, split)
  if skipped.total:
    if on_error == "raise":
      first = skipped.examples[0] if skipped.examples else "a bad record"
      raise DataError(f"{first} [{skipped.total} bad record(s) in {name} {split}; "
                      "data.on_error='skip' skips and counts them]")
    if report is not None:
      report.merge(skipped)
    logging.warning("%s %s: skipped %d bad source record(s): %s", name, split, skipped.total,
                    dict(skipped.counts))
  out = []
  n = len(ds)
  for lo in range(0, n, 1024):
    idx = list(range(lo, min(n, lo + 1024)))
    batch = ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[i] for i in idx]
    out.extend(decode_record(r) for r in batch)
  return out


def _turns(seq: dict) -> list[tuple[str, str]]:
  return [(t["role"], t["text"]) for t in unzip(seq)]


def _space(text: str) -> str:
  return text if text[:1].isspace() else " " + text


def summarize_prompt(rec: dict) -> str:
  """TL;DR prompt (the format TRL's tldr-preference uses) from a
  summarize_from_feedback record; CNN/DM records use TITLE/ARTICLE."""
  if rec["subreddit"] or not rec["article"]:
    return (f"SUBREDDIT: r/{rec['subreddit']}\n\nTITLE: {rec['title']}\n\n"
            f"POST: {rec['post']}\n\nTL;DR:")
  return f"TITLE: {rec['title']}\n\nARTICLE: {rec['article']}\n\nTL;DR:"


MISMATCH = "the dialogues of chosen and rejected differ before the last reply"


def load_pairs(name: str, *, config: str | None = None, split: str, data_dir: str,
               manual_dir: str | None = None, download: bool = False, on_error: str = "raise",
               report: SkipReport | None = None) -> list[PreferencePair]:
  """Preference pairs of one split. Pairs with no preference to learn are dropped and
  counted in `report` with their reason, whatever `on_error` says (a property of the
  dataset, not a malformed record): chosen and rejected identical (hh_rlhf's
  identical_responses flag, two identical summaries, ultrafeedback ties of one text) and
  hh_rlhf's prompt_mismatch / ultrafeedback's context_mismatch. summarize_from_feedback's
  chosen is the `choice` summary; ultrafeedback's margin is score_chosen - score_rejected.
  Bad source records follow `on_error` (see `records`)."""
  is_synth = (_synthetic is not None and name in BUILDERS
              and BUILDERS[name].__module__ == _synthetic.__name__)
  if name not in ("hh_rlhf", "summarize_from_feedback", "ultrafeedback_binarized") and not is_synth:
    raise KeyError(f"load_pairs: {name!r} has no preference pairs (use load_sft for oasst1)")
  report = report if report is not None else SkipReport()
  kw = dict(config=config, split=split, data_dir=data_dir, manual_dir=manual_dir, download=download)
  recs = records(name, **kw, on_error=on_error, report=report)
  dropped = SkipReport()

  def drop(i: int, reason: str):
    r = recs[i]
    at = (f"{r['file']}:{r['line']}" if "file" in r and "line" in r else
          f"source line {r['line']}" if "line" in r else
          f"source row {r['row']}" if "row" in r else f"record {i}")
    dropped.add(f"{name}/{config or 'default'} {split} {at}: {reason}", reason)

  out: list[PreferencePair] = []
  for i, r in enumerate(recs):
    if name == "hh_rlhf":
      if r["prompt_mismatch"]:
        drop(i, MISMATCH)
        continue
      pair = PreferencePair(r["prompt"], r["chosen"], r["rejected"], 0.0,
                            {"turns": _turns(r["turns"]), "line": r["line"]})
    elif name == "summarize_from_feedback":
      c = r["choice"]
      summaries = unzip(r["summaries"])
      meta = {k: r[k] for k in ("id", "subreddit", "title", "post", "article", "site", "worker",
                                "batch", "split", "confidence")}
      meta["policies"] = [s["policy"] for s in summaries]
      meta["choice"] = c
      pair = PreferencePair(summarize_prompt(r), summaries[c]["text"], summaries[1 - c]["text"],
                            0.0, meta)
    elif name == "ultrafeedback_binarized":
      if r["context_mismatch"]:
        drop(i, MISMATCH)
        continue
      turns = _turns(r["context"])
      pair = PreferencePair(
          tokenizer_lib.render_plain_chat(turns), _space(r["chosen"]), _space(r["rejected"]),
          float(r["score_chosen"] - r["score_rejected"]),
          {"turns": turns, "prompt_id": r["prompt_id"], "score_chosen": r["score_chosen"],
           "score_rejected": r["score_rejected"]})
    else:
      pair = _synthetic.to_pair(r)
    if pair.chosen.strip() == pair.rejected.strip():
      drop(i, IDENTICAL)
      continue
    out.append(pair)
  if dropped.total:
    logging.warning("%s/%s %s: dropped %s of %d pairs", name, config or "default", split,
                    dict(dropped.counts), len(recs))
    report.merge(dropped)
  return out


def load_sft(name: str, *, config: str | None = None, split: str, data_dir: str,
             manual_dir: str | None = None, download: bool = False, on_error: str = "raise",
             report: SkipReport | None = None) -> list[dict]:
  """{"prompt", "response", "turns"} examples: oasst1 (config 'ift'), hh_rlhf
  chosen, ultrafeedback_binarized chosen. Bad source records follow `on_error`
  (see `records`)."""
  if name not in ("oasst1", "hh_rlhf", "ultrafeedback_binarized"):
    raise KeyError(f"load_sft: {name!r} has no SFT view (oasst1, hh_rlhf, ultrafeedback_binarized)")
  kw = dict(split=split, data_dir=data_dir, manual_dir=manual_dir, download=download,
            on_error=on_error, report=report)
  if name == "oasst1":
    if (config or "ift") != "ift":
      raise KeyError("load_sft: oasst1 SFT data is config 'ift'")
    return [{"prompt": tokenizer_lib.render_plain_chat([("user", r["prompt"])]),
             "response": _space(r["response"]), "turns": [("user", r["prompt"])]}
            for r in records(name, config="ift", **kw)]
  if name == "hh_rlhf":
    return [{"prompt": r["prompt"], "response": r["chosen"], "turns": _turns(r["turns"])}
            for r in records(name, config=config, **kw)]
  out = []
  for r in records(name, config=config, **kw):  # ultrafeedback_binarized
    turns = _turns(r["context"])
    out.append({"prompt": tokenizer_lib.render_plain_chat(turns),
                "response": _space(r["chosen"]), "turns": turns})
  return out
