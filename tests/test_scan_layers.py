"""Scanned layers (`model.scan_layers`): one stacked `layers` module applied by `lax.scan`
computes exactly what the unrolled blocks compute (forward, gradient, remat, KV-cache decoding,
per-layer sliding windows), and every way params come in or go out handles the stacked layout
(HF import / export, checkpoints of either layout, LoRA merge, the CLI's train + generate)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pit import hf_convert, hf_export, lora, losses, roles
from pit import sharding as shd
from pit.model import ModelConfig
from pit.params import init_params, model_def, stack_layers, unstack_layers
from pit.sampler import Sampler
from tests.conftest import REPO
from tests.helpers import random_lm_batch

# GQA, alternating sliding windows (Gemma 2's pattern: the window is scanned as data), biases
CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=64,
                  max_seq_len=64, sliding_window=5, sliding_window_pattern=2, qkv_bias=True)
MESH = lambda: shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _pair(cfg=CFG, seed=0):
  """(unrolled mdef, params, scanned mdef, the same params stacked)."""
  m0, m1 = model_def(cfg), model_def(cfg.replace(scan_layers=True))
  p0 = init_params(m0, MESH(), shd.DEFAULT_RULES, seed)
  rng = np.random.default_rng(seed)   # nonzero biases, so a misplaced one shows
  p0 = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(a.dtype), p0)
  p1 = stack_layers(p0, cfg.num_layers, jnp.stack)
  return m0, p0, m1, p1


def test_stacked_params_shapes_and_axes():
  m1 = model_def(CFG.replace(scan_layers=True))
  assert not any(k.startswith("block_") for k in m1.abstract_params)
  assert m1.abstract_params["layers"]["attn"]["wq"].shape == (3, 32, 4, 8)
  assert m1.axes["layers"]["attn"]["wq"].names == ("layers", "embed", "q_heads", "head_dim")
  m0, p0, _, p1 = _pair()
  assert jax.tree.structure(p1) == jax.tree.structure(m1.abstract_params)
  back = unstack_layers(p1)
  jax.tree.map(np.testing.assert_array_equal, back, p0)
  with pytest.raises(ValueError, match="block_2"):
    stack_layers({k: v for k, v in p0.items() if k != "block_2"}, 3)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_forward_and_gradient_equal_unrolled(remat):
  cfg = CFG.replace(remat=remat)
  m0, p0, m1, p1 = _pair(cfg)
  batch = random_lm_batch(B=4, L=16, V=64)
  mesh = MESH()

  def loss(mdef):
    def f(params):
      with shd.axis_rules(mesh, shd.DEFAULT_RULES):
        return losses.sft_loss(mdef.merge(params), batch, None, None)[0]
    return jax.jit(jax.value_and_grad(f))

  l0, g0 = loss(m0)(p0)
  l1, g1 = loss(m1)(p1)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
  g1 = unstack_layers(g1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6), g0, g1)
  # the windows matter: the same scanned model without them computes something else
  m2 = model_def(cfg.replace(scan_layers=True, sliding_window=0))
  l2, _ = loss(m2)(p1)
  assert abs(float(l2) - float(l0)) > 1e-5


def test_scanned_cache_decoding_equals_unrolled():
  """The sampler (which decodes a scanned model through its unrolled view) and the scanned
  model's own cached forward give the unrolled model's tokens, log-probs and logits."""
  m0, p0, m1, p1 = _pair()
  mesh = MESH()
  from pit.model import init_cache
  tokens = jnp.asarray(np.random.default_rng(2).integers(1, 64, (2, 6)), jnp.int32)
  step = jnp.asarray([[5], [7]], jnp.int32)
  outs = []
  for m, p in ((m0, p0), (m1, p1)):
    model = m.merge(p)
    mask = jnp.ones((2, 10), bool)
    logits, cache = model(tokens, None, mask, init_cache(m.cfg, 2, 10), 0)
    nxt, _ = model(step, jnp.full((2, 1), 6), mask, cache, 6)
    outs.append((np.asarray(logits), np.asarray(nxt)))
  np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5)
  np.testing.assert_allclose(outs[1][1], outs[0][1], atol=1e-5)
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
  for temperature in (0.0, 1.0):
    outs = [Sampler(m, mesh, shd.DEFAULT_RULES, pad_id=0, eos_id=63).generate(
        p, prompts, max_new_tokens=12, temperature=temperature, seed=3)
        for m, p in ((m0, p0), (m1, p1))]
    np.testing.assert_array_equal(outs[1].tokens, outs[0].tokens)
    np.testing.assert_allclose(outs[1].logprobs, outs[0].logprobs, atol=1e-5)


def test_hf_export_and_import_of_the_stacked_layout(tmp_path):
  """Scanned params export to the same HF tensors as the unrolled ones, and an HF directory
  imports into a scanned model as the stacked unrolled import (placed on a mesh too)."""
  cfg = CFG.replace(sliding_window=0, sliding_window_pattern=1, qkv_bias=False)   # a Llama
  m0, p0, m1, p1 = _pair(cfg)
  t0 = dict(hf_export.hf_tensors(cfg, p0))
  t1 = dict(hf_export.hf_tensors(cfg.replace(scan_layers=True), p1))
  assert t0.keys() == t1.keys() and "model.layers.2.self_attn.q_proj.weight" in t1
  for k in t0:
    np.testing.assert_array_equal(t1[k], t0[k])
  hf_export.export(cfg.replace(scan_layers=True), p1, str(tmp_path / "hf"))
  _, host = hf_convert.load_hf_checkpoint(str(tmp_path / "hf"), scan_layers=True)
  assert host["layers"]["mlp"]["w_up"].shape[0] == 3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=1e-7), jax.device_get(p1), host)
  mesh = shd.make_mesh((1, 2, 2), devices=jax.devices()[:4])
  placed = hf_convert.load_params_sharded(str(tmp_path / "hf"), m1, mesh, shd.DEFAULT_RULES)
  assert placed["layers"]["attn"]["wq"].sharding.spec[0] is None    # the layer axis: replicated
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), a, atol=1e-7),
               jax.device_get(p1), placed)


def test_lora_merge_of_stacked_factors():
  lcfg = lora.LoraConfig(rank=2, alpha=4.0)
  a0 = lora.augment(model_def(CFG), lcfg)
  p0 = init_params(a0, MESH(), shd.DEFAULT_RULES, 0)
  rng = np.random.default_rng(1)
  p0 = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), p0)
  p1 = stack_layers(p0, CFG.num_layers, jnp.stack)
  merged = lora.merge(p1, lcfg.scale)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=1e-6),
               lora.merge(p0, lcfg.scale), unstack_layers(merged))
  # fresh factors: A's scale is 1 / sqrt(fan_in) of ONE layer's input, not of N layers'
  a1 = lora.augment(model_def(CFG.replace(scan_layers=True)), lcfg)
  shards = a1.shardings(MESH(), shd.DEFAULT_RULES)
  _, abstract_trainable = lora.split(a1.abstract_params)
  _, trainable_shards = lora.split(shards)
  fresh = lora.fresh_factors(abstract_trainable, trainable_shards, 0)
  wq_a = np.asarray(fresh["layers"]["attn"]["wq_lora_a"])   # [N, D, r]
  assert wq_a.shape == (3, 32, 2)
  assert 0.7 < wq_a.std() * 32 ** 0.5 < 1.3


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_cli_trains_scanned_checkpoints_and_restores_either_layout(tmp_path):
  """`--config.model.scan_layers=True` trains, checkpoints, resumes and generates; its
  checkpoint restores into an unrolled model (and an unrolled one into a scanned model)."""
  args = [sys.executable, "-m", "pit.main", "--config=configs/sft.py:tiny", "--config.progress=False",
          "--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.num_layers=3",
          "--config.train.steps=4", "--config.train.batch_size=8", "--config.train.log_every=1",
          "--config.checkpoint.every=2", "--config.mesh.shape=(1,2,2)"]
  runs = {}
  for scan in (True, False):
    wd = tmp_path / f"scan_{scan}"
    r = subprocess.run(args + [f"--workdir={wd}", f"--config.model.scan_layers={scan}"], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs[scan] = [json.loads(l)["loss"] for l in open(wd / "metrics.jsonl")]
  np.testing.assert_allclose(runs[True], runs[False], rtol=1e-4)   # a seed: one model, either layout
  wd = tmp_path / "scan_True"
  r = subprocess.run(args + [f"--workdir={wd}", "--config.model.scan_layers=True",
                             "--config.pipeline=generate", "--config.generate.max_new_tokens=6"],
                     cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(open(wd / "generations.jsonl").readlines()) == 4
  cfg = ModelConfig.from_config(json.load(open(wd / "config_sft.json"))["model"])
  assert cfg.scan_layers
  mesh = MESH()
  scanned, step = roles.restore_params(model_def(cfg), str(wd), mesh, shd.DEFAULT_RULES)
  unrolled, step2 = roles.restore_params(model_def(cfg.replace(scan_layers=False)), str(wd), mesh,
                                         shd.DEFAULT_RULES)
  assert step == step2 == 4 and "block_2" in unrolled
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(unstack_layers(scanned)),
               jax.device_get(unrolled))
  back, _ = roles.restore_params(model_def(cfg), str(tmp_path / "scan_False"), mesh,
                                 shd.DEFAULT_RULES)
  assert "layers" in back and back["layers"]["attn"]["wq"].shape[0] == 3
  # A reward model's trunk from the LM checkpoint, every layout pair, same depth and deeper
  # (the extra top layers identity-initialised: attention and MLP output projections zero)
  from pit import pretrained
  lm = {True: jax.device_get(unstack_layers(scanned)),
        False: jax.device_get(roles.restore_params(model_def(cfg.replace(scan_layers=False)),
                                                   str(tmp_path / "scan_False"), mesh,
                                                   shd.DEFAULT_RULES)[0])}
  for saved in (True, False):
    for scan in (True, False):
      for depth in (3, 4):
        rm = model_def(cfg.replace(head="scalar", scan_layers=scan, num_layers=depth))
        p = pretrained.trunk_from_lm_checkpoint(rm, mesh, shd.DEFAULT_RULES,
                                                str(tmp_path / f"scan_{saved}" / "checkpoints"), 0)
        assert jax.tree.structure(p) == jax.tree.structure(rm.abstract_params)
        p = jax.device_get(unstack_layers(p))
        src = lm[saved]
        np.testing.assert_array_equal(p["embed"], src["embed"])
        for i in range(3):
          jax.tree.map(np.testing.assert_array_equal, p[f"block_{i}"], src[f"block_{i}"])
        if depth == 4:
          assert not np.any(p["block_3"]["attn"]["wo"]) and not np.any(p["block_3"]["mlp"]["w_down"])
          assert np.any(p["block_3"]["attn"]["wq"])


def test_every_model_field_is_a_config_field():
  """`--config.model.<field>` reaches every ModelConfig field a user sets (the LoRA fields
  come from train.lora), scan_layers and attention included."""
  import dataclasses
  from pit.config_base import model_defaults
  fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"lora_rank", "lora_alpha",
                                                                "lora_targets"}
  assert fields <= set(model_defaults().keys()), sorted(fields - set(model_defaults().keys()))
  assert ModelConfig.from_config(model_defaults()).scan_layers is False
