"""Preference pairs -> fixed-shape bucketed pair batches.

Each pair becomes two `batching.Example`s, [prefix prompt chosen eos] and
[prefix prompt rejected eos], made by `pit.data.encoding.example` (the same
encoding and truncation as SFT and every scorer). `collate_pairs` stacks them as [B, 2, L]
(index 0 chosen, 1 rejected) in the next-token format of `batching.collate`,
with a per-pair `margin` and `weight` (1 for real pairs, 0 for eval padding)
and, when the pairs carry them, precomputed reference log-probs `ref_logps`.
The bucket holds the *whole* token row (one slot more than the next-token
inputs) so a reward model can read its score at the final eos token
(`pit.losses.full_sequences`). Batches come from `batching.BatchIterator`
(`pair_iterator`), so pair data resumes exactly like SFT data.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from pit.data import batching, encoding
from pit.data.pairs import PreferencePair


@dataclasses.dataclass
class PairExample:
  """A pair's two token rows (chosen, rejected), its margin and, once precomputed, the
  reference model's summed log-probs of each response (nats)."""
  chosen: batching.Example
  rejected: batching.Example
  margin: float = 0.0
  ref_logps: tuple[float, float] | None = None   # reference sum log-probs (chosen, rejected)


def make_pair_example(pair: PreferencePair, tokenizer, *, prompt_format: str, max_len: int,
                      max_response_len: int,
                      stats: batching.TruncationStats | None = None) -> PairExample:
  """The PairExample of one pair: `prompt_format` applied to the prompt, then
  [prefix prompt chosen eos] and [prefix prompt rejected eos] by `pit.data.encoding.example`
  (truncation counted in `stats`; no reference log-probs yet)."""
  prompt = prompt_format.format(prompt=pair.prompt)
  kw = dict(max_len=max_len, max_response_len=max_response_len, stats=stats)
  return PairExample(encoding.example(tokenizer, prompt, pair.chosen, **kw),
                     encoding.example(tokenizer, prompt, pair.rejected, **kw),
                     float(pair.margin))


def pair_encoder(tokenizer, data_cfg):
  """`encode(pair, stats) -> PairExample` with the config's `data` section (prompt_format,
  max_len, max_response_len): the one mapping of those fields, used by `tokenize_pairs` and
  as the `encode` of `pit.data.sharded.encode_shared`."""
  kw = dict(prompt_format=str(data_cfg.prompt_format), max_len=int(data_cfg.max_len),
            max_response_len=int(data_cfg.max_response_len))
  return lambda pair, stats=None: make_pair_example(pair, tokenizer, stats=stats, **kw)


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer, data_cfg,
                   stats: batching.TruncationStats | None = None) -> list[PairExample]:
  """Every pair encoded by `pair_encoder(tokenizer, data_cfg)` (truncation counted in
  `stats`)."""
  encode = pair_encoder(tokenizer, data_cfg)
  return [encode(p, stats) for p in pairs]


def pair_length(ex: PairExample) -> int:
  """Positions a pair needs: its longer whole token row."""
  return max(len(ex.chosen.tokens), len(ex.rejected.tokens))


def collate_pairs(items: Sequence[PairExample], length: int, pad_id: int,
                  weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
  """[B, 2, L] next-token arrays + margin [B], weight [B] (+ ref_logps [B, 2])."""
  if any(pair_length(p) > length for p in items):
    raise ValueError(f"pair longer than the batch length {length}")
  flat = batching.collate([e for p in items for e in (p.chosen, p.rejected)], length, pad_id)
  out = {k: v.reshape((len(items), 2) + v.shape[1:]) for k, v in flat.items()}
  out["margin"] = np.asarray([p.margin for p in items], np.float32)
  out["weight"] = (np.ones(len(items), np.float32) if weights is None
                   else np.asarray(weights, np.float32))
  have_ref = [p.ref_logps is not None for p in items]
  if any(have_ref):
    if not all(have_ref):
      raise ValueError("some pairs have reference log-probs and some do not")
    out["ref_logps"] = np.asarray([p.ref_logps for p in items], np.float32)
  return out


def pair_iterator(examples: Sequence[PairExample], *, batch_size: int, buckets: Sequence[int],
                  pad_id: int, seed: int, shuffle: bool = True, process_index: int = 0,
                  process_count: int = 1, group_by_length: bool = False
                  ) -> batching.BatchIterator:
  """Infinite, resumable iterator of pair batches (state {epoch, index, seed})."""
  return batching.BatchIterator(examples, batch_size=batch_size, buckets=buckets, pad_id=pad_id,
                                seed=seed, shuffle=shuffle, process_index=process_index,
                                process_count=process_count, collate_fn=collate_pairs,
                                length_fn=pair_length,
                                group_by_length=group_by_length)


def fixed_batches(examples: Sequence[PairExample], *, batch_size: int, buckets: Sequence[int],
                  pad_id: int, process_index: int = 0, process_count: int = 1
                  ) -> list[tuple[dict[str, np.ndarray], list[int]]]:
  """Every pair exactly once, in fixed-shape batches for evaluation / precompute
  (`batching.fixed_batches` with the pair collate; this process's slice of each batch)."""
  return batching.fixed_batches(examples, batch_size=batch_size, buckets=buckets, pad_id=pad_id,
                                collate_fn=collate_pairs, length_fn=pair_length,
                                process_index=process_index, process_count=process_count)
