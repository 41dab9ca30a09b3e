"""Sharded forward passes equal the single-device result; params really are split."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pit import sharding as shd
from pit.model import ModelConfig
from pit.params import init_params, model_def

RULES = shd.DEFAULT_RULES
SINGLE = (1, 1, 1)
MESHES = [(1, 8, 1), (2, 4, 1), (2, 2, 2)]

LLAMA = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
             max_seq_len=32, norm="rmsnorm", position="rope", mlp="swiglu", init_std=0.1)
# d_model=36 is not divisible by fsdp=8, vocab 61 not by tensor=2, 3 heads not by tensor=2.
GPT = dict(vocab_size=61, d_model=36, num_layers=1, num_heads=3, d_ff=72, max_seq_len=32,
           norm="layernorm", norm_eps=1e-5, mlp="gelu", qkv_bias=True, out_bias=True,
           mlp_bias=True, lm_head_bias=True, tie_embeddings=True, init_std=0.1)
CONFIGS = {
    "llama": LLAMA,
    "llama_qkv_bias_scalar_head": {**LLAMA, "num_layers": 1, "qkv_bias": True, "head": "scalar"},
    "phi": {**GPT, "position": "rope", "rotary_fraction": 0.5, "parallel_residual": True,
            "shared_parallel_norm": True},
    "gpt2": {**GPT, "position": "learned"},
}


@functools.cache
def mesh_of(shape):
  return shd.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])


@functools.cache
def mdef_of(name, **kw):
  return model_def(ModelConfig(**{**CONFIGS[name], **kw}))


@functools.cache
def params_of(name, shape):
  """init_params on `shape` (cached: its compile dominates this file's run time)."""
  return init_params(mdef_of(name), mesh_of(shape), RULES, 3)


def perturb(params, seed=1, scale=0.05):
  """Adds fixed noise to every leaf (zero biases, unit norm scales become non-trivial)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: a + jax.device_put(scale * rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
      params)


def ragged_batch(B, L, V, seed=0):
  rng = np.random.default_rng(seed)
  lengths_B = rng.integers(L // 2, L + 1, B)
  mask_BL = np.arange(L)[None] < lengths_B[:, None]
  tokens_BL = rng.integers(0, V, (B, L)).astype(np.int32)
  positions_BL = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy()
  return tokens_BL, positions_BL, mask_BL


def forward(mdef, mesh, params, tokens_BL, positions_BL, mask_BL):
  """Jitted forward on `mesh`; returns host logits [B, L, V] (or values [B, L])."""
  @jax.jit
  def run(params, tokens_BL, positions_BL, mask_BL):
    with shd.axis_rules(mesh, RULES):
      out, _ = mdef.merge(params)(tokens_BL, positions_BL, mask_BL)
      return out
  batch = shd.put_global((tokens_BL, positions_BL, mask_BL), mesh, RULES)
  return np.asarray(jax.device_get(run(params, *batch)))


def check_against_single_device(name, meshes):
  mdef = mdef_of(name)
  cfg = mdef.cfg
  batch = ragged_batch(8, 12, cfg.vocab_size)
  ref = forward(mdef, mesh_of(SINGLE), perturb(params_of(name, SINGLE)), *batch)
  expected_shape = (8, 12) if cfg.head == "scalar" else (8, 12, cfg.vocab_size)
  assert ref.shape == expected_shape and np.all(np.isfinite(ref))
  assert np.std(ref) > 0.1  # outputs are not trivially flat
  for shape in meshes:
    out = forward(mdef, mesh_of(shape), perturb(params_of(name, shape)), *batch)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0, err_msg=f"{name} on mesh {shape}")


@pytest.mark.parametrize("name,meshes", [
    ("llama", MESHES),
    ("phi", MESHES),
    ("llama_qkv_bias_scalar_head", [(1, 8, 1), (2, 2, 2)]),  # (2, 4, 1) only adds run time
])
def test_sharded_forward_matches_single_device(name, meshes):
  check_against_single_device(name, meshes)


def shard_shape(x):
  return x.addressable_shards[0].data.shape


def test_llama_params_are_split_over_the_mesh():
  p = params_of("llama", (1, 8, 1))
  # fsdp=8 splits the `embed` dim (32 -> 4) everywhere it appears.
  assert shard_shape(p["embed"]) == (64, 4)
  assert shard_shape(p["block_0"]["attn"]["wq"]) == (4, 4, 8)
  assert shard_shape(p["block_0"]["attn"]["wo"]) == (4, 8, 4)
  assert shard_shape(p["block_0"]["mlp"]["w_up"]) == (4, 64)
  assert shard_shape(p["lm_head"]) == (4, 64)
  assert shard_shape(p["final_norm"]["scale"]) == (32,)  # norms replicated
  p = params_of("llama", (2, 2, 2))
  # fsdp=2 on `embed`, tensor=2 on vocab / heads / mlp; `data` replicates params.
  assert shard_shape(p["embed"]) == (32, 16)
  assert shard_shape(p["block_0"]["attn"]["wq"]) == (16, 2, 8)
  assert shard_shape(p["block_0"]["attn"]["wk"]) == (16, 1, 8)
  assert shard_shape(p["block_0"]["mlp"]["w_up"]) == (16, 32)
  assert shard_shape(p["block_0"]["mlp"]["w_down"]) == (32, 16)
  assert shard_shape(p["lm_head"]) == (16, 32)
  assert len(p["embed"].sharding.device_set) == 8


def test_indivisible_dims_fall_back_to_replicated_and_still_match():
  """GPT-2 style (learned positions, tied embeddings) with awkward sizes."""
  p = params_of("gpt2", (1, 8, 1))
  assert shard_shape(p["embed"]) == (61, 36)                      # 36 % 8 != 0: replicated
  assert shard_shape(p["block_0"]["attn"]["wq"]) == (36, 3, 12)
  assert shard_shape(p["block_0"]["mlp"]["w_up"]) == (36, 72)
  p = params_of("gpt2", (2, 2, 2))
  assert shard_shape(p["embed"]) == (61, 18)                      # vocab 61 % 2: only fsdp
  assert shard_shape(p["block_0"]["attn"]["wq"]) == (18, 3, 12)   # 3 heads % 2: only fsdp
  assert shard_shape(p["block_0"]["mlp"]["w_up"]) == (18, 36)     # d_ff 72 over tensor
  assert shard_shape(p["pos_embed"]) == (32, 18)
  check_against_single_device("gpt2", [(1, 8, 1), (2, 2, 2)])


def test_bf16_compute_close_to_fp32():
  mesh = mesh_of((2, 2, 2))
  mdef32, mdef16 = mdef_of("llama"), mdef_of("llama", dtype="bfloat16")
  batch = ragged_batch(8, 12, mdef32.cfg.vocab_size)
  params = perturb(params_of("llama", (2, 2, 2)))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(mdef16.abstract_params))
  ref = forward(mdef32, mesh, params, *batch)
  out = forward(mdef16, mesh, params, *batch)
  assert out.dtype == np.float32
  err = np.max(np.abs(out - ref))
  assert 0 < err < 0.03 * np.max(np.abs(ref)), err  # really computed in bf16, but close
  hidden = lambda params, t: mdef16.merge(params).hidden(t, t, jnp.ones(t.shape, bool))[0]
  assert jax.eval_shape(hidden, params, batch[0]).dtype == jnp.bfloat16


def test_remat_gives_identical_logits_and_grads():
  mesh = mesh_of((2, 2, 2))
  tokens_BL, positions_BL, mask_BL = shd.put_global(ragged_batch(8, 12, 64), mesh, RULES)
  params = perturb(params_of("llama", (2, 2, 2)))

  def grads(remat):
    mdef = mdef_of("llama", remat=remat)

    def loss(params):
      with shd.axis_rules(mesh, RULES):
        logits_BLV, _ = mdef.merge(params)(tokens_BL, positions_BL, mask_BL)
      logp_BL = jax.nn.log_softmax(logits_BLV)[..., 0]
      return -jnp.sum(jnp.where(mask_BL, logp_BL, 0.0)), logits_BLV

    grad_fn = jax.grad(loss, has_aux=True)
    jaxpr = str(jax.make_jaxpr(grad_fn)(params))
    return jax.device_get(jax.jit(grad_fn)(params)), ("checkpoint" in jaxpr or "remat" in jaxpr)

  (g_none, logits_none), has_remat = grads("none")
  assert not has_remat
  (g_full, logits_full), has_remat = grads("full")
  assert has_remat
  np.testing.assert_allclose(logits_full, logits_none, atol=1e-6, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6), g_full, g_none)
  assert np.max(np.abs(g_none["embed"])) > 0
