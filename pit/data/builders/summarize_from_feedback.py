"""OpenAI "Learning to summarize from human feedback" comparisons
(github.com/openai/summarize-from-feedback, Stiennon et al. 2020).

Source: the 23 official `comparisons/*.json` files (JSON lines, despite the
name): {"info": {"id", "post", "title", "subreddit", "article", "site"},
"split": "train"|"valid1"|"valid2", "summaries": [{"text", "policy", "note"}] x2,
"choice": 0|1, "worker", "batch", "extra": {"confidence"}}. Reddit TL;DR
batches have post/subreddit; the CNN/DM batches (batch0_cnndm, cnndm0, cnndm2)
have article/site instead. Splits as in the HF dataset: `train` (split
"train"), `validation` ("valid1" and "valid2"; the original value is kept in
the `split` feature). Missing optional fields read back as "" (strings) or -1
(confidence).

manual_dir: `comparisons/<file>` or `<file>` for the file names in
`COMPARISON_FILES`; absent files are skipped with a warning and listed in
`info.metadata['stats']['missing_files']`.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from pit.data import records
from pit.data.builders import _base
from pit.data.builders._base import SOURCE_SKIPS
from pit.data.records import DataError

BASE_URL = "https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/"
COMPARISON_FILES = tuple(
    [f"batch{i}.json" for i in (3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 6, 7, 8, 9)]
    + ["batch0_cnndm.json", "cnndm0.json", "cnndm2.json", "edit_b2_eval_test.json"])
SPLIT_OF = {"train": "train", "valid1": "validation", "valid2": "validation"}


def convert(rec: dict, where: str) -> dict:
  """One source record -> feature dict; errors name file:line and field."""
  f = _base.field
  info = f(rec, "info", dict, where, "info")
  split = f(rec, "split", str, where, "split")
  if split not in SPLIT_OF:
    raise DataError(f"{where}: field 'split' is {split!r}, expected one of {sorted(SPLIT_OF)}")
  summaries = f(rec, "summaries", list, where, "summaries")
  if len(summaries) != 2:
    raise DataError(f"{where}: field 'summaries' must hold 2 summaries, got {len(summaries)}")
  summ = []
  for i, s in enumerate(summaries):
    f(summaries, i, dict, where, f"summaries[{i}]")
    summ.append({"text": f(s, "text", str, where, f"summaries[{i}].text"),
                 "policy": f(s, "policy", str, where, f"summaries[{i}].policy", optional=True) or "",
                 "note": f(s, "note", str, where, f"summaries[{i}].note", optional=True) or ""})
  choice = f(rec, "choice", int, where, "choice")
  if choice not in (0, 1):
    raise DataError(f"{where}: field 'choice' must be 0 or 1, got {choice}")
  post = f(info, "post", str, where, "info.post", optional=True) if "post" in info else None
  article = f(info, "article", str, where, "info.article", optional=True) if "article" in info else None
  if not post and not article:
    raise DataError(f"{where}: field 'info.post' is missing (and no 'info.article')")
  extra = f(rec, "extra", dict, where, "extra", optional=True) if "extra" in rec else None
  conf = f(extra, "confidence", int, where, "extra.confidence", optional=True) \
      if extra and "confidence" in extra else None
  opt = lambda k: (f(info, k, str, where, f"info.{k}", optional=True) if k in info else None) or ""
  return {
      "id": opt("id"), "post": post or "", "title": f(info, "title", str, where, "info.title"),
      "subreddit": opt("subreddit"), "article": article or "", "site": opt("site"),
      "summaries": summ, "choice": choice,
      "worker": f(rec, "worker", str, where, "worker"),
      "batch": f(rec, "batch", str, where, "batch", optional=True) or "",
      "split": split, "confidence": -1 if conf is None else conf,
  }


class SummarizeFromFeedback(_base.PitBuilder):
  """TL;DR (and CNN/DM) summary comparisons with the labeller's choice."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name="comparisons", description="All 23 official comparison files (as the HF dataset).")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the comparisons/*.json files in manual_dir/comparisons/."

  def _info(self):
    t = _base.text
    return self.make_info(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": t(), "post": t(), "title": t(), "subreddit": t(), "article": t(), "site": t(),
            "summaries": tfds.features.Sequence({"text": t(), "policy": t(), "note": t()}),
            "choice": np.int32, "worker": t(), "batch": t(), "split": t(),
            "confidence": np.int32, "file": t(), "line": np.int32,
        }),
        homepage="https://github.com/openai/summarize-from-feedback",
    )

  def expected_manual_files(self):
    """comparisons/<file> for every file of COMPARISON_FILES."""
    return [f"comparisons/{n}" for n in COMPARISON_FILES]

  def official_urls(self):
    """{"comparisons": [URL of each file of COMPARISON_FILES]}."""
    return {"comparisons": [BASE_URL + n for n in COMPARISON_FILES]}

  def find_manual_files(self, mdir):
    """{"comparisons": paths} of the COMPARISON_FILES found as comparisons/<file> or
    <file> in `mdir`, in COMPARISON_FILES order."""
    found = []
    for n in COMPARISON_FILES:
      found += _base.first_existing(mdir, [f"comparisons/{n}", n])
    return {"comparisons": found}

  def _split_generators(self, dl_manager):
    files = self.resolve_sources(dl_manager)["comparisons"]
    names = {os.path.basename(p) for p in files}
    missing = [n for n in COMPARISON_FILES if n not in names] if self._pit_manual_dir else []
    if missing:
      logging.warning("%s: %d official file(s) not in manual_dir: %s", self._pit_id,
                      len(missing), missing)
    # One validating pass to learn which splits have data (TFDS cannot write an
    # empty split); the generators read the files again.
    # A bad record has no split of its own: it is recorded under the source's name
    # ("comparisons") and reported with every split read.
    counts = {"train": 0, "validation": 0}
    skips = self.skips(SOURCE_SKIPS)
    for path in files:
      for where, _, rec in _base.read_rows(path, skips):
        try:
          counts[SPLIT_OF[convert(rec, where)["split"]]] += 1
        except DataError as e:
          self.bad_record(SOURCE_SKIPS, e)
    self.finish_split(SOURCE_SKIPS)
    self.set_stats("pairs", counts)
    self.set_stats("missing_files", missing)
    if not any(counts.values()):
      raise DataError(f"{self._pit_id}: no usable comparisons in {len(files)} file(s) "
                      f"({skips.summary()})")
    return {s: self._generate_examples(s, files) for s, n in counts.items() if n}

  def _generate_examples(self, split, files):
    key = 0
    for path in files:
      for where, line, rec in _base.read_rows(path, records.SkipReport()):  # counted above
        try:
          ex = convert(rec, where)
        except DataError:   # recorded by the counting pass
          continue
        key += 1
        if SPLIT_OF[ex["split"]] == split:
          ex.update(file=os.path.basename(path), line=line)
          yield key, ex
