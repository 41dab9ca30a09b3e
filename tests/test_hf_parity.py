"""Logit parity with Hugging Face transformers (PyTorch CPU, fp32) on tiny random models.

Each HF model is built locally from a config, its weights randomised (biases and norm
scales too), saved with `save_pretrained(safe_serialization=True)` and read back
through `pit.hf_convert.load_hf_checkpoint` (safetensors only).
"""
import copy
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pit import hf_convert  # noqa: E402
from pit import sharding as shd  # noqa: E402
from pit.params import model_def  # noqa: E402

V, B, L = 64, 3, 12
COMMON = dict(vocab_size=V, hidden_size=32, num_attention_heads=4, intermediate_size=64,
              num_hidden_layers=2, max_position_embeddings=64)
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(COMMON, num_key_value_heads=2, attention_bias=False, rms_norm_eps=1e-5,
                   rope_theta=500.0, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(COMMON, num_key_value_heads=1, tie_word_embeddings=True)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=V, n_embd=32, n_head=4, n_layer=2, n_positions=64,
                  activation_function="gelu_new")),
    "phi": ("PhiConfig", "PhiForCausalLM",
            dict(COMMON, partial_rotary_factor=0.5, hidden_act="gelu_new")),
}


def build_hf(name, path, **extra):
  config_cls, model_cls, kw = MODELS[name]
  config = getattr(transformers, config_cls)(**{**kw, **extra}, attn_implementation="eager")
  torch.manual_seed(0)
  model = getattr(transformers, model_cls)(config).float().eval()
  with torch.no_grad():
    for p in model.parameters():  # non-trivial biases and norm scales
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, safe_serialization=True)
  assert not [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
  return model


def hf_logits(model, tokens_BL, mask_BL=None):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens_BL.astype(np.int64)),
                attention_mask=None if mask_BL is None else torch.from_numpy(mask_BL.astype(np.int64)))
  return out.logits.float().numpy()


def our_logits(mdef, params, tokens_BL, mask_BL):
  fn = jax.jit(lambda p, t, m: mdef.merge(p)(t, None, m)[0])
  return np.asarray(fn(params, tokens_BL, mask_BL))


def batch():
  rng = np.random.default_rng(0)
  tokens_BL = rng.integers(0, V, (B, L)).astype(np.int32)
  mask_BL = np.arange(L)[None] < np.array([L, 7, 4])[:, None]  # right padding
  return tokens_BL, mask_BL


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_hf(name, tmp_path):
  model = build_hf(name, tmp_path)
  cfg, params = hf_convert.load_hf_checkpoint(str(tmp_path))
  mdef = model_def(cfg)
  tokens_BL, mask_BL = batch()

  ref_BLV = hf_logits(model, tokens_BL)
  assert np.std(ref_BLV) > 0.3  # a meaningful comparison, not near-constant logits
  out_BLV = our_logits(mdef, params, tokens_BL, np.ones((B, L), bool))
  np.testing.assert_allclose(out_BLV, ref_BLV, atol=1e-4, rtol=0)

  # Right-padded batch: compare the real positions only.
  ref_BLV = hf_logits(model, tokens_BL, mask_BL)
  out_BLV = our_logits(mdef, params, tokens_BL, mask_BL)
  np.testing.assert_allclose(out_BLV[mask_BL], ref_BLV[mask_BL], atol=1e-4, rtol=0)


def test_bf16_checkpoint(tmp_path):
  """bf16 safetensors (what real checkpoints ship) load exactly and keep parity."""
  model = build_hf("llama", tmp_path / "fp32")
  with torch.no_grad():  # the fp32 reference holds exactly the bf16-rounded weights
    for p in model.parameters():
      p.copy_(p.bfloat16().float())
  copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
  raw = hf_convert.load_safetensors(str(tmp_path / "bf16"))
  assert raw["model.embed_tokens.weight"].dtype.name == "bfloat16"
  cfg, params = hf_convert.load_hf_checkpoint(str(tmp_path / "bf16"))
  w = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
  np.testing.assert_array_equal(params["block_0"]["attn"]["wq"], w.T.reshape(32, 4, 8))
  assert params["embed"].dtype == np.float32
  tokens_BL, _ = batch()
  np.testing.assert_allclose(our_logits(model_def(cfg), params, tokens_BL, np.ones((B, L), bool)),
                             hf_logits(model, tokens_BL), atol=1e-4, rtol=0)


def test_safetensors_reader_matches_reference(tmp_path):
  from safetensors.numpy import load_file, save_file
  arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array(3, np.int64),
            "c": np.zeros((0, 2), np.float16), "d": np.array([True, False])}
  save_file(arrays, str(tmp_path / "x.safetensors"), metadata={"format": "np"})
  ours, ref = hf_convert.read_safetensors(str(tmp_path / "x.safetensors")), load_file(str(tmp_path / "x.safetensors"))
  assert sorted(ours) == sorted(ref) == sorted(arrays)
  for k in arrays:
    assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape
    np.testing.assert_array_equal(ours[k], ref[k])


def test_config_mapping_is_faithful(tmp_path):
  build_hf("phi", tmp_path)
  cfg, _ = hf_convert.load_hf_checkpoint(str(tmp_path))
  assert (cfg.norm, cfg.position, cfg.rotary_dim, cfg.mlp, cfg.gelu_approximate) == \
      ("layernorm", "rope", 4, "gelu", True)
  assert cfg.parallel_residual and cfg.shared_parallel_norm and cfg.lm_head_bias
  assert cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias and not cfg.tie_embeddings
  assert cfg.norm_eps == 1e-5
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf_convert.config_from_hf(hf, dtype="bfloat16").dtype == "bfloat16"
  # Pre-v5 config.json files keep rope settings at the top level.
  old = {k: v for k, v in hf.items() if k != "rope_parameters"}
  cfg = hf_convert.config_from_hf({**old, "rope_theta": 250.0, "partial_rotary_factor": 0.25,
                                   "rope_scaling": None})
  assert (cfg.rope_theta, cfg.rotary_dim) == (250.0, 2)


def test_gpt2_score_options_are_folded_into_queries(tmp_path):
  """GPT-2's unscaled / inverse-layer-scaled attention maps onto scaled query weights."""
  model = build_hf("gpt2", tmp_path, scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True)
  cfg, params = hf_convert.load_hf_checkpoint(str(tmp_path))
  tokens_BL, _ = batch()
  np.testing.assert_allclose(our_logits(model_def(cfg), params, tokens_BL, np.ones((B, L), bool)),
                             hf_logits(model, tokens_BL), atol=1e-4, rtol=0)


def test_sharded_placement_matches(tmp_path):
  model = build_hf("llama", tmp_path)
  cfg, params = hf_convert.load_hf_checkpoint(str(tmp_path))
  mdef = model_def(cfg)
  mesh = shd.make_mesh((2, 2, 2))
  sharded = hf_convert.shard_params(params, mdef, mesh, shd.DEFAULT_RULES)
  assert sharded["block_0"]["mlp"]["w_up"].addressable_shards[0].data.shape == (16, 32)
  tokens_BL = np.random.default_rng(1).integers(0, V, (4, L)).astype(np.int32)

  @jax.jit
  def run(p, t):
    with shd.axis_rules(mesh, shd.DEFAULT_RULES):
      return mdef.merge(p)(t)[0]
  np.testing.assert_allclose(np.asarray(run(sharded, tokens_BL)), hf_logits(model, tokens_BL),
                             atol=1e-4, rtol=0)


def test_unsupported_and_inconsistent_checkpoints_fail_loudly(tmp_path):
  build_hf("llama", tmp_path)
  hf = json.loads((tmp_path / "config.json").read_text())
  tensors = hf_convert.load_safetensors(str(tmp_path))
  with pytest.raises(ValueError, match="rope_type 'linear'"):
    hf_convert.config_from_hf({**hf, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                         "rope_theta": 1e4}})
  with pytest.raises(ValueError, match="model_type 'bert'"):
    hf_convert.config_from_hf({**hf, "model_type": "bert"})
  with pytest.raises(ValueError, match="not mapped"):
    hf_convert.params_from_hf(hf, {**tensors, "model.extra.weight": np.zeros(3, np.float32)})
  missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(ValueError, match="up_proj"):
    hf_convert.params_from_hf(hf, missing)
  with pytest.raises(ValueError, match="shape"):  # wrong config for these weights
    hf_convert.params_from_hf({**hf, "intermediate_size": 48}, tensors)
  with pytest.raises(FileNotFoundError, match="safetensors"):
    hf_convert.load_safetensors(str(tmp_path / "nowhere"))
