"""HuggingFaceH4/ultrafeedback_binarized preference splits (`train_prefs`,
`test_prefs`).

Source rows: {"prompt": str, "prompt_id": str, "chosen": [{"role", "content"}],
"rejected": [{"role", "content"}], "messages": [...], "score_chosen": float,
"score_rejected": float}. The last message of `chosen`/`rejected` must be the
assistant reply; the messages before it are the `context` (structured turns).
Rows whose chosen and rejected contexts differ are flagged `context_mismatch`
(counted in `info.metadata['stats']`, dropped by `load_pairs`).

Official files are parquet (read when pyarrow is importable). manual_dir
accepts, per split: `<split>.jsonl` / `<split>.jsonl.gz` (one row per line,
same fields, e.g. `datasets`' `to_json`), or `<split>-*.parquet` /
`data/<split>-*.parquet` (the HF repo layout).
"""
from __future__ import annotations

import logging

import numpy as np
import tensorflow_datasets as tfds

from pit.data.builders import _base
from pit.data.records import DataError

BASE_URL = "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized/resolve/main/data/"
SPLITS = ("train_prefs", "test_prefs")


def _messages(rec, key, where):
  msgs = _base.field(rec, key, list, where, key, nonempty=True)
  out = []
  for i, m in enumerate(msgs):
    _base.field(msgs, i, dict, where, f"{key}[{i}]")
    out.append((_base.field(m, "role", str, where, f"{key}[{i}].role"),
                _base.field(m, "content", str, where, f"{key}[{i}].content")))
  if out[-1][0] != "assistant":
    raise DataError(f"{where}: field '{key}[{len(out) - 1}].role' must be 'assistant' "
                    f"(the reply), got {out[-1][0]!r}")
  return out


def convert(rec: dict, where: str) -> dict:
  """One source row -> feature dict (context turns, final chosen / rejected replies,
  scores, context_mismatch). Raises DataError naming `where` and the field on a missing
  or mistyped field, an empty message list, or a last message that is not the assistant's."""
  f = _base.field
  chosen, rejected = _messages(rec, "chosen", where), _messages(rec, "rejected", where)
  sc = f(rec, "score_chosen", (int, float), where, "score_chosen")
  sr = f(rec, "score_rejected", (int, float), where, "score_rejected")
  prompt = f(rec, "prompt", str, where, "prompt")
  context = chosen[:-1] or [("user", prompt)]  # a reply-only list: the prompt is the context
  return {
      "prompt": prompt,
      "prompt_id": f(rec, "prompt_id", str, where, "prompt_id", optional=True) or "",
      "context": [{"role": r, "text": t} for r, t in context],
      "chosen": chosen[-1][1], "rejected": rejected[-1][1],
      "score_chosen": float(sc), "score_rejected": float(sr),
      "context_mismatch": chosen[:-1] != rejected[:-1],
  }


class UltrafeedbackBinarized(_base.PitBuilder):
  """UltraFeedback binarized preference pairs with GPT-4 scores."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put train_prefs.jsonl / test_prefs.jsonl (or the parquet files) in manual_dir."

  def _info(self):
    t = _base.text
    return self.make_info(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "prompt": t(), "prompt_id": t(),
            "context": tfds.features.Sequence({"role": t(), "text": t()}),
            "chosen": t(), "rejected": t(),
            "score_chosen": np.float64, "score_rejected": np.float64,
            "context_mismatch": np.bool_, "row": np.int32,
        }),
        homepage="https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized",
    )

  def expected_manual_files(self):
    """<split>.jsonl (or .jsonl.gz / parquet) for train_prefs and test_prefs."""
    return [f"{s}.jsonl (or {s}.jsonl.gz, {s}-*.parquet, data/{s}-*.parquet)" for s in SPLITS]

  def official_urls(self):
    """{split: [its parquet file on the HF hub]}."""
    return {s: [f"{BASE_URL}{s}-00000-of-00001.parquet"] for s in SPLITS}

  def find_manual_files(self, mdir):
    """{split: paths}: <split>.jsonl, <split>.jsonl.gz, <split>-*.parquet or
    data/<split>-*.parquet, the first pattern that matches ([] when none)."""
    return {s: _base.first_existing(mdir, [f"{s}.jsonl", f"{s}.jsonl.gz", f"{s}-*.parquet",
                                           f"data/{s}-*.parquet"]) for s in SPLITS}

  def _split_generators(self, dl_manager):
    return self.present_splits(dl_manager, SPLITS)

  def _generate_examples(self, split, paths):
    n = mismatch = key = 0
    for path in paths:
      for where, row, rec in _base.read_rows(path, self.skips(split)):
        try:
          ex = convert(rec, where)
        except DataError as e:
          self.bad_record(split, e)
          continue
        n, mismatch, key = n + 1, mismatch + ex["context_mismatch"], key + 1
        ex["row"] = row
        yield key, ex
    self.finish_split(split)
    if n == 0:
      raise DataError(f"{paths}: no usable records ({self.skips(split).summary()})")
    counts = {"pairs": n, "context_mismatch": mismatch}
    logging.info("%s %s: %s", self._pit_id, split, counts)
    self.set_stats(split, counts)
