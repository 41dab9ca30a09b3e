"""Checksums of array pytrees, computed where the arrays live (sharded, on device).

A checkpoint stores, for every leaf, two 32-bit sums of the leaf's raw bits
(`leaf_checksums`): s1 = Σ wᵢ and s2 = Σ wᵢ·hᵢ (mod 2³²), where wᵢ are the leaf's
bytes read as little-endian 32-bit words (16- and 8-bit items widen to one word
each) and hᵢ = 2654435761·i + 1 mixes in the flat position i (Knuth's
multiplicative hash), so a bit flip changes s1 and a swap of two words changes s2.
Modular sums are exact and order-free, so the result is the same on every mesh
and every number of devices, and a sharded array is summed in place (an
all-reduce of two scalars): no host ever gathers the state.

`numpy_checksums` is the float64-free numpy reference the tests compare with.
Not a cryptographic hash: it detects damage (truncated, flipped or zeroed
bytes), not tampering.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ALGORITHM = "u32sum2-v1"
_MULT = np.uint32(2654435761)


def path_name(path) -> str:
  """A key path as "params/block_0/attn/wq": the same for a TrainState attribute and a
  dict key, so a partial restore of {"params": ...} matches the full state's names."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _words(x: jax.Array) -> jax.Array:
  """The leaf's bits as uint32 words (one per item for items of <= 4 bytes)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)
  if size == 8:   # [..., 2] words
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  raise TypeError(f"cannot checksum dtype {x.dtype}")


def _leaf_sums(x: jax.Array) -> jax.Array:
  w = _words(x).reshape(-1)
  idx = jax.lax.iota(jnp.uint32, w.shape[0])
  h = idx * jnp.uint32(_MULT) + jnp.uint32(1)
  return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * h, dtype=jnp.uint32)])


@jax.jit
def _tree_sums(tree):
  return jax.tree.map(_leaf_sums, tree)


def leaf_checksums(tree: Any) -> dict[str, list[int]]:
  """{path_name: [s1, s2]} for every array leaf of `tree` (jax or numpy arrays)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  arrays = [jnp.asarray(x) if not isinstance(x, jax.Array) else x for _, x in leaves]
  sums = jax.device_get(_tree_sums(arrays))
  return {path_name(p): [int(s[0]), int(s[1])] for (p, _), s in zip(leaves, sums)}


def numpy_checksums(tree: Any) -> dict[str, list[int]]:
  """The same sums computed in numpy with uint64 arithmetic (reference for tests)."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(x))
    if a.dtype == np.bool_:
      a = a.astype(np.uint8)
    size = a.dtype.itemsize
    w = (a.view(np.uint32) if size in (4, 8) else a.view(f"uint{8 * size}")).reshape(-1)
    w = w.astype(np.uint64)
    i = np.arange(w.shape[0], dtype=np.uint64)
    h = (i * np.uint64(_MULT) + np.uint64(1)) % np.uint64(2 ** 32)
    s1 = int(w.sum() % np.uint64(2 ** 32))
    s2 = int(((w * h) % np.uint64(2 ** 32)).sum() % np.uint64(2 ** 32))
    out[path_name(path)] = [s1, s2]
  return out


def compare(expected: dict[str, list[int]], actual: dict[str, list[int]]) -> str | None:
  """None when every leaf of `actual` has its expected sums, else the first reason."""
  for name, sums in actual.items():
    if name not in expected:
      return f"no checksum was saved for {name}"
    if list(expected[name]) != list(sums):
      return f"checksum mismatch in {name} (saved {expected[name]}, read {list(sums)})"
  return None
