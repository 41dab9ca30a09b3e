"""Batching: truncation policy and counts, bucketed padding, seeded order, Orbax resume of the
iterator (incl. across an epoch boundary) and per-host slices of the global batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pit.checkpoint import Checkpointer
from pit.data import batching
from pit.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def _examples(n=21, seed=0, stats=None):
  rng = np.random.default_rng(seed)
  word = lambda k: "".join(chr(97 + c) for c in rng.integers(0, 26, k))
  return [batching.make_example([TOK.bos_id] + TOK.encode(word(rng.integers(1, 40))),
                                TOK.encode(word(rng.integers(1, 60))),
                                eos_id=TOK.eos_id, max_len=64, max_response_len=40, stats=stats)
          for _ in range(n)]


def _it(examples, **kw):
  return batching.BatchIterator(examples, **{**dict(batch_size=4, buckets=(16, 32, 64),
                                                    pad_id=TOK.pad_id, seed=5), **kw})


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_truncation_counts_and_bounds():
  stats = batching.TruncationStats()
  ex = _examples(200, stats=stats)
  # independent count of the policy: response+eos > 40 is cut; then bos+prompt must fit the rest
  rng = np.random.default_rng(0)
  want_r = want_p = 0
  for _ in range(200):
    p = int(rng.integers(1, 40))
    rng.integers(0, 26, p)
    r = int(rng.integers(1, 60))
    rng.integers(0, 26, r)
    r_len = min(r + 1, 40)
    want_r += r + 1 > 40
    want_p += 1 + p > 64 - r_len
  assert (stats.responses_cut, stats.prompts_cut) == (want_r, want_p) and want_r > 0
  assert max(len(e.tokens) for e in ex) <= 64
  assert all(e.tokens[0] == TOK.bos_id and e.tokens[-1] == TOK.eos_id for e in ex)
  with pytest.raises(ValueError, match="max_response_len=64 must be at least 1 and leave room in "
                     "data.max_len=64 for the 1 prefix"):
    batching.make_example([0, 1], [2], eos_id=1, max_len=64, max_response_len=64)
  # no prefix (e.g. a Qwen tokenizer): the whole length may go to the response
  ex = batching.make_example([5, 6, 7], [8] * 10, eos_id=1, max_len=4, max_response_len=4,
                             keep_prefix=0)
  assert ex.tokens.tolist() == [8, 8, 8, 1]


def test_padding_to_buckets_and_seeded_order():
  assert batching.default_buckets(256) == (32, 64, 128, 256)
  ex = _examples()
  it = _it(ex)
  for _ in range(12):
    b = next(it)
    L = b["inputs"].shape[1]
    longest = int(b["mask"].sum(1).max())
    assert L in (16, 32, 64) and longest <= L and (L == 16 or longest > L // 2)
    assert np.all(b["inputs"][~b["mask"]] == TOK.pad_id) and np.all(b["loss_mask"][~b["mask"]] == 0)
  a, b, c = _it(ex), _it(ex), _it(ex, seed=6)
  first = [next(a)["inputs"] for _ in range(5)]
  for x in first:
    np.testing.assert_array_equal(x, next(b)["inputs"])
  assert any(x.shape != y.shape or np.any(x != y) for x, y in
             zip(first, [next(c)["inputs"] for _ in range(5)]))


def test_epoch_is_a_permutation():
  ex = _examples(20)
  it = _it(ex, buckets=(64,))
  seen = np.concatenate([next(it)["inputs"] for _ in range(it.batches_per_epoch)])
  want = batching.collate(ex, 64, TOK.pad_id)["inputs"]
  assert sorted(map(bytes, seen.astype(np.int32))) == sorted(map(bytes, want.astype(np.int32)))


@pytest.mark.parametrize("consumed", [3, 5])  # 5 batches/epoch: 5 = resume at an epoch boundary
def test_orbax_round_trip_of_iterator_state(tmp_path, consumed):
  ex = _examples()
  it = _it(ex)
  assert it.batches_per_epoch == 5
  for _ in range(consumed):
    next(it)
  state = {"w": jnp.arange(4.0)}
  ck = Checkpointer(str(tmp_path / "ck"), save_every=1, keep=1, async_save=False)
  ck.save(consumed, state, it.get_state(), force=True)
  ck.close()
  expected = [next(it) for _ in range(7)]  # runs into the next epoch

  ck = Checkpointer(str(tmp_path / "ck"), save_every=1, keep=1, async_save=False)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  restored, data_state, step = ck.restore(abstract)
  ck.close()
  assert step == consumed and data_state == {"epoch": consumed // 5, "index": consumed % 5,
                                             "seed": 5}
  np.testing.assert_array_equal(restored["w"], state["w"])
  fresh = _it(_examples())
  fresh.set_state(data_state)
  for e in expected:
    _same(next(fresh), e)
  with pytest.raises(ValueError, match="data seed changed"):
    _it(ex, seed=9).set_state(data_state)


def test_two_process_slices_concatenate_to_the_global_batch():
  ex = _examples(23)
  glob = _it(ex, batch_size=8)
  procs = [_it(ex, batch_size=8, process_index=i, process_count=2) for i in range(2)]
  for _ in range(7):  # crosses the epoch boundary (2 batches/epoch)
    g = next(glob)
    parts = [next(p) for p in procs]
    assert all(p["inputs"].shape == (4, g["inputs"].shape[1]) for p in parts)
    _same({k: np.concatenate([p[k] for p in parts]) for k in g}, g)
  # resuming one process from the other's state keeps them in step
  p1 = _it(ex, batch_size=8, process_index=1, process_count=2)
  p1.set_state(procs[0].get_state())
  _same(next(p1), next(procs[1]))
  with pytest.raises(ValueError, match="not divisible by 3 processes"):
    _it(ex, batch_size=8, process_count=3)


def _lengths(n, seed=1):
  """Examples of two kinds, short (~10 tokens) and long (~50), interleaved at random."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    k = int(rng.integers(3, 8)) if rng.random() < 0.6 else int(rng.integers(40, 55))
    ex = batching.make_example([TOK.bos_id] + TOK.encode("a" * k), TOK.encode("b"),
                               eos_id=TOK.eos_id, max_len=64, max_response_len=8)
    ex.tokens[1] = i % 250 + 1      # a per-example id, to follow each row
    out.append(ex)
  return out


def _ids(batch):
  return [int(r[1]) for r in batch["inputs"]]


def test_group_by_length_visits_each_example_once_in_single_bucket_batches():
  ex = _lengths(203)
  B = 8
  plain = _it(ex, batch_size=B, group_by_length=False)
  grouped = _it(ex, batch_size=B, group_by_length=True)
  assert grouped.batches_per_epoch == plain.batches_per_epoch == 203 // B
  epoch = [next(grouped) for _ in range(grouped.batches_per_epoch)]
  ids = [i for b in epoch for i in _ids(b)]
  assert len(ids) == len(set(ids)) == (203 // B) * B          # each example at most once
  pad = lambda bs: sum(int((~b["mask"]).sum()) for b in bs)
  plain_epoch = [next(plain) for _ in range(plain.batches_per_epoch)]
  # every batch but the (at most one per bucket boundary) mixed leftovers is a single bucket
  mixed = sum(len({batching.bucket_length(int(m.sum()), (16, 32, 64)) for m in b["mask"]}) > 1
              for b in epoch)
  assert mixed <= 2, mixed
  assert pad(epoch) < 0.5 * pad(plain_epoch)                  # the point: far less padding
  # both lengths' batches are spread over the epoch (batch order shuffled, not sorted)
  widths = [b["inputs"].shape[1] for b in epoch]
  assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
  # the next epoch is another grouping; seeded: a new iterator repeats this one
  again = _it(ex, batch_size=B, group_by_length=True)
  for b in epoch:
    _same(next(again), b)
  assert _ids(next(grouped)) != _ids(epoch[0])


def test_group_by_length_resumes_and_slices_per_process():
  ex = _lengths(77)
  it = _it(ex, batch_size=8, group_by_length=True)
  for _ in range(13):           # 9 batches an epoch: into the second epoch
    next(it)
  state = it.get_state()
  resumed = _it(ex, batch_size=8, group_by_length=True)
  resumed.set_state(state)
  for _ in range(7):
    _same(next(resumed), next(it))
  glob = _it(ex, batch_size=8, group_by_length=True)
  procs = [_it(ex, batch_size=8, group_by_length=True, process_index=i, process_count=2)
           for i in range(2)]
  for _ in range(11):
    g, parts = next(glob), [next(p) for p in procs]
    _same({k: np.concatenate([p[k] for p in parts]) for k in g}, g)
  small = _it(_lengths(5), batch_size=8, group_by_length=True)   # fewer rows than a batch
  assert len(_ids(next(small))) == 8


def test_group_by_length_leaves_out_the_remainder_at_random_not_a_rare_bucket():
  """1000 short rows and 5 long ones, B=8: the plain epoch leaves out 5 random rows; a
  grouping that drops the longest bucket's leftovers would never show the long rows."""
  short = [batching.make_example([TOK.bos_id, i % 250 + 1] + TOK.encode("a" * 3), TOK.encode("b"),
                                 eos_id=TOK.eos_id, max_len=64, max_response_len=8)
           for i in range(1, 250)] * 4
  long = [batching.make_example([TOK.bos_id, 251 + i] + TOK.encode("a" * 50), TOK.encode("b"),
                                eos_id=TOK.eos_id, max_len=64, max_response_len=8)
          for i in range(5)]
  ex = short + long
  it = _it(ex, batch_size=8, group_by_length=True)
  seen = {251 + i: 0 for i in range(5)}
  for _ in range(40 * it.batches_per_epoch):
    for i in _ids(next(it)):
      if i in seen:
        seen[i] += 1
  assert all(v >= 36 for v in seen.values()), seen      # ~0.5 % left out per epoch, not 100 %


def test_group_by_length_reshuffles_batch_membership_each_epoch_and_three_buckets():
  rng = np.random.default_rng(3)
  ex = []
  for i in range(240):   # lengths on both sides of the 16 / 32 bucket boundaries
    k = int(rng.choice([12, 13, 14, 28, 29, 30, 45, 50]))
    e = batching.make_example([TOK.bos_id, i + 1] + TOK.encode("a" * (k - 4)), TOK.encode("b"),
                              eos_id=TOK.eos_id, max_len=64, max_response_len=8)
    ex.append(e)
  it = _it(ex, batch_size=8, group_by_length=True)
  epochs = [[frozenset(_ids(next(it))) for _ in range(it.batches_per_epoch)] for _ in range(2)]
  assert len(set(epochs[0]) & set(epochs[1])) <= 2        # new memberships, not a reorder
  it = _it(ex, batch_size=8, group_by_length=True)
  kinds = []
  for _ in range(it.batches_per_epoch):
    b = next(it)
    kinds.append({batching.bucket_length(batching.example_length(ex[i - 1]), (16, 32, 64))
                  for i in _ids(b)})
    assert max(kinds[-1]) == b["inputs"].shape[1]
  assert {k for s in kinds for k in s} == {16, 32, 64}
  assert sum(len(s) > 1 for s in kinds) <= 2, kinds      # only the leftovers' batches mix


def test_group_by_length_reaches_the_pair_and_gap_iterators():
  from types import SimpleNamespace
  import ml_collections
  from pit.data import gap_batching, pair_batching
  from pit.pipelines import reward
  kw = dict(batch_size=4, buckets=(16, 64), pad_id=0, seed=0)
  for fn in (pair_batching.pair_iterator, gap_batching.gap_iterator):
    assert fn([object()], **kw, group_by_length=True).group_by_length
    assert not fn([object()], **kw).group_by_length
  c = ml_collections.ConfigDict(dict(train=dict(batch_size=4), data=dict(
      buckets=(16, 64), max_len=64, seed=0, group_by_length=True)))
  rt = SimpleNamespace(tokenizer=SimpleNamespace(pad_id=0))
  assert reward.pair_iterator(rt, [object()], c).group_by_length
