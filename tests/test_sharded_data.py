"""Multi-host data loading (`pit.data.sharded`): each of P simulated processes encodes only
its share of the records, yet every batch it feeds is exactly its slice of the one-process
batch (rows, bucket length, order, epochs), and it reads nothing outside its slices. The
all-gather is simulated by stacking the processes' tables; tests/test_multihost.py runs the
real one across two `jax.distributed` processes."""
import dataclasses

import numpy as np
import pytest

from pit.data import batching, pair_batching, sharded
from pit.data.pairs import PreferencePair
from pit.data.tokenizer import ByteTokenizer
from pit.pipelines import common

TOK = ByteTokenizer()


@dataclasses.dataclass
class _Ex:
  """An example that knows which record it came from."""
  rid: int
  tokens: np.ndarray
  note: float = 0.0


def _records(n, seed=0):
  rng = np.random.default_rng(seed)
  # (record id, token count): mostly short, a few long, so batches land in several buckets
  return [(i, int(rng.integers(61, 90) if rng.random() < 0.07 else rng.integers(3, 30)))
          for i in range(n)]


def _encode(rec, stats, *, log=None):
  rid, n = rec
  if log is not None:
    log.append(rid)
  if stats is not None and n > 60:
    stats.responses_cut += 1
  return _Ex(rid, np.arange(n))


def _length(ex):
  return len(ex.tokens) - 1


def _processes(records, P):
  """The ShardedExamples of each of P processes (simulated all-gather) and each one's
  on-demand encode log."""
  logs = [[] for _ in range(P)]
  parts = [sharded.local_part(records, _encode, _length, process_index=p, process_count=P)
           for p in range(P)]
  tables = np.stack([t for _, t in parts])
  out = []
  for p in range(P):
    st = batching.TruncationStats()
    enc = lambda rec, s, p=p: _encode(rec, s, log=logs[p])
    ex = sharded.encode_shared(records, enc, _length, stats=st, process_index=p,
                               process_count=P, gather=lambda t, p=p: tables)
    logs[p].clear()   # encode_shared encoded its own share again: only later reads count
    out.append((ex, st))
  return out, logs


@pytest.mark.parametrize("P", [2, 3])
def test_each_process_keeps_its_share_and_knows_every_length(P):
  records = _records(50)
  eager = [_encode(r, None) for r in records]
  eager_stats = batching.TruncationStats()
  for r in records:
    _encode(r, eager_stats)
  procs, logs = _processes(records, P)
  for p, (ex, st) in enumerate(procs):
    assert ex.kept == len(range(p, 50, P))
    np.testing.assert_array_equal(ex.lengths, [_length(e) for e in eager])
    assert st == eager_stats and st.responses_cut > 0     # counted once over all processes
    assert ex.encoded_on_demand == 0
    got = [ex[i] for i in range(50)]
    assert [g.rid for g in got] == list(range(50))
    assert all(np.array_equal(g.tokens, e.tokens) for g, e in zip(got, eager))
    assert ex.encoded_on_demand == 50 - ex.kept             # only what it does not hold
    assert sorted(logs[p]) == [i for i in range(50) if i % P != p]


def _collect(items, length, pad_id):
  del pad_id
  return [e.rid for e in items], length


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("P", [2, 4])
def test_each_process_feeds_its_slice_of_the_one_process_batches(P, group_by_length):
  records = _records(45, seed=1)
  B, steps = 8, 13                              # 5 batches an epoch: crosses epochs
  kw = dict(batch_size=B, buckets=(16, 32, 64, 128), pad_id=0, seed=3,
            collate_fn=_collect, length_fn=_length, group_by_length=group_by_length)
  one = batching.BatchIterator([_encode(r, None) for r in records], **kw)
  want = [next(one) for _ in range(steps)]
  assert len({length for _, length in want}) > 1          # several buckets really occur
  procs, logs = _processes(records, P)
  local = B // P
  for p, (ex, _) in enumerate(procs):
    it = batching.BatchIterator(ex, process_index=p, process_count=P, **kw)
    got = [next(it) for _ in range(steps)]
    assert got == [(rids[p * local:(p + 1) * local], length) for rids, length in want]
    mine = {r for rids, _ in want for r in rids[p * local:(p + 1) * local]}
    assert set(logs[p]) == {r for r in mine if r % P != p}   # read nothing else
    state = it.get_state()                              # resumes as the one-process iterator
    again = batching.BatchIterator(ex, process_index=p, process_count=P, **kw)
    again.set_state(state)
    assert next(again) == next(it)


def _pairs(n, seed=0):
  rng = np.random.default_rng(seed)
  word = lambda lo, hi: "".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(lo, hi)))
  return [PreferencePair(word(3, 30), word(1, 40), word(1, 15), float(rng.normal()))
          for _ in range(n)]


def _encode_pair(pair, stats):
  return pair_batching.make_pair_example(pair, TOK, prompt_format="Q: {prompt}\nA:", max_len=64,
                                         max_response_len=24, stats=stats)


@pytest.mark.parametrize("P", [2, 4])
def test_fixed_batches_slices_add_up_to_the_one_process_batches(P):
  pairs = _pairs(23, seed=4)
  kw = dict(batch_size=4, buckets=(32, 48, 64))
  want = pair_batching.fixed_batches([_encode_pair(q, None) for q in pairs], pad_id=TOK.pad_id,
                                     **kw)
  parts = [sharded.local_part(pairs, _encode_pair, pair_batching.pair_length, process_index=p,
                              process_count=P) for p in range(P)]
  tables = np.stack([t for _, t in parts])
  got = []
  for p in range(P):
    ex = sharded.encode_shared(pairs, _encode_pair, pair_batching.pair_length, process_index=p,
                               process_count=P, gather=lambda t: tables)
    got.append(pair_batching.fixed_batches(ex, pad_id=TOK.pad_id, process_index=p,
                                           process_count=P, **kw))
    assert ex.encoded_on_demand <= sum(len(b["weight"]) for b, _ in got[-1])
  assert len(want) > 2
  for j, (b, idx) in enumerate(want):
    assert all(g[j][1] == idx for g in got)
    for k in b:
      np.testing.assert_array_equal(np.concatenate([g[j][0][k] for g in got]), b[k], err_msg=k)


def test_fixed_batches_refuses_a_batch_the_processes_cannot_split():
  with pytest.raises(ValueError, match="not divisible by 3 processes"):
    pair_batching.fixed_batches([_encode_pair(q, None) for q in _pairs(4)], batch_size=4,
                                buckets=(64,), pad_id=0, process_index=0, process_count=3)


def test_views_fields_and_indexing():
  records = _records(30, seed=2)
  ex = sharded.encode_shared(records, _encode, _length, process_index=0, process_count=1)
  train, held = common.split_eval(ex, 0.2, seed=5)
  ltrain, lheld = common.split_eval([_encode(r, None) for r in records], 0.2, seed=5)
  assert [e.rid for e in train] == [e.rid for e in ltrain] and len(held) == len(lheld) == 6
  np.testing.assert_array_equal(train.lengths, [_length(e) for e in ltrain])
  held.set_field("note", [float(i) for i in range(6)])
  assert [e.note for e in held] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
  assert ex[lheld[0].rid].note == 0.0            # a view's field does not leak to its parent
  assert ex[-1].rid == 29 and [e.rid for e in ex[3:9:2]] == [3, 5, 7]
  with pytest.raises(IndexError):
    ex[30]
  with pytest.raises(ValueError, match="3 values for 6 examples"):
    held.set_field("note", [1.0, 2.0, 3.0])
