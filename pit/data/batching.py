"""Tokenised examples -> fixed-shape batches in a few length buckets.

Truncation policy (`make_example`): an example is `[prefix] prompt response [eos]`
(prefix: the tokenizer's sequence start, e.g. bos; `pit.data.encoding` builds every
example) with the loss on response + eos. A response longer than
`data.max_response_len` tokens (eos included) is cut at that length, its eos
kept; then a prompt that does not fit in the remaining `data.max_len` keeps its
*end* (the most recent turns, which the response answers) after the bos. Text
records are a response with an empty prompt, cut at `max_len - 1`. Every cut
is counted in a `TruncationStats`; the loaders (`pit.pipelines.common`,
`pit.data.sources.DataReport`) log the counts when loading ends and the
pipelines write them into their summary json. Nothing is cut silently.

Padding: a batch is right-padded to the smallest bucket (`data.buckets`, by
default powers of two from 32 up to max_len: `default_buckets`) that holds its
longest example, so jit sees only a few static shapes.

Length grouping (`data.group_by_length`, off by default): an epoch's shuffled order is cut
into batches whose members share a bucket (per bucket in shuffled order; the leftovers of
every bucket then fill mixed batches), and those batches are visited in a shuffled order —
the same rows and floor(n / B) full batches an ungrouped epoch has (so the n mod B rows left
out are chosen at random, from any bucket), each example at most once, but a
mix of short and long rows no longer pads every batch to the longest bucket (HF Trainer's
`group_by_length`). Each batch is then homogeneous in length, so also in kind on mixed
data: a cost in gradient noise that a user turns on for the speed.

Order: shuffling is a deterministic function of (seed, epoch); the iterator's
whole state is {epoch, index, seed}, saved with every checkpoint
(`pit.checkpoint.Checkpointer`) and restored exactly, so a resumed run sees the
same batches as an uninterrupted one, across epoch boundaries too.

Multi-host: every process holds the same examples, builds the same global
order and the same global batch (the bucket is chosen from the whole global
batch, so all processes agree on the shape) and keeps rows
[process_index * B/P, (process_index + 1) * B/P): the per-process slices,
concatenated in process order, are exactly the single-process batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np


@dataclasses.dataclass
class Example:
  """Token ids and, per token, whether it is a training target."""
  tokens: np.ndarray        # int32 [n]
  target_mask: np.ndarray   # bool [n]: token i is predicted (loss on it)


@dataclasses.dataclass
class TruncationStats:
  """Counts of examples cut by `make_example`: prompts that kept only their prefix
  and end, responses cut to `max_response_len`."""
  prompts_cut: int = 0
  responses_cut: int = 0

  def as_dict(self):
    """JSON-ready counts."""
    return dataclasses.asdict(self)


def make_example(prompt_ids: Sequence[int], response_ids: Sequence[int], *, eos_id: int,
                 max_len: int, max_response_len: int, keep_prefix: int = 1,
                 stats: TruncationStats | None = None) -> Example:
  """prompt response [eos]; loss on response and eos. `prompt_ids` start with the
  sequence prefix (e.g. [bos]); callers build them with `pit.data.encoding`.

  Truncation policy: the response is cut to `max_response_len` tokens (eos
  kept); then the prompt keeps its first `keep_prefix` ids (the prefix) and its
  *end* so the whole fits in `max_len`.
  """
  keep_prefix = int(keep_prefix)
  if max_response_len > max_len - keep_prefix or max_response_len < 1:
    raise ValueError(f"data.max_response_len={max_response_len} must be at least 1 and leave "
                     f"room in data.max_len={max_len} for the {keep_prefix} prefix token(s) "
                     "(bos) and the prompt")
  response = list(response_ids) + [eos_id]
  if len(response) > max_response_len:
    response = response[:max_response_len - 1] + [eos_id]
    if stats: stats.responses_cut += 1
  prompt = list(prompt_ids)
  room = max_len - len(response)
  if len(prompt) > room:
    tail = room - keep_prefix
    prompt = prompt[:keep_prefix] + (prompt[len(prompt) - tail:] if tail > 0 else [])
    if stats: stats.prompts_cut += 1
  tokens = np.asarray(prompt + response, np.int32)
  mask = np.zeros(len(tokens), bool)
  mask[len(prompt):] = True
  return Example(tokens, mask)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest of `buckets` that is >= `n` (lengths in tokens). Raises ValueError
  when `n` exceeds the largest bucket."""
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")


def default_buckets(max_len: int, smallest: int = 32) -> tuple[int, ...]:
  """Powers of two `smallest`, 2*`smallest`, ... below `max_len`, then `max_len`
  itself (just `(max_len,)` when `max_len <= smallest`)."""
  out, b = [], smallest
  while b < max_len:
    out.append(b)
    b *= 2
  out.append(max_len)
  return tuple(out)


def collate(examples: Sequence[Example], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """Right-padded next-token batch: inputs[t] predicts targets[t] = tokens[t+1]."""
  B = len(examples)
  inputs = np.full((B, length), pad_id, np.int32)
  targets = np.full((B, length), pad_id, np.int32)
  loss_mask = np.zeros((B, length), np.float32)
  mask = np.zeros((B, length), bool)
  for i, ex in enumerate(examples):
    n = len(ex.tokens) - 1
    inputs[i, :n] = ex.tokens[:-1]
    targets[i, :n] = ex.tokens[1:]
    loss_mask[i, :n] = ex.target_mask[1:]
    mask[i, :n] = True
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (B, length)).copy()
  return dict(inputs=inputs, targets=targets, loss_mask=loss_mask, mask=mask, positions=positions)


def example_length(ex: Example) -> int:
  """Positions an Example occupies in a next-token batch."""
  return len(ex.tokens) - 1


class BatchIterator:
  """Infinite, resumable iterator of bucketed batches over `examples`.

  `examples` may be any items: `collate_fn(items, length, pad_id) -> batch`
  builds the batch and `length_fn(item)` gives the positions an item needs
  (the batch length is the smallest bucket holding the longest item). The
  defaults batch `Example`s with `collate`; pit.data.pair_batching passes its
  own pair collate so preference pairs share this resumable iterator.
  """

  def __init__(self, examples: Sequence[Any], *, batch_size: int, buckets: Sequence[int],
               pad_id: int, seed: int, shuffle: bool = True, process_index: int = 0,
               process_count: int = 1,
               collate_fn: Callable[[Sequence[Any], int, int], dict] = collate,
               length_fn: Callable[[Any], int] = example_length,
               group_by_length: bool = False):
    if not examples:
      raise ValueError("no training examples")
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} not divisible by {process_count} processes")
    # a ShardedExamples (pit.data.sharded) stays as it is: only this process's slice of each
    # batch is read, and the lengths are known without encoding anything
    self.examples = examples if hasattr(examples, "lengths") else list(examples)
    self.batch_size, self.buckets, self.pad_id = batch_size, tuple(buckets), pad_id
    self.seed, self.shuffle = seed, shuffle
    self.process_index, self.process_count = process_index, process_count
    self.collate_fn, self.length_fn = collate_fn, length_fn
    self.group_by_length = bool(group_by_length)
    self.epoch, self.index = 0, 0
    self._lengths: np.ndarray | None = None          # per example, on first use
    self._bucket_of: np.ndarray | None = None        # per example (group_by_length)
    self._epoch_batches: tuple[int, np.ndarray] | None = None   # (epoch, [batches, B] ids)

  def _order(self, epoch: int) -> np.ndarray:
    n = len(self.examples)
    if not self.shuffle:
      return np.arange(n)
    return np.random.default_rng([self.seed, epoch]).permutation(n)

  def _grouped(self, epoch: int) -> np.ndarray:
    """The epoch's batches as example ids [batches_per_epoch, B] (`group_by_length`)."""
    if self._epoch_batches is not None and self._epoch_batches[0] == epoch:
      return self._epoch_batches[1]
    if self._bucket_of is None:
      self._bucket_of = np.asarray([bucket_length(int(n), self.buckets) for n in self.lengths],
                                   np.int64)
    B = self.batch_size
    # the rows an ungrouped epoch visits (its first floor(n/B)*B): the remainder is then left
    # out at random, not always from the same bucket (a rare long bucket would starve)
    order = self._order(epoch)[:self.batches_per_epoch * B]
    bucket_in_order = self._bucket_of[order]
    full, leftovers = [], []
    for b in np.unique(bucket_in_order):
      ids = order[bucket_in_order == b]            # this bucket's members, shuffled order
      k = len(ids) // B
      full.extend(ids[:k * B].reshape(k, B))
      leftovers.append(ids[k * B:])
    rest = np.concatenate(leftovers)
    rest = rest[np.argsort(self._bucket_of[rest], kind="stable")]   # mixed batches: similar lengths
    k = len(rest) // B
    full.extend(rest[:k * B].reshape(k, B))
    batches = np.stack(full) if full else np.zeros((0, B), np.int64)
    if self.shuffle:
      batches = batches[np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))]
    if len(batches) == 0:   # fewer examples than a batch: wrap around as the ungrouped order does
      batches = np.resize(self._order(epoch), (1, B))
    self._epoch_batches = (epoch, batches)
    return batches

  @property
  def lengths(self) -> np.ndarray:
    """[N] positions each example needs (`length_fn`; a ShardedExamples' own lengths)."""
    if self._lengths is None:
      from pit.data import sharded
      self._lengths = sharded.lengths_of(self.examples, self.length_fn)
    return self._lengths

  @property
  def batches_per_epoch(self) -> int:
    """Full batches per epoch, len(examples) // batch_size (at least 1;
    the remainder of the epoch's order is not visited that epoch)."""
    return max(len(self.examples) // self.batch_size, 1)

  def get_state(self) -> dict:
    """The iterator's position {epoch, index, seed} (saved with checkpoints)."""
    return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

  def set_state(self, state: dict):
    """Resumes at a `get_state` position. Raises ValueError when the saved seed
    differs from this iterator's (KeyError when epoch or index is missing)."""
    if state.get("seed", self.seed) != self.seed:
      raise ValueError(f"data seed changed since the checkpoint ({state['seed']} -> {self.seed})")
    self.epoch, self.index = int(state["epoch"]), int(state["index"])

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.group_by_length:
      batches = self._grouped(self.epoch)
      idx = batches[self.index % len(batches)]   # a resumed index past the end wraps, as below
    else:
      order = self._order(self.epoch)
      start = self.index * self.batch_size
      idx = [order[(start + i) % len(order)] for i in range(self.batch_size)]
    self.index += 1
    if self.index >= self.batches_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    idx = np.asarray(idx, np.int64)
    length = bucket_length(int(self.lengths[idx].max()), self.buckets)
    local = self.batch_size // self.process_count
    mine = [self.examples[int(i)] for i in idx[self.process_index * local:
                                               (self.process_index + 1) * local]]
    return self.collate_fn(mine, length, self.pad_id)


def fixed_batches(examples: Sequence, *, batch_size: int, buckets: Sequence[int], pad_id: int,
                  collate_fn: Callable, length_fn: Callable, process_index: int = 0,
                  process_count: int = 1
                  ) -> list[tuple[dict[str, np.ndarray], list[int]]]:
  """Every example exactly once, in fixed-shape batches for evaluation / precompute.

  Any example type batches here with its `collate_fn(items, length, pad_id, weights)` and
  `length_fn` (pairs: `pair_batching.fixed_batches`; PIT's 4-row gap examples:
  `gap_batching.fixed_gap_batches`; SFT examples with a weighted collate). Examples are grouped
  by bucket (few shapes -> few compilations); a short last batch of a bucket is padded by
  repeating its last example with weight 0. With `process_count` > 1 each batch holds only
  this process's slice of the global batch (rows [p·B/P, (p+1)·B/P), for
  `pit.sharding.put_batch`), and only those examples are read (a
  `pit.data.sharded.ShardedExamples` encodes nothing else).
  Returns [(batch, indices in `examples` of the global batch's real examples, in row order)].
  Raises ValueError when batch_size is not divisible by process_count.
  """
  from pit.data import sharded   # it imports this module
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} not divisible by {process_count} processes")
  lengths = sharded.lengths_of(examples, length_fn)
  by_bucket: dict[int, list[int]] = {}
  for i, n in enumerate(lengths):
    by_bucket.setdefault(bucket_length(int(n), buckets), []).append(i)
  local = batch_size // process_count
  lo, hi = process_index * local, (process_index + 1) * local
  out = []
  for length in sorted(by_bucket):
    idx = by_bucket[length]
    for s in range(0, len(idx), batch_size):
      chunk = idx[s:s + batch_size]
      rows = chunk + [chunk[-1]] * (batch_size - len(chunk))
      weights = [1.0] * len(chunk) + [0.0] * (batch_size - len(chunk))
      items = [examples[i] for i in rows[lo:hi]]
      out.append((collate_fn(items, length, pad_id, weights[lo:hi]), chunk))
  return out
