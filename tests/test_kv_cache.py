"""Cached decoding of ragged left-padded batches equals full forward passes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pit import sharding as shd
from pit.model import ModelConfig, init_cache, positions_from_mask
from pit.params import init_params, model_def

RULES = shd.DEFAULT_RULES
LLAMA = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
             max_seq_len=32, init_std=0.1, qkv_bias=True)
GPT2 = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32,
            norm="layernorm", norm_eps=1e-5, position="learned", mlp="gelu", qkv_bias=True,
            out_bias=True, mlp_bias=True, tie_embeddings=True, init_std=0.1)
CONFIGS = {"llama": LLAMA, "gpt2": GPT2}
P, N = 8, 6  # prompt bucket, decoded tokens


def mesh_of(shape):
  return shd.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])


@functools.cache
def setup(name, shape):
  mdef = model_def(ModelConfig(**CONFIGS[name]))
  mesh = mesh_of(shape)
  params = init_params(mdef, mesh, RULES, 0)
  rng = np.random.default_rng(7)
  params = jax.tree.map(  # non-trivial biases / norm scales
      lambda a: a + jax.device_put(0.05 * rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
      params)
  return mdef, mesh, params


def ragged_prompts(B, V, seed=0):
  """Left-padded prompts [B, P] of lengths 1..P and N continuation tokens [B, N]."""
  rng = np.random.default_rng(seed)
  lengths_B = np.resize([P, 3, 1, 5, 7, 2, 8, 4], B)
  mask_BP = np.arange(P)[None] >= (P - lengths_B)[:, None]
  prompt_BP = np.where(mask_BP, rng.integers(1, V, (B, P)), 0).astype(np.int32)
  cont_BN = rng.integers(1, V, (B, N)).astype(np.int32)
  return prompt_BP, mask_BP, cont_BN, lengths_B


def decode_with_cache(mdef, mesh, params, prompt_BP, mask_BP, cont_BN):
  """Prefill at slot 0, then one token per step at slot P+i; returns logits [B, N+1, V].

  Row b's logits at step j predict the token after prompt_b + cont_b[:j].
  """
  B = prompt_BP.shape[0]
  kv_mask_BS = np.concatenate([mask_BP, np.ones((B, N), bool)], axis=1)
  prompt_len_B = mask_BP.sum(1).astype(np.int32)

  @jax.jit
  def run(params, tokens_BL, positions_BL, kv_mask_BS, cache, index):
    with shd.axis_rules(mesh, RULES):
      logits_BLV, cache = mdef.merge(params)(tokens_BL, positions_BL, kv_mask_BS, cache, index)
    return logits_BLV[:, -1], cache

  put = lambda x: shd.put_global(x, mesh, RULES)
  cache = put(init_cache(mdef.cfg, B, P + N))
  kv_mask_BS = put(kv_mask_BS)
  logits, cache = run(params, put(prompt_BP), put(np.asarray(positions_from_mask(mask_BP))),
                      kv_mask_BS, cache, 0)
  out = [logits]
  for i in range(N):
    logits, cache = run(params, put(cont_BN[:, i:i + 1]), put(prompt_len_B[:, None] + i),
                        kv_mask_BS, cache, P + i)
    out.append(logits)
  assert run._cache_size() == 2  # prefill + one decode step shape
  return np.stack([np.asarray(jax.device_get(x)) for x in out], axis=1)


def full_forward(mdef, mesh, params, tokens_BL, mask_BL):
  @jax.jit
  def run(params, tokens_BL, mask_BL):
    with shd.axis_rules(mesh, RULES):
      return mdef.merge(params)(tokens_BL, positions_from_mask(mask_BL), mask_BL)[0]
  return np.asarray(jax.device_get(run(params, *shd.put_global((tokens_BL, mask_BL), mesh, RULES))))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cache_decoding_matches_full_forward(name):
  mdef, mesh, params = setup(name, (1, 1, 1))
  prompt_BP, mask_BP, cont_BN, lengths_B = ragged_prompts(4, mdef.cfg.vocab_size)
  cached_BJV = decode_with_cache(mdef, mesh, params, prompt_BP, mask_BP, cont_BN)

  # (i) one forward pass over the whole left-padded sequence.
  tokens_BT = np.concatenate([prompt_BP, cont_BN], 1)
  mask_BT = np.concatenate([mask_BP, np.ones_like(cont_BN, bool)], 1)
  full_BTV = full_forward(mdef, mesh, params, tokens_BT, mask_BT)
  np.testing.assert_allclose(cached_BJV, full_BTV[:, P - 1:], atol=1e-5, rtol=0)

  # (ii) every row alone, unpadded.
  for b, n in enumerate(lengths_B):
    row_1T = tokens_BT[b:b + 1, P - n:]
    row_TV = mdef.merge(params)(jnp.asarray(row_1T))[0][0]
    np.testing.assert_allclose(cached_BJV[b], np.asarray(row_TV)[n - 1:], atol=1e-5, rtol=0,
                               err_msg=f"row {b} (prompt length {n})")
  # Padding really is masked: changing pad tokens changes nothing.
  noisy_BP = np.where(mask_BP, prompt_BP, (prompt_BP + 17) % mdef.cfg.vocab_size)
  again_BJV = decode_with_cache(mdef, mesh, params, noisy_BP, mask_BP, cont_BN)
  np.testing.assert_allclose(again_BJV, cached_BJV, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cache_decoding_on_data_fsdp_mesh(name):
  mdef, mesh, params = setup(name, (2, 4, 1))
  prompt_BP, mask_BP, cont_BN, _ = ragged_prompts(8, mdef.cfg.vocab_size, seed=1)
  cached_BJV = decode_with_cache(mdef, mesh, params, prompt_BP, mask_BP, cont_BN)
  tokens_BT = np.concatenate([prompt_BP, cont_BN], 1)
  mask_BT = np.concatenate([mask_BP, np.ones_like(cont_BN, bool)], 1)
  full_BTV = full_forward(mdef, mesh, params, tokens_BT, mask_BT)
  np.testing.assert_allclose(cached_BJV, full_BTV[:, P - 1:], atol=1e-5, rtol=0)
  # And the same numbers as on one device.
  mdef1, mesh1, params1 = setup(name, (1, 1, 1))
  single_BJV = decode_with_cache(mdef1, mesh1, params1, prompt_BP, mask_BP, cont_BN)
  np.testing.assert_allclose(cached_BJV, single_BJV, atol=1e-5, rtol=0)
