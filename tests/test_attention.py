"""Attention paths: `attend` (plain) against a numpy float64 reference, and
attention='dot_product' (jax.nn.dot_product_attention) against plain on everything that
runs on CPU: GQA, left padding, sliding windows, a custom scale, gradients, cached decoding."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pit.model import (ModelConfig, Transformer, attend, attend_causal, attend_fused, init_cache,
                       num_query_blocks)


def _reference(q, k, v, mask, scale):
  """numpy float64 softmax attention; q [B, L, H, E], k/v [B, K, S, E], mask [B, L, S]."""
  B, L, H, E = q.shape
  K = k.shape[1]
  out = np.zeros((B, L, H, E))
  for h in range(H):
    kh = h // (H // K)
    s = np.einsum("ble,bse->bls", q[:, :, h], k[:, kh]) * scale
    s = np.where(mask, s, -1e30)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[:, :, h] = np.einsum("bls,bse->ble", p, v[:, kh])
  return out


@pytest.mark.parametrize("H,K", [(4, 4), (4, 2), (6, 1)])
def test_attention_paths_match_float64_reference(H, K):
  rng = np.random.default_rng(H * 10 + K)
  B, L, S, E = 2, 5, 7, 8
  q, k, v = (rng.standard_normal(s) for s in ((B, L, H, E), (B, K, S, E), (B, K, S, E)))
  mask = rng.random((B, L, S)) < 0.7
  mask[:, :, 0] = True
  ref = _reference(q, k, v, mask, 0.3)
  args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)] + [jnp.asarray(mask)]
  np.testing.assert_allclose(np.asarray(attend(*args, scale=0.3)), ref, atol=2e-5)
  np.testing.assert_allclose(np.asarray(attend_fused(*args, scale=0.3)), ref, atol=2e-5)


def test_query_blocks_divide_the_length_near_the_target():
  assert num_query_blocks(100) == 1 and num_query_blocks(127) == 1
  assert num_query_blocks(256) == 4 and num_query_blocks(384) == 6 and num_query_blocks(1024) == 16
  assert num_query_blocks(131) == 1          # prime: one block
  assert num_query_blocks(192) == 3
  for L in (128, 200, 250, 384, 768):
    n = num_query_blocks(L)
    assert L % n == 0 and (n == 1 or L // n >= 32)


@pytest.mark.parametrize("L,H,K,window,softcap", [(256, 4, 2, 0, 0.0), (384, 2, 1, 50, 0.0),
                                                  (192, 4, 4, 0, 5.0), (131, 2, 2, 0, 0.0)])
def test_causal_query_blocks_equal_full_attention_values_and_grads(L, H, K, window, softcap):
  rng = np.random.default_rng(L)
  B, E = 2, 8
  q = jnp.asarray(rng.standard_normal((B, L, H, E)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((B, K, L, E)), jnp.float32) for _ in range(2))
  i = np.arange(L)
  causal = i[None, :] <= i[:, None]
  if window:
    causal &= i[:, None] - i[None, :] < window
  valid = np.ones((B, L), bool)
  valid[0, :37] = False                        # left padding in row 0
  mask = jnp.asarray(causal[None] & valid[:, None, :])
  # A query with no visible key (row 0's padding) has no defined output (both give finite
  # values from different key ranges); compare and weight the gradient on the others.
  seen_BL1 = jnp.asarray(np.asarray(mask).any(-1))[..., None, None]
  full = lambda q, k, v: attend(q, k, v, mask, scale=0.3, softcap=softcap) * seen_BL1
  blocked = lambda q, k, v: attend_causal(q, k, v, mask, scale=0.3, softcap=softcap) * seen_BL1
  assert np.all(np.isfinite(np.asarray(attend_causal(q, k, v, mask))))
  np.testing.assert_allclose(np.asarray(blocked(q, k, v)), np.asarray(full(q, k, v)), atol=1e-5)
  w = jnp.asarray(rng.standard_normal((B, L, H, E)), jnp.float32)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * w), argnums=(0, 1, 2))(q, k, v)
           for f in (full, blocked)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)


CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=48,
                  max_seq_len=32)


@pytest.mark.parametrize("extra", [dict(), dict(sliding_window=3), dict(attn_scale=0.2)])
def test_dot_product_attention_equals_plain_forward_grads_and_decode(extra):
  plain_cfg = dataclasses.replace(CFG, **extra)
  fused_cfg = dataclasses.replace(plain_cfg, attention="dot_product")
  plain = Transformer(plain_cfg, nnx.Rngs(0))
  fused = Transformer(fused_cfg, nnx.Rngs(0))
  nnx.update(fused, nnx.state(plain))
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(1, 64, (2, 9)), jnp.int32)
  mask = jnp.asarray(np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9], bool))   # left padding
  positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
  lp, _ = plain(tokens, positions, mask)
  lf, _ = fused(tokens, positions, mask)
  np.testing.assert_allclose(np.asarray(lf), np.asarray(lp), atol=2e-5)

  def loss(model):
    logits, _ = model(tokens, positions, mask)
    return jnp.sum(jnp.where(mask[..., None], logits, 0.0) ** 2)
  gp = jax.tree.leaves(nnx.state(nnx.grad(loss)(plain)))
  gf = jax.tree.leaves(nnx.state(nnx.grad(loss)(fused)))
  for a, b in zip(gp, gf):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4, rtol=1e-4)

  # cached decoding: prefill 9 slots, then one token at slot 9
  def decode(model):
    cache = init_cache(model.cfg, 2, 12)
    kv = jnp.concatenate([mask, jnp.ones((2, 3), bool)], 1)
    _, cache = model(tokens, positions, kv, cache, 0)
    nxt = jnp.asarray([[5], [7]], jnp.int32)
    logits, _ = model(nxt, positions[:, -1:] + 1, kv, cache, 9)
    return logits
  np.testing.assert_allclose(np.asarray(decode(fused)), np.asarray(decode(plain)), atol=2e-5)


def test_unknown_attention_is_a_clear_error():
  with pytest.raises(ValueError, match="model.attention"):
    dataclasses.replace(CFG, attention="flash")
