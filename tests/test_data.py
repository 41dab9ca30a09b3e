"""JSONL records with clear errors, truncation policy, bucketing, resumable iteration."""
import json

import numpy as np
import pytest

from pit.data import batching, records
from pit.data.tokenizer import ByteTokenizer


def _write(tmp_path, lines, name="d.jsonl", raw=False):
  p = tmp_path / name
  with open(p, "wb") as f:
    for line in lines:
      f.write(line if raw else (json.dumps(line) + "\n").encode())
  return str(p)


@pytest.mark.parametrize("line,needle", [
    (b'{"prompt": "a", "response": "b"\n', "malformed JSON"),
    (b'{"prompt": "a"}\n', "field 'response' is missing"),
    (b'{"prompt": "a", "response": "  "}\n', "field 'response' is empty"),
    (b'{"prompt": "a", "response": 3}\n', "field 'response' must be a string"),
    (b'{"prompt": "\xff\xfe", "response": "b"}\n', "not valid UTF-8"),
    (b'[1, 2]\n', "expected a JSON object"),
])
def test_bad_line_names_file_line_and_field(tmp_path, line, needle):
  good = b'{"prompt": "p", "response": "r"}\n'
  path = _write(tmp_path, [good, line, good], raw=True)
  with pytest.raises(records.DataError) as e:
    list(records.read_jsonl(path, ("prompt", "response")))
  assert f"{path}:2:" in str(e.value) and needle in str(e.value)
  report = records.SkipReport()
  kept = list(records.read_jsonl(path, ("prompt", "response"), on_error="skip", report=report))
  assert len(kept) == 2 and report.total == 1


def test_truncation_keeps_prompt_end_and_cuts_response():
  stats = batching.TruncationStats()
  ex = batching.make_example([1] + list(range(10, 40)), list(range(100, 150)), eos_id=2,
                             max_len=32, max_response_len=20, stats=stats)
  assert len(ex.tokens) == 32
  assert ex.tokens[0] == 1 and ex.tokens[-1] == 2
  resp = ex.tokens[ex.target_mask]
  assert list(resp[:-1]) == list(range(100, 119)) and resp[-1] == 2
  prompt = ex.tokens[1:][~ex.target_mask[1:]]
  assert list(prompt) == list(range(40 - len(prompt), 40))  # the end of the prompt is kept
  assert stats.prompts_cut == 1 and stats.responses_cut == 1


def test_collate_shifts_targets_and_masks_prompt():
  ex = batching.make_example([1, 5, 6], [7, 8], eos_id=2, max_len=16, max_response_len=8)
  b = batching.collate([ex], 8, pad_id=0)
  assert list(b["inputs"][0, :5]) == [1, 5, 6, 7, 8]
  assert list(b["targets"][0, :5]) == [5, 6, 7, 8, 2]
  assert list(b["loss_mask"][0, :6]) == [0, 0, 1, 1, 1, 0]
  assert b["mask"][0].sum() == 5


def _examples(n=50):
  rng = np.random.default_rng(0)
  return [batching.make_example([1] + list(rng.integers(3, 50, rng.integers(1, 20))),
                                list(rng.integers(3, 50, rng.integers(1, 30))),
                                eos_id=2, max_len=64, max_response_len=40) for _ in range(n)]


def test_iterator_buckets_and_is_deterministic():
  it = batching.BatchIterator(_examples(), batch_size=8, buckets=(16, 32, 64), pad_id=0, seed=3)
  shapes = {next(it)["inputs"].shape[1] for _ in range(20)}
  assert shapes <= {16, 32, 64}
  a = batching.BatchIterator(_examples(), batch_size=8, buckets=(64,), pad_id=0, seed=3)
  b = batching.BatchIterator(_examples(), batch_size=8, buckets=(64,), pad_id=0, seed=3)
  for _ in range(9):
    np.testing.assert_array_equal(next(a)["inputs"], next(b)["inputs"])


def test_iterator_state_round_trip_gives_identical_next_batches():
  it = batching.BatchIterator(_examples(), batch_size=8, buckets=(64,), pad_id=0, seed=7)
  for _ in range(11):  # crosses an epoch boundary (6 batches per epoch)
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(5)]
  fresh = batching.BatchIterator(_examples(), batch_size=8, buckets=(64,), pad_id=0, seed=7)
  fresh.set_state(state)
  for e in expected:
    got = next(fresh)
    for k in e:
      np.testing.assert_array_equal(got[k], e[k])


def test_per_process_slices_partition_the_global_batch():
  glob = batching.BatchIterator(_examples(), batch_size=8, buckets=(64,), pad_id=0, seed=1)
  parts = [batching.BatchIterator(_examples(), batch_size=8, buckets=(64,), pad_id=0, seed=1,
                                  process_index=i, process_count=2) for i in range(2)]
  g = next(glob)
  joined = np.concatenate([next(p)["inputs"] for p in parts])
  np.testing.assert_array_equal(joined, g["inputs"])


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  text = "héllo wörld ✓"
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode("ab") + [tok.eos_id] + tok.encode("cd")) == "ab"
