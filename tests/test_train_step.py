"""The generic train step: SFT loss vs numpy, gradient accumulation, meshes."""
import functools
import math

import jax
import numpy as np
import pytest

from pit import losses, optim
from pit import sharding as shd
from pit import train_step as ts
from pit.params import init_params
from tests.helpers import mesh, optim_cfg, random_lm_batch, tiny_mdef


def _np_sft_loss(logits, targets, loss_mask):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  tok = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  return -(tok * loss_mask).sum() / loss_mask.sum()


def test_sft_loss_matches_float64_reference():
  mdef = tiny_mdef()
  m = mesh((1, 1, 1))
  params = init_params(mdef, m, shd.DEFAULT_RULES, 0)
  batch = random_lm_batch()
  model = mdef.merge(params)
  loss, weight, metrics = losses.sft_loss(model, batch, None, None)
  logits, _ = model(batch["inputs"], batch["positions"], batch["mask"])
  ref = _np_sft_loss(np.asarray(logits), batch["targets"], batch["loss_mask"])
  np.testing.assert_allclose(float(loss), ref, rtol=1e-6, atol=1e-6)
  assert float(weight) == batch["loss_mask"].sum()


@functools.lru_cache(maxsize=None)
def _run_steps(mesh_shape, accum, n_steps=3, batch=None, **model_kw):
  mdef = tiny_mdef(**model_kw)
  m = mesh(mesh_shape)
  rules = shd.DEFAULT_RULES
  ocfg = optim_cfg()
  opt = optim.make_optimizer(ocfg)
  params = init_params(mdef, m, rules, 0)
  state, shardings = ts.create_train_state(params, opt, m, mdef.shardings(m, rules))
  step = ts.make_train_step(mdef, losses.sft_loss, opt, m, rules, shardings, accum_steps=accum,
                            lr_schedule=optim.learning_rate_schedule(ocfg))
  batch = batch or random_lm_batch()
  history = []
  for _ in range(n_steps):
    state, metrics = step(state, shd.put_batch(batch, m, rules))
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history, step


def test_loss_decreases_and_step_compiles_once():
  _, history, step = _run_steps((1, 1, 1), 1, n_steps=6)
  assert history[-1]["loss"] < history[0]["loss"] - 0.05
  assert step.num_compiled() == 1


@pytest.mark.parametrize("accum", [2, 4])
def test_gradient_accumulation_equals_full_batch(accum):
  # Params after 3 Adam steps (lr 1e-2) agree to 2e-5: Adam's normalisation
  # amplifies float32 summation-order noise of near-zero gradients.
  p_full, h_full, _ = _run_steps((1, 1, 1), 1)
  p_acc, h_acc, _ = _run_steps((1, 1, 1), accum)
  np.testing.assert_allclose(h_acc[0]["loss"], h_full[0]["loss"], rtol=1e-6)
  np.testing.assert_allclose(h_acc[0]["grad_norm"], h_full[0]["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p_acc, p_full)


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_train_step_equals_single_device(shape):
  p_one, h_one, _ = _run_steps((1, 1, 1), 1)
  p_mesh, h_mesh, _ = _run_steps(shape, 2)
  for a, b in zip(h_one, h_mesh):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p_one, p_mesh)


def test_state_is_donated():
  mdef = tiny_mdef()
  m = mesh((1, 1, 1))
  opt = optim.make_optimizer(optim_cfg())
  state, sh = ts.create_train_state(init_params(mdef, m, shd.DEFAULT_RULES, 0), opt, m,
                                    mdef.shardings(m, shd.DEFAULT_RULES))
  step = ts.make_train_step(mdef, losses.sft_loss, opt, m, shd.DEFAULT_RULES, sh)
  old = state.params["embed"]
  step(state, shd.put_batch(random_lm_batch(), m, shd.DEFAULT_RULES))
  assert old.is_deleted()


def test_optimizer_state_shardings_follow_params():
  mdef = tiny_mdef()
  m = mesh((1, 8, 1))
  rules = shd.DEFAULT_RULES
  opt = optim.make_optimizer(optim_cfg())
  state, sh = ts.create_train_state(init_params(mdef, m, rules, 0), opt, m, mdef.shardings(m, rules))
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.opt_state) if x.ndim == 2}
  assert any("fsdp" in s for s in specs)
  mu = state.opt_state[1][0].mu["block_0"]["mlp"]["w_up"]
  assert mu.sharding == state.params["block_0"]["mlp"]["w_up"].sharding
  assert mu.addressable_shards[0].data.shape[0] == mu.shape[0] // 8


def _global_norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


@pytest.mark.parametrize("option,loss_rtol,update_rtol", [
    (dict(remat="full"), 1e-6, 1e-5),
    (dict(remat="dots"), 1e-6, 1e-5),
    (dict(remat="dots_saveable"), 1e-6, 1e-5),
    # scanned: other fusion / summation order (the first gradient equal to 2e-4 relative,
    # tests/test_scan_layers.py), amplified by Adam's normalisation of near-zero gradients
    (dict(scan_layers=True), 1e-5, 1e-3),
    (dict(scan_layers=True, remat="full"), 1e-5, 1e-3),
    # bf16 compute, fp32 master weights: the same training within bf16's rounding
    (dict(dtype="bfloat16"), 2e-2, 0.15),
])
def test_model_options_train_like_the_plain_model(option, loss_rtol, update_rtol):
  """Remat policies, scanned layers and bf16 compute are ways to run the same model: 4 AdamW
  steps on a 2 x 2 mesh give the plain float32 run's losses, and params whose distance from
  the plain run's is a small share of how far training moved them; master weights stay
  float32."""
  p_init, _, _ = _run_steps((1, 2, 2), 1, n_steps=0)
  p_ref, h_ref, _ = _run_steps((1, 2, 2), 1, n_steps=4)
  p_opt, h_opt, _ = _run_steps((1, 2, 2), 1, n_steps=4, **option)
  if option.get("scan_layers"):
    from pit.params import unstack_layers
    p_opt = unstack_layers(p_opt)
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(p_opt))
  for a, b in zip(h_ref, h_opt):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=loss_rtol)
  moved = _global_norm(jax.tree.map(np.subtract, p_ref, p_init))
  off = _global_norm(jax.tree.map(np.subtract, p_opt, p_ref))
  assert moved > 0.1 and off < update_rtol * moved, (off, moved)
  leaves = lambda t: {jax.tree_util.keystr(k): np.asarray(v)
                      for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  init, ref, opt = leaves(p_init), leaves(p_ref), leaves(p_opt)
  for name in ref:     # every parameter leaf, not only in aggregate (a decay mask is per leaf)
    m, o = _global_norm(ref[name] - init[name]), _global_norm(opt[name] - ref[name])
    assert o <= max(3 * update_rtol * m, 1e-6), (name, o, m)
  if option.get("dtype") == "bfloat16":   # really computed in bf16: not bit-equal
    assert any(a["loss"] != b["loss"] for a, b in zip(h_ref, h_opt))


@pytest.mark.parametrize("scan", [False, True])
def test_weight_decay_reaches_matrices_only(scan):
  """AdamW's decay mask: every weight matrix (attention, MLP, embedding, head, LoRA factors)
  and nothing else — not norm scales, not biases of any rank, in either layer layout."""
  mdef = tiny_mdef(qkv_bias=True, out_bias=True, mlp_bias=True, scan_layers=scan, lora_rank=2)
  mask = optim._decay_mask(mdef.abstract_params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in p): v
          for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = {k.split("/")[-1] for k, v in flat.items() if v}
  kept = {k.split("/")[-1] for k, v in flat.items() if not v}
  assert decayed == {"embed", "lm_head", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"} | {
      f"{w}_lora_{ab}" for w in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
      for ab in "ab"}, decayed
  assert kept == {"scale", "bq", "bk", "bv", "bo", "b_up", "b_gate", "b_down"}, kept


def test_sft_held_out_nll_is_every_example_once_against_float64():
  """`sft.make_eval_fn`: 11 held-out examples of mixed lengths (two buckets, batch 8, so a
  padded last batch) give the token-weighted mean NLL over every response token once --
  each example scored alone in float64 -- on one device and on a 2x4 mesh."""
  import types
  import ml_collections
  from pit.data import batching
  from pit.pipelines import sft
  mdef = tiny_mdef()
  rng = np.random.default_rng(3)
  examples = []
  for n in (5, 9, 14, 3, 20, 7, 11, 18, 6, 25, 4):
    tokens = rng.integers(3, 60, n + 1).astype(np.int32)
    target = np.zeros(n + 1, bool)
    target[max(1, n // 3):] = True
    examples.append(batching.Example(tokens, target))
  config = ml_collections.ConfigDict(dict(train=dict(batch_size=8),
                                          data=dict(buckets=(16, 32), max_len=32)))
  params = init_params(mdef, mesh((1, 1, 1)), shd.DEFAULT_RULES, 0)
  tot = cnt = 0.0
  for ex in examples:
    b = batching.collate([ex], len(ex.tokens) - 1, 0)
    logits, _ = mdef.merge(params)(b["inputs"], b["positions"], b["mask"])
    n_tok = b["loss_mask"].sum()
    tot += _np_sft_loss(np.asarray(logits), b["targets"], b["loss_mask"]) * n_tok
    cnt += n_tok
  for shape in ((1, 1, 1), (2, 4, 1)):
    m = mesh(shape)
    rt = types.SimpleNamespace(mdef=mdef, mesh=m, rules=shd.DEFAULT_RULES,
                               tokenizer=types.SimpleNamespace(pad_id=0))
    state = types.SimpleNamespace(params=init_params(mdef, m, shd.DEFAULT_RULES, 0))
    got = sft.make_eval_fn(rt, examples, config)(state, 0)["nll"]
    np.testing.assert_allclose(got, tot / cnt, rtol=2e-6)


def _cosine_reference(t, peak, warmup, decay, end_ratio):
  """Linear warmup from 0, then a half cosine from peak to end_ratio x peak over the
  remaining decay - warmup steps (optax.warmup_cosine_decay_schedule's definition), float64."""
  if t < warmup:
    return peak * t / warmup
  frac = min(t - warmup, decay - warmup) / (decay - warmup)
  return peak * (end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def test_decay_steps_zero_decays_over_the_runs_own_steps():
  """optim.decay_steps = 0: the cosine spans total_steps (train.steps); a set value wins."""
  for decay_steps, total, want in ((0, 50, 50), (0, 7, 7), (30, 50, 30)):
    cfg = optim_cfg(decay_steps=decay_steps, warmup_steps=5, learning_rate=1e-2,
                    end_lr_ratio=0.1)
    assert optim.decay_length(cfg, total) == want
    schedule = optim.learning_rate_schedule(cfg, total)
    for t in range(0, total + 10):
      assert float(schedule(t)) == pytest.approx(
          _cosine_reference(t, 1e-2, 5, max(want, 6), 0.1), rel=1e-5, abs=1e-9), (t, want)
  with pytest.raises(ValueError, match="no step count"):
    optim.learning_rate_schedule(optim_cfg(decay_steps=0))
  with pytest.raises(ValueError, match="decay_steps must be >= 0"):
    optim.decay_length(optim_cfg(decay_steps=-1), 10)
