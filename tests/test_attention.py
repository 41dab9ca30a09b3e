"""Attention paths: `attend` (plain) against a numpy float64 reference, and
attention='dot_product' (jax.nn.dot_product_attention) against plain on everything that
runs on CPU: GQA, left padding, sliding windows, a custom scale, gradients, cached decoding."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pit.model import ModelConfig, Transformer, attend, attend_fused, init_cache


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
