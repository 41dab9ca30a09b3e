"""Long generation jobs (candidates, judgements, prompts) that a kill loses at most one chunk of.

`map_chunks(dir, name, items, fn, chunk_size)` runs `fn(chunk_items, chunk_index)` over
fixed chunks of `items` and stores each chunk's results (JSON values, one per item) in
DIR/<name>.parts/<index>.json, written atomically with the chunk's size and a digest of its
items. Run again, it reads the chunks already done and computes only the rest; a part that
cannot be read or whose digest or size does not match is named in a warning, set aside as
<index>.json.bad and recomputed (never used). `fn` must be deterministic given
(chunk_items, chunk_index) for a resumed run to equal an uninterrupted one: seed samplers with
the chunk index (`pit.generation` does, via its `call` argument). When every chunk is done,
the results are written to DIR/<name>.jsonl (atomic) and the parts removed; a later call with
the same items returns that file's contents.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any, Callable, Sequence

import jax

from pit import jsonio


def _digest(items: Sequence[Any]) -> str:
  return hashlib.sha256(jsonio.dumps(list(items)).encode()).hexdigest()[:16]


def _read_part(path: str, n: int, digest: str) -> list | None:
  try:
    with open(path) as f:
      rec = json.load(f)
  except (OSError, ValueError):
    return None
  if (not isinstance(rec, dict) or rec.get("digest") != digest or rec.get("n") != n
      or not isinstance(rec.get("results"), list) or len(rec["results"]) != n):
    return None
  return rec["results"]


def _agreed(values: list[int]) -> list[int]:
  """Process 0's `values` on every process (multi-host: which chunks are done is decided once,
  so every process runs the same generation collectives)."""
  if jax.process_count() == 1:
    return values
  import numpy as np
  from jax.experimental import multihost_utils
  out = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32))
  return [int(x) for x in out]


def map_chunks(directory: str, name: str, items: Sequence[Any],
               fn: Callable[[list, int], Sequence[Any]], chunk_size: int, *,
               progress: Callable[[int, int], None] | None = None) -> list:
  """fn over `items` in chunks of `chunk_size`, resumable (module docstring); returns the
  results in item order. Raises ValueError when `fn` returns the wrong number of results or
  chunk_size < 1. Multi-host: process 0 decides which chunks are done (all processes then read
  them from the shared workdir) and alone writes files."""
  if chunk_size < 1:
    raise ValueError(f"{name}: chunk size must be >= 1, got {chunk_size}")
  items = list(items)
  lead = jax.process_index() == 0
  final = os.path.join(directory, f"{name}.jsonl")
  whole = _digest(items)
  if _agreed([int(lead and _read_final(final, whole, len(items)) is not None)])[0]:
    rows = _read_final(final, whole, len(items))
    if rows is None:
      raise RuntimeError(f"{final}: readable on process 0 but not here (is the workdir shared?)")
    return rows
  if lead and os.path.exists(final):
    logging.warning("%s: unreadable or for other inputs; recomputing", final)
  parts_dir = os.path.join(directory, f"{name}.parts")
  chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
  paths = [os.path.join(parts_dir, f"{c:06d}.json") for c in range(len(chunks))]
  digests = [_digest(chunk) for chunk in chunks]
  done = [0] * len(chunks)
  if lead:
    os.makedirs(parts_dir, exist_ok=True)
    for c, path in enumerate(paths):
      if not os.path.exists(path):
        continue
      if _read_part(path, len(chunks[c]), digests[c]) is not None:
        done[c] = 1
      else:
        logging.warning("%s: unreadable, or not this chunk's results: set aside as %s.bad and "
                        "recomputed", path, path)
        os.replace(path, path + ".bad")
  done = _agreed(done)
  out: list = []
  for c, chunk in enumerate(chunks):
    if done[c]:
      res = _read_part(paths[c], len(chunk), digests[c])
      if res is None:
        raise RuntimeError(f"{paths[c]}: readable on process 0 but not here (is the workdir "
                           "shared?)")
    else:
      res = list(fn(chunk, c))
      if len(res) != len(chunk):
        raise ValueError(f"{name}: chunk {c} gave {len(res)} results for {len(chunk)} items")
      if lead:
        jsonio.write_atomic(paths[c], {"n": len(chunk), "digest": digests[c], "results": res})
    out.extend(res)
    if progress is not None:
      progress(c + 1, len(chunks))
  if sum(done):
    logging.info("%s: %d of %d chunks read back from an earlier run", name, sum(done),
                 len(chunks))
  if lead:
    jsonio.write_jsonl_atomic(final, [{"digest": whole, "n": len(items)}] +
                              [{"result": r} for r in out])
  if jax.process_count() > 1:   # nobody reads the parts any more
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"pit-resumable-{name}")
  if lead:
    shutil.rmtree(parts_dir, ignore_errors=True)
  return out


def _read_final(path: str, digest: str, n: int) -> list | None:
  try:
    with open(path) as f:
      lines = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError):
    return None
  if not lines or lines[0] != {"digest": digest, "n": n} or len(lines) != n + 1:
    return None
  return [rec.get("result") for rec in lines[1:]]
