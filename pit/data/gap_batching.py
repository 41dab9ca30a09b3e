"""Preference pairs -> fixed-shape batches for PIT's gap reward model r_gap(x, y, y_ref).

Each pair (x, y_w, y_l) becomes the four inputs of the ordering
r(x, y_w, y_l) >= r(x, y_w, y_w) ~ r(x, y_l, y_l) >= r(x, y_l, y_w), in this
order along axis 1 (`GAP_ROWS`):

  0 'wl'  gap_input(x, y_w, ref=y_l)      2 'll'  gap_input(x, y_l, ref=y_l)
  1 'ww'  gap_input(x, y_w, ref=y_w)      3 'lw'  gap_input(x, y_l, ref=y_w)

The prompt part of a row is `pit_format.policy_prompt(prompt_format(x), ref,
template)`, its response part the scored response, made into
[prefix prompt response eos] by `pit.data.encoding.example` (the encoding and
truncation of SFT, pairs and every scorer: the response is cut to max_response_len,
then the prompt, which holds the reference, keeps its prefix and its end; the gap RM
scorer encodes (policy_prompt(x, y_ref), y) through the same function). Rows are collated by `batching.collate` in the
next-token format of `pair_batching.collate_pairs`, as [B, 4, L] with a
per-pair `weight` (0 for eval padding) and `margin`; the bucket holds the whole
token row so the model reads r_gap at the final eos (`pit.losses.full_sequences`).
Batches come from `batching.BatchIterator` (`gap_iterator`), so they resume
exactly like SFT and pair data.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from pit import pit_format
from pit.data import batching, encoding
from pit.data.pairs import PreferencePair

GAP_ROWS = ("wl", "ww", "ll", "lw")


def gap_texts(pair: PreferencePair, template: str = "plain",
              prompt_format: str = "{prompt}") -> list[tuple[str, str]]:
  """The four (prompt part, response) texts of a pair, in `GAP_ROWS` order."""
  x, w, l = prompt_format.format(prompt=pair.prompt), pair.chosen, pair.rejected
  return [(pit_format.policy_prompt(x, ref, template), y)
          for y, ref in ((w, l), (w, w), (l, l), (l, w))]


@dataclasses.dataclass
class GapExample:
  """A pair's four token rows for r_gap, in `GAP_ROWS` order (wl, ww, ll, lw), and its
  margin."""
  rows: tuple[batching.Example, ...]   # 4 examples in GAP_ROWS order
  margin: float = 0.0


def make_gap_example(pair: PreferencePair, tokenizer, *, template: str, prompt_format: str,
                     max_len: int, max_response_len: int,
                     stats: batching.TruncationStats | None = None) -> GapExample:
  """The GapExample of one pair: the four `gap_texts` encoded by
  `pit.data.encoding.example` (truncation counted in `stats`); raises ValueError on a bad
  `template` (`pit_format.template`) or max_response_len (`batching.make_example`)."""
  kw = dict(max_len=max_len, max_response_len=max_response_len, stats=stats)
  rows = tuple(encoding.example(tokenizer, p, y, **kw)
               for p, y in gap_texts(pair, template, prompt_format))
  return GapExample(rows, float(pair.margin))


def gap_encoder(tokenizer, data_cfg, template: str):
  """`encode(pair, stats) -> GapExample` with `template` and the config's `data` section
  (prompt_format, max_len, max_response_len): the one mapping of those fields, used by
  `tokenize_gap_pairs` and as the `encode` of `pit.data.sharded.encode_shared`. Raises
  ValueError on a bad template at once (`pit_format.template`)."""
  pit_format.template(template)
  kw = dict(template=template, prompt_format=str(data_cfg.prompt_format),
            max_len=int(data_cfg.max_len), max_response_len=int(data_cfg.max_response_len))
  return lambda pair, stats=None: make_gap_example(pair, tokenizer, stats=stats, **kw)


def tokenize_gap_pairs(pairs: Sequence[PreferencePair], tokenizer, data_cfg, template: str,
                       stats: batching.TruncationStats | None = None) -> list[GapExample]:
  """Every pair encoded by `gap_encoder(tokenizer, data_cfg, template)` (truncation counted
  in `stats`)."""
  encode = gap_encoder(tokenizer, data_cfg, template)
  return [encode(p, stats) for p in pairs]


def gap_length(ex: GapExample) -> int:
  """Positions a pair needs: its longest whole token row."""
  return max(len(e.tokens) for e in ex.rows)


def collate_gap(items: Sequence[GapExample], length: int, pad_id: int,
                weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
  """[B, 4, L] next-token arrays (rows in GAP_ROWS order) + margin [B], weight [B]."""
  if any(gap_length(g) > length for g in items):
    raise ValueError(f"gap example longer than the batch length {length}")
  flat = batching.collate([e for g in items for e in g.rows], length, pad_id)
  out = {k: v.reshape((len(items), len(GAP_ROWS)) + v.shape[1:]) for k, v in flat.items()}
  out["margin"] = np.asarray([g.margin for g in items], np.float32)
  out["weight"] = (np.ones(len(items), np.float32) if weights is None
                   else np.asarray(weights, np.float32))
  return out


def gap_iterator(examples: Sequence[GapExample], *, batch_size: int, buckets: Sequence[int],
                 pad_id: int, seed: int, shuffle: bool = True, process_index: int = 0,
                 process_count: int = 1, group_by_length: bool = False
                 ) -> batching.BatchIterator:
  """Infinite, resumable iterator of gap batches (state {epoch, index, seed})."""
  return batching.BatchIterator(examples, batch_size=batch_size, buckets=buckets, pad_id=pad_id,
                                seed=seed, shuffle=shuffle, process_index=process_index,
                                process_count=process_count, collate_fn=collate_gap,
                                length_fn=gap_length,
                                group_by_length=group_by_length)


def fixed_gap_batches(examples: Sequence[GapExample], *, batch_size: int, buckets: Sequence[int],
                      pad_id: int, process_index: int = 0, process_count: int = 1
                      ) -> list[tuple[dict[str, np.ndarray], list[int]]]:
  """Every pair exactly once, in fixed-shape batches for evaluation
  (`batching.fixed_batches` with the gap collate; this process's slice of each batch)."""
  return batching.fixed_batches(examples, batch_size=batch_size, buckets=buckets, pad_id=pad_id,
                                collate_fn=collate_gap, length_fn=gap_length,
                                process_index=process_index, process_count=process_count)
