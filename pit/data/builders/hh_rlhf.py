"""Anthropic HH-RLHF (github.com/anthropics/hh-rlhf) as preference pairs.

Each source line is {"chosen": str, "rejected": str}: two full dialogues that
share every turn but the last assistant reply. The builder splits each at the
last "\\n\\nAssistant:" into the prompt (all turns up to and including that
marker) and the final response, so `prompt + chosen == original chosen` exactly
(likewise `rejected_prompt + rejected`). Turns are kept structured
(role 'user'/'assistant', text stripped of surrounding whitespace).

Pairs are flagged, not dropped, in the dataset: `prompt_mismatch` (the two
dialogues differ before the last reply) and `identical_responses`. Their counts
per split are logged and stored in `builder.info.metadata['stats']`;
`pit.data.builders.load_pairs` drops flagged pairs (and logs the count).

manual_dir layout (as in the GitHub repo): `<config>/train.jsonl.gz` and
`<config>/test.jsonl.gz` (or uncompressed `.jsonl`), or flat files
`<config>-<split>*.jsonl[.gz]` (e.g. `harmless-base-test-part1.jsonl.gz`; several
parts of a split are read in name order). Only splits whose file is
present are built.
"""
from __future__ import annotations

import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from pit.data import records
from pit.data.builders import _base
from pit.data.records import DataError

URL = "https://raw.githubusercontent.com/anthropics/hh-rlhf/master/{config}/{split}.jsonl.gz"
CONFIGS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SPLITS = ("train", "test")
ASSISTANT = "\n\nAssistant:"
_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def _numbered(paths, skips: records.SkipReport):
  """(path, line, record) over the files of one split in order (e.g. part1, part2); bad
  lines are recorded in `skips` and left out."""
  for path in paths:
    for lineno, rec in records.read_jsonl_numbered(path, ("chosen", "rejected"), on_error="skip",
                                                   report=skips):
      yield path, lineno, rec


def split_last_turn(text: str, where: str, name: str) -> tuple[str, str]:
  """(prompt up to and including the last "\\n\\nAssistant:", final response)."""
  i = text.rfind(ASSISTANT)
  if i < 0:
    raise DataError(f"{where}: field '{name}' has no '\\n\\nAssistant:' turn")
  return text[:i + len(ASSISTANT)], text[i + len(ASSISTANT):]


def parse_turns(prompt: str) -> list[tuple[str, str]]:
  """Prompt (ending in "\\n\\nAssistant:") -> [(role, text)] of its complete
  turns. Text before the first marker, if any, becomes a 'preamble' turn."""
  body = prompt[:len(prompt) - len(ASSISTANT)] if prompt.endswith(ASSISTANT) else prompt
  parts = _TURN_RE.split(body)
  turns = [("preamble", parts[0].strip())] if parts[0].strip() else []
  for role, txt in zip(parts[1::2], parts[2::2]):
    turns.append((_ROLES[role], txt.strip()))
  return turns


class HhRlhf(_base.PitBuilder):
  """HH-RLHF pairs: shared multi-turn prompt + two final responses."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c, description=f"HH-RLHF {c}") for c in CONFIGS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put <config>/train.jsonl.gz and <config>/test.jsonl.gz from "
      "github.com/anthropics/hh-rlhf in manual_dir.")

  def _info(self):
    return self.make_info(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "prompt": _base.text(),
            "chosen": _base.text(),
            "rejected": _base.text(),
            "rejected_prompt": _base.text(),
            "turns": tfds.features.Sequence({"role": _base.text(), "text": _base.text()}),
            "prompt_mismatch": np.bool_,
            "identical_responses": np.bool_,
            "line": np.int32,
        }),
        homepage="https://github.com/anthropics/hh-rlhf",
    )

  def expected_manual_files(self):
    """<config>/train.jsonl.gz and <config>/test.jsonl.gz."""
    c = self.builder_config.name
    return [f"{c}/{s}.jsonl.gz" for s in SPLITS]

  def official_urls(self):
    """{split: [the config's split file on GitHub]} for train and test."""
    return {s: [URL.format(config=self.builder_config.name, split=s)] for s in SPLITS}

  def find_manual_files(self, mdir):
    """{split: paths}: <config>/<split>.jsonl[.gz], else the flat parts
    <config>-<split>*.jsonl[.gz] in name order ([] when absent)."""
    c = self.builder_config.name
    return {s: _base.first_existing(mdir, [f"{c}/{s}.jsonl.gz", f"{c}/{s}.jsonl",
                                           f"{c}-{s}*.jsonl.gz", f"{c}-{s}*.jsonl"])
            for s in SPLITS}

  def _split_generators(self, dl_manager):
    return self.present_splits(dl_manager, SPLITS)

  def _generate_examples(self, split, paths):
    n = mismatch = identical = 0
    for path, lineno, rec in _numbered(paths, self.skips(split)):
      where = f"{path}:{lineno}"
      try:
        p_c, r_c = split_last_turn(rec["chosen"], where, "chosen")
        p_r, r_r = split_last_turn(rec["rejected"], where, "rejected")
      except DataError as e:
        self.bad_record(split, e)
        continue
      turns = parse_turns(p_c)
      mm, same = p_c != p_r, (p_c == p_r and r_c.strip() == r_r.strip())
      n, mismatch, identical = n + 1, mismatch + mm, identical + same
      yield f"{os.path.basename(path)}:{lineno:09d}", {
          "prompt": p_c, "chosen": r_c, "rejected": r_r, "rejected_prompt": p_r,
          "turns": [{"role": r, "text": t} for r, t in turns],
          "prompt_mismatch": mm, "identical_responses": same, "line": lineno,
      }
    self.finish_split(split)
    if n == 0:
      raise DataError(f"{', '.join(paths)}: no usable records ({self.skips(split).summary()})")
    counts = {"pairs": n, "prompt_mismatch": mismatch, "identical_responses": identical,
              "source": ", ".join(os.path.basename(p) for p in paths)}
    logging.info("%s %s: %s", self._pit_id, split, counts)
    self.set_stats(split, counts)
