"""A tokenised dataset of which each process holds only its share (multi-host data loading).

On a multi-process mesh each process feeds its slice of every global batch
(`pit.data.batching.BatchIterator`, `fixed_batches`), but which rows form a batch and its
bucket length depend on every example's token length. `encode_shared` gives each process
exactly what that needs and no more:

- process p of P encodes the records i ≡ p (mod P) and keeps those examples (1/P of the
  tokenised data);
- every example's length and the summed truncation counts are exchanged (one all-gather of
  ⌈N/P⌉ + 2 integers per process), so every process knows all N lengths;
- any other example is encoded again when this process's slice of a batch holds it
  (deterministic: the same tokens the owning process holds).

The result, `ShardedExamples`, is a read-only Sequence equal item for item to encoding every
record here, so batches, bucket lengths and data order are the same for any process count
(and with one process nothing is encoded twice).
"""
from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Any, Callable, Sequence

import numpy as np

from pit.data import batching


class ShardedExamples(Sequence):
  """N examples: those this process keeps plus any other encoded on demand.

  `lengths` [N] int64: positions each example needs (its `length_fn`), known for all N.
  `kept`: how many examples this process holds encoded; `encoded_on_demand`: how many
  reads had to encode an example it does not hold. Slicing or `subset(indices)` gives a
  view; `set_field(name, values)` attaches a per-example value (e.g. DPO's precomputed
  `ref_logps`) that every read applies with `dataclasses.replace`.
  """

  def __init__(self, encode_one: Callable[[int], Any], lengths: np.ndarray,
               kept: dict[int, Any] | None = None):
    self._encode_one = encode_one
    self.lengths = np.asarray(lengths, np.int64)
    self._kept = dict(kept or {})
    self._fields: dict[str, list] = {}
    self.encoded_on_demand = 0

  @property
  def kept(self) -> int:
    """How many of the N examples this process holds encoded (its share; N with one process)."""
    return len(self._kept)

  def __len__(self) -> int:
    return len(self.lengths)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.subset(range(len(self))[i])
    i = operator.index(i)
    n = len(self)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"example {i} of {n}")
    ex = self._kept.get(i)
    if ex is None:
      ex = self._encode_one(i)
      self.encoded_on_demand += 1
    if self._fields:
      ex = dataclasses.replace(ex, **{k: v[i] for k, v in self._fields.items()})
    return ex

  def subset(self, indices) -> "ShardedExamples":
    """The examples at `indices` (in that order) as a view reading through this one."""
    idx = np.asarray(list(indices), np.int64).reshape(-1)
    return ShardedExamples(lambda j: self[int(idx[j])], self.lengths[idx])

  def set_field(self, name: str, values: Sequence) -> None:
    """Every read of example i now has `name` = values[i]. Raises ValueError when
    len(values) != len(self)."""
    if len(values) != len(self):
      raise ValueError(f"set_field({name!r}): {len(values)} values for {len(self)} examples")
    self._fields[name] = list(values)


def lengths_of(examples: Sequence, length_fn: Callable[[Any], int]) -> np.ndarray:
  """[N] positions of each example: `examples.lengths` of a `ShardedExamples` (no encoding),
  else `length_fn` of each item."""
  got = getattr(examples, "lengths", None)
  if got is not None:
    return np.asarray(got, np.int64)
  return np.asarray([length_fn(e) for e in examples], np.int64)


_STAT_FIELDS = tuple(f.name for f in dataclasses.fields(batching.TruncationStats))


def local_part(records: Sequence, encode: Callable, length_fn: Callable[[Any], int], *,
               process_index: int, process_count: int):
  """(kept {i: example}, table [⌈N/P⌉ + len(stats)] int64) of process `process_index`:
  its examples i ≡ process_index (mod process_count), encoded as `encode(record, stats)`,
  and the table of their lengths (-1 past its share) followed by its truncation counts."""
  n, P, p = len(records), int(process_count), int(process_index)
  stats = batching.TruncationStats()
  kept = {i: encode(records[i], stats) for i in range(p, n, P)}
  per = -(-n // P)
  table = np.full(per + len(_STAT_FIELDS), -1, np.int64)
  for j, i in enumerate(range(p, n, P)):
    table[j] = length_fn(kept[i])
  table[per:] = [getattr(stats, f) for f in _STAT_FIELDS]
  return kept, table


def assemble(tables_PM: np.ndarray, n: int):
  """(lengths [n], summed TruncationStats) from every process's `local_part` table [P, M]."""
  tables_PM = np.asarray(tables_PM, np.int64)
  P = tables_PM.shape[0]
  per = -(-n // P)
  i = np.arange(n)
  lengths = tables_PM[i % P, i // P]
  if (lengths < 0).any():
    raise RuntimeError("sharded encoding: an example's length is missing from the all-gather")
  sums = tables_PM[:, per:].sum(axis=0)
  return lengths, batching.TruncationStats(**{f: int(s) for f, s in zip(_STAT_FIELDS, sums)})


def _process_allgather(table: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(table))


def encode_shared(records: Sequence, encode: Callable, length_fn: Callable[[Any], int], *,
                  stats: batching.TruncationStats | None = None, process_index: int | None = None,
                  process_count: int | None = None, gather: Callable | None = None,
                  what: str = "examples") -> ShardedExamples:
  """`records` encoded as `encode(record, stats) -> example` across the processes (module
  docstring). Truncations of all N examples are added to `stats`. process_index /
  process_count default to JAX's; `gather(table) -> [P, M]` to an all-gather over the
  processes (`jax.experimental.multihost_utils.process_allgather`).

  Every process must call this with the same records in the same order (they are the
  global dataset; only the encoded share differs)."""
  import jax
  P = jax.process_count() if process_count is None else int(process_count)
  p = jax.process_index() if process_index is None else int(process_index)
  kept, table = local_part(records, encode, length_fn, process_index=p, process_count=P)
  if P == 1:
    tables = table[None]
  else:
    tables = (gather or _process_allgather)(table)
  lengths, counted = assemble(tables, len(records))
  if stats is not None:
    for f in _STAT_FIELDS:
      setattr(stats, f, getattr(stats, f) + getattr(counted, f))
  if P > 1:
    logging.info("%s: %d of %d tokenised on process %d of %d (the rest on demand)", what,
                 len(kept), len(records), p, P)
  return ShardedExamples(lambda i: encode(records[i], None), lengths, kept)
