"""OpenAssistant Conversations (OASST1) seed data for Self-Rewarding LMs.

Message trees are rebuilt from `message_id`/`parent_id` (messages files) or
read from the nested `replies` of the official trees file. Messages with
`deleted: true` or `review_result: false` are left out (counted). Two configs:

  ift  one example per English (`lang == "en"` on the prompter's root message)
       first-turn prompt and each of its rank-0 assistant replies:
       {prompt, response, message_tree_id, prompt_id, response_id, lang}.
  eft  one example per English root prompt with >= 2 ranked (rank not null)
       assistant replies, sorted by rank (0 = best):
       {prompt, responses: [{text, rank, message_id}], message_tree_id, lang}.

manual_dir, either of:
  * `2023-04-12_oasst_ready.trees.jsonl.gz` (official trees export; one tree per
    line: {"message_tree_id", "tree_state", "prompt": {message, "replies": [...]}})
    -> split `train` (the export has no split);
  * `train.jsonl[.gz]` / `validation.jsonl[.gz]`, or `train-*.parquet` /
    `validation-*.parquet` (also under `data/`): the HF dataset's flat messages
    (message_id, parent_id, text, role, lang, rank, message_tree_id, ...) ->
    splits `train` / `validation`. These win over the trees file when both exist.
Download: the official trees file from the HF dataset repo.
Counts (trees, messages, filtered, orphans, examples) are in
`info.metadata['stats']`.
"""
from __future__ import annotations

import logging

import numpy as np
import tensorflow_datasets as tfds

from pit.data.builders import _base
from pit.data.records import DataError

TREES_FILE = "2023-04-12_oasst_ready.trees.jsonl.gz"
URL = f"https://huggingface.co/datasets/OpenAssistant/oasst1/resolve/main/{TREES_FILE}"
MSG_SPLITS = ("train", "validation")


def _message(m: dict, where: str, name: str) -> dict:
  f = _base.field
  rank = f(m, "rank", int, where, f"{name}.rank", optional=True) if "rank" in m else None
  return {
      "message_id": f(m, "message_id", str, where, f"{name}.message_id", nonempty=True),
      "parent_id": f(m, "parent_id", str, where, f"{name}.parent_id", optional=True)
      if "parent_id" in m else None,
      "text": f(m, "text", str, where, f"{name}.text"),
      "role": f(m, "role", str, where, f"{name}.role"),
      "lang": (f(m, "lang", str, where, f"{name}.lang", optional=True) if "lang" in m else None) or "",
      "rank": rank,
      "dropped": bool(m.get("deleted") is True or m.get("review_result") is False),
      "replies": [],
  }


def _tree_from_nested(node: dict, where: str, name: str, counts: dict) -> dict:
  if not isinstance(node, dict):
    raise DataError(f"{where}: field '{name}' must be an object, got {type(node).__name__}")
  msg = _message(node, where, name)
  counts["messages"] += 1
  replies = _base.field(node, "replies", list, where, f"{name}.replies", optional=True) \
      if "replies" in node else None
  for i, r in enumerate(replies or []):
    msg["replies"].append(_tree_from_nested(r, where, f"{name}.replies[{i}]", counts))
  return msg


def trees_from_nested_file(path: str, counts: dict, skips) -> list[tuple[str, dict]]:
  """Trees of the nested file; a line with a bad message anywhere is skipped whole (recorded
  in `skips`, a `records.SkipReport`)."""
  out = []
  for where, _, rec in _base.read_rows(path, skips):
    try:
      tid = _base.field(rec, "message_tree_id", str, where, "message_tree_id")
      tree_counts = {"messages": 0}
      root = _tree_from_nested(_base.field(rec, "prompt", dict, where, "prompt"), where, "prompt",
                               tree_counts)
    except DataError as e:
      skips.skip_or_raise(e, "skip")
      continue
    counts["messages"] += tree_counts["messages"]
    out.append((tid, root))
  return out


def trees_from_messages(paths: list[str], counts: dict, skips) -> list[tuple[str, dict]]:
  """Rebuild trees from flat messages linked by parent_id (in file order); a bad message is
  skipped (recorded in `skips`) and its replies become orphans (counted)."""
  by_id, order, where_of = {}, [], {}
  for path in paths:
    for where, _, rec in _base.read_rows(path, skips):
      try:
        m = _message(rec, where, "message")
        m["tree_id"] = (_base.field(rec, "message_tree_id", str, where, "message_tree_id",
                                    optional=True) if "message_tree_id" in rec else None)
        if m["message_id"] in by_id:
          raise DataError(f"{where}: field 'message_id' {m['message_id']!r} repeats "
                          f"{where_of[m['message_id']]}")
      except DataError as e:
        skips.skip_or_raise(e, "skip")
        continue
      by_id[m["message_id"]], where_of[m["message_id"]] = m, where
      order.append(m)
      counts["messages"] += 1
  roots = []
  for m in order:
    if m["parent_id"] is None:
      roots.append((m["tree_id"] or m["message_id"], m))
    elif m["parent_id"] in by_id:
      by_id[m["parent_id"]]["replies"].append(m)
    else:
      counts["orphans"] += 1
  return roots


def ift_examples(trees, counts):
  """Yields one IFT example per rank-0 assistant reply (not dropped) to an English root
  prompt (not dropped) of `trees`; counts them in counts["examples"]."""
  for tid, root in trees:
    if root["dropped"] or root["role"] != "prompter" or root["lang"] != "en":
      continue
    for r in root["replies"]:
      if r["role"] == "assistant" and not r["dropped"] and r["rank"] == 0:
        counts["examples"] += 1
        yield {"prompt": root["text"], "response": r["text"], "message_tree_id": tid,
               "prompt_id": root["message_id"], "response_id": r["message_id"],
               "lang": root["lang"]}


def eft_examples(trees, counts):
  """Yields one EFT example per English root prompt (not dropped) with at least two
  ranked, non-dropped assistant replies, sorted by rank (0 best); counts them in
  counts["examples"]."""
  for tid, root in trees:
    if root["dropped"] or root["role"] != "prompter" or root["lang"] != "en":
      continue
    ranked = [r for r in root["replies"]
              if r["role"] == "assistant" and not r["dropped"] and r["rank"] is not None]
    if len(ranked) < 2:
      continue
    ranked.sort(key=lambda r: r["rank"])
    counts["examples"] += 1
    yield {"prompt": root["text"], "message_tree_id": tid, "prompt_id": root["message_id"],
           "lang": root["lang"],
           "responses": [{"text": r["text"], "rank": r["rank"], "message_id": r["message_id"]}
                         for r in ranked]}


def _count_dropped(trees) -> int:
  n, stack = 0, [root for _, root in trees]
  while stack:
    m = stack.pop()
    n += m["dropped"]
    stack.extend(m["replies"])
  return n


class Oasst1(_base.PitBuilder):
  """OASST1 first-turn English IFT pairs (rank 0) and ranked EFT sets."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="ift", description="root prompt -> rank-0 assistant reply"),
      tfds.core.BuilderConfig(name="eft", description="root prompt -> >=2 ranked replies"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {TREES_FILE} (or train/validation messages JSONL) in manual_dir."

  def _info(self):
    t = _base.text
    common = {"prompt": t(), "message_tree_id": t(), "prompt_id": t(), "lang": t()}
    if self.builder_config.name == "ift":
      feats = dict(common, response=t(), response_id=t())
    else:
      feats = dict(common, responses=tfds.features.Sequence(
          {"text": t(), "rank": np.int32, "message_id": t()}))
    return self.make_info(
        description=__doc__, features=tfds.features.FeaturesDict(feats),
        homepage="https://huggingface.co/datasets/OpenAssistant/oasst1")

  def expected_manual_files(self):
    """The trees export, or the HF messages files (names for error messages)."""
    return [TREES_FILE, "or train.jsonl[.gz] / validation.jsonl[.gz] (HF messages)"]

  def official_urls(self):
    """{"trees": [the official trees export on the HF hub]}."""
    return {"trees": [URL]}

  def find_manual_files(self, mdir):
    """{split: paths} of HF messages files (train / validation) when any exist, else
    {"trees": [the trees export]} ([] when absent)."""
    msgs = {s: _base.first_existing(mdir, [f"{s}.jsonl", f"{s}.jsonl.gz", f"{s}-*.parquet",
                                           f"data/{s}-*.parquet"]) for s in MSG_SPLITS}
    if any(msgs.values()):
      return msgs
    return {"trees": _base.first_existing(mdir, [TREES_FILE, "*oasst_ready.trees.jsonl*"])}

  def _split_generators(self, dl_manager):
    files = self.resolve_sources(dl_manager)
    make = ift_examples if self.builder_config.name == "ift" else eft_examples
    out = {}
    for group, paths in files.items():
      counts = {"messages": 0, "orphans": 0, "examples": 0}
      split = "train" if group == "trees" else group
      skips = self.skips(split)
      trees = (trees_from_nested_file(paths[0], counts, skips) if group == "trees"
               else trees_from_messages(paths, counts, skips))
      self.finish_split(split)
      examples = list(make(trees, counts))
      counts.update(trees=len(trees), dropped_messages=_count_dropped(trees))
      logging.info("%s %s: %s", self._pit_id, split, counts)
      self.set_stats(split, counts)
      if not examples:
        logging.warning("%s: split %s has no examples; not built", self._pit_id, split)
        continue
      out[split] = self._generate_examples(examples)
    if not out:
      raise DataError(f"{self._pit_id}: no examples in {files}")
    return out

  def _generate_examples(self, examples):
    for i, ex in enumerate(examples):
      yield i, ex
