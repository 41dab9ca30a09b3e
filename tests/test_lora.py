"""LoRA (`train.lora`, `pit.lora`): the adapted model's function, what trains, what is saved,
resume, the merged model every loader reads."""
import importlib
import json
import os

import jax
import numpy as np
import pytest

from pit import lora, roles
from pit import sharding as shd
from pit.checkpoint import Checkpointer
from pit.main import run
from pit.model import ModelConfig
from pit.params import init_params, model_def


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(jax.device_get(v))
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_adapted_model_equals_the_merged_plain_model():
  """x W + s (x A) B computed by the model equals x (W + s A B) computed by `lora.merge`
  (two different computations), for every target incl. the [H, E, D] output projection;
  with B = 0 (a fresh adapter) it equals the frozen model exactly."""
  cfg = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, num_layers=2)
  lcfg = lora.LoraConfig(rank=3, alpha=6.0)
  plain, adapted = model_def(cfg), lora.augment(model_def(cfg), lcfg)
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  params = init_params(adapted, mesh, shd.DEFAULT_RULES, 0)
  tokens = np.random.default_rng(0).integers(0, 64, (2, 10)).astype(np.int32)
  logits = lambda mdef, p: np.asarray(jax.jit(lambda q: mdef.merge(q)(tokens)[0])(p))
  frozen, trained = lora.split(params)
  assert all(k.endswith(lora.SUFFIXES) for k in _flat(trained))
  base = logits(plain, frozen)
  np.testing.assert_array_equal(logits(adapted, params), base)    # B = 0 at the start
  rng = np.random.default_rng(1)
  trained = jax.tree.map(lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(np.float32), trained)
  full = lora.join(frozen, trained)
  out = logits(adapted, full)
  assert np.abs(out - base).max() > 1e-2                           # the adapters do something
  np.testing.assert_allclose(out, logits(plain, lora.merge(full, lcfg.scale)), atol=2e-5)
  # the merge itself against float64 numpy for the output projection [H, E, D]
  a, b = (np.asarray(full["block_0"]["attn"][k], np.float64) for k in ("wo_lora_a", "wo_lora_b"))
  w = np.asarray(full["block_0"]["attn"]["wo"], np.float64)
  np.testing.assert_allclose(lora.merge(full, 2.0)["block_0"]["attn"]["wo"],
                             w + 2.0 * np.einsum("her,rd->hed", a, b), atol=1e-6)


def _config(name, preset, steps, **lora_kw):
  c = importlib.import_module(f"configs.{name}").get_config(preset)
  c.progress = False
  c.train.update(steps=steps, batch_size=8, log_every=1, eval_every=0)
  c.optim.update(learning_rate=1e-2, warmup_steps=0, decay_steps=8)
  c.checkpoint.update(every=2, async_save=False)
  c.train.lora.update(**{"rank": 4, "alpha": 8.0, **lora_kw})
  return c


def test_only_adapters_train_and_are_saved_resume_is_exact_and_loaders_see_the_merge(tmp_path):
  mesh = shd.make_mesh((1, -1, 1))
  # 4 steps straight, and 2 + 2 with a restart in between.
  run(_config("sft", "tiny", 4), str(tmp_path / "straight"))
  run(_config("sft", "tiny", 2), str(tmp_path / "split"))
  # resuming the factors onto other frozen weights (here: another init seed) or another
  # LoRA setting is refused, naming why
  other = _config("sft", "tiny", 4)
  other.train.seed = 7
  with pytest.raises(ValueError, match="cannot resume LoRA training: the frozen weights differ"):
    run(other, str(tmp_path / "split"))
  other = _config("sft", "tiny", 4, alpha=4.0)
  with pytest.raises(ValueError, match="cannot resume LoRA training: train.lora alpha changed"):
    run(other, str(tmp_path / "split"))
  run(_config("sft", "tiny", 4), str(tmp_path / "split"))

  ckpt = Checkpointer(str(tmp_path / "straight" / "checkpoints"), read_only=True, async_save=False)
  saved = ckpt.saved_param_keys(4)
  ckpt.close()
  # only blocks carry factors; no embedding, norm or head is saved
  assert saved == ["block_0", "block_1"]
  meta = json.load(open(tmp_path / "straight" / "config_sft.json"))
  assert "lora_rank" not in meta["model"] and meta["train"]["lora"]["rank"] == 4

  straight = roles.load("policy", str(tmp_path / "straight"), mesh=mesh, rules=shd.DEFAULT_RULES)
  split = roles.load("policy", str(tmp_path / "split"), mesh=mesh, rules=shd.DEFAULT_RULES)
  assert straight.path.endswith(os.path.join("merged", "checkpoints")) and straight.step == 4
  jax.tree.map(np.testing.assert_array_equal, _flat(straight.params), _flat(split.params))

  # Frozen leaves are exactly the initial model's; adapted weights moved.
  cfg = _config("sft", "tiny", 4)
  init = _flat(init_params(straight.mdef, mesh, shd.DEFAULT_RULES, int(cfg.train.seed)))
  now = _flat(straight.params)
  for k in ("embed", "final_norm/scale", "block_0/attn_norm/scale", "lm_head"):
    np.testing.assert_array_equal(now[k], init[k])
  for k in ("block_0/attn/wq", "block_1/mlp/w_down"):
    assert np.abs(now[k] - init[k]).max() > 1e-6


def test_reward_model_lora_trains_its_head_and_ppo_runs_with_lora(tmp_path):
  mesh = shd.make_mesh((1, -1, 1))
  c = _config("reward", "tiny", 2)
  c.data.update(synthetic_train_size=64, synthetic_eval_size=16)
  run(c, str(tmp_path / "rm"))
  ckpt = Checkpointer(str(tmp_path / "rm" / "checkpoints"), read_only=True, async_save=False)
  assert set(ckpt.saved_param_keys(2)) == {"block_0", "block_1", "score", "score_bias"}
  ckpt.close()
  rm = roles.load("reward", str(tmp_path / "rm"), mesh=mesh, rules=shd.DEFAULT_RULES)
  init = init_params(rm.mdef, mesh, shd.DEFAULT_RULES, int(c.train.seed))
  assert np.abs(np.asarray(rm.params["score"]) - np.asarray(init["score"])).max() > 1e-6  # trained
  np.testing.assert_array_equal(np.asarray(rm.params["embed"]), np.asarray(init["embed"]))

  # PPO from a LoRA SFT run, with LoRA: the exported policy is a plain (merged) model that
  # moved, its rollouts were sampled from the merged weights.
  run(_config("sft", "tiny", 2), str(tmp_path / "sft"))
  p = _config("ppo", "tiny", 2)
  p.ppo.update(init_checkpoint_dir=str(tmp_path / "sft"), rollout_batch_size=8, max_new_tokens=4,
               epochs=1, ent_coef=0.5)   # an entropy bonus: the policy moves even if all scores tie
  p.train.update(batch_size=4)
  summary = run(p, str(tmp_path / "ppo"))
  assert summary is not None
  sft = roles.load("policy", str(tmp_path / "sft"), mesh=mesh, rules=shd.DEFAULT_RULES)
  pol = roles.load("policy", str(tmp_path / "ppo"), mesh=mesh, rules=shd.DEFAULT_RULES)
  assert pol.path.endswith(os.path.join("policy", "checkpoints"))
  moved = np.abs(_flat(pol.params)["block_0/attn/wq"] - _flat(sft.params)["block_0/attn/wq"]).max()
  assert moved > 0
  np.testing.assert_array_equal(_flat(pol.params)["embed"], _flat(sft.params)["embed"])


def test_bad_lora_settings_are_named():
  with pytest.raises(ValueError, match="train.lora.rank"):
    lora.LoraConfig.from_config({"rank": -1})
  with pytest.raises(ValueError, match="train.lora.dropout"):
    lora.LoraConfig.from_config({"rank": 4, "dropout": 0.1})
  with pytest.raises(ValueError, match="train.lora.targets.*'w_in'"):
    lora.LoraConfig.from_config({"rank": 4, "targets": ("wq", "w_in")})
  assert not lora.LoraConfig.from_config(None).enabled
