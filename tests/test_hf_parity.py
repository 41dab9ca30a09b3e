"""Parity with Hugging Face transformers (PyTorch CPU, fp32) on tiny random models, one per
supported family, and the round trip HF -> PIT -> HF.

Each HF model is built locally from a config with every option the family has switched on
where it changes the function (Llama-3.1 rope scaling, sliding windows shorter than the
sequence, soft-capping that bites, q/k norms, head_dim != d_model / heads), its weights
randomised (biases and norm scales too), saved with `save_pretrained` (safetensors) and read
back through `pit.hf_convert` (memory-mapped, placed straight onto the mesh).
"""
import copy
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pit import hf_convert, hf_export  # noqa: E402
from pit import sharding as shd  # noqa: E402
from pit.params import model_def  # noqa: E402
from pit.sampler import Sampler  # noqa: E402

V, B, L = 64, 3, 12
COMMON = dict(vocab_size=V, hidden_size=32, num_attention_heads=4, intermediate_size=64,
              num_hidden_layers=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(COMMON, num_key_value_heads=2, attention_bias=False, rms_norm_eps=1e-5,
                   rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(COMMON, num_key_value_heads=2, sliding_window=4, head_dim=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(COMMON, num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(COMMON, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM",
              dict(COMMON, num_key_value_heads=1, head_dim=16, hidden_act="gelu_pytorch_tanh")),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(COMMON, num_key_value_heads=2, head_dim=16, sliding_window=4,
                    query_pre_attn_scalar=12, attn_logit_softcapping=2.0,
                    final_logit_softcapping=3.0, num_hidden_layers=3)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             dict(COMMON, num_key_value_heads=2, sliding_window=5)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=V, n_embd=32, n_head=4, n_layer=2, n_positions=64,
                  activation_function="gelu_new", bos_token_id=1, eos_token_id=2)),
    "phi": ("PhiConfig", "PhiForCausalLM",
            dict(COMMON, partial_rotary_factor=0.5, hidden_act="gelu_new")),
}


def build_hf(name, path, **extra):
  config_cls, model_cls, kw = MODELS[name]
  config = getattr(transformers, config_cls)(**{**kw, **extra})
  config._attn_implementation = "eager"
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


def our_logits(mdef, params, tokens_BL, mask_BL, mesh=None):
  mesh = mesh or shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])

  @jax.jit
  def run(p, t, m):
    with shd.axis_rules(mesh, shd.DEFAULT_RULES):
      return mdef.merge(p)(t, None, m)[0]
  return np.asarray(run(params, tokens_BL, mask_BL))


def batch():
  rng = np.random.default_rng(0)
  tokens_BL = rng.integers(3, V, (B, L)).astype(np.int32)
  mask_BL = np.arange(L)[None] < np.array([L, 7, 4])[:, None]  # right padding, ragged
  return tokens_BL, mask_BL


def load(path, mesh):
  hf = hf_convert.read_hf_config(str(path))
  mdef = model_def(hf_convert.config_from_hf(hf))
  return mdef, hf_convert.load_params_sharded(str(path), mdef, mesh, shd.DEFAULT_RULES)


def greedy(model, mdef, params, mesh, prompts, n=32):
  """32 greedy tokens from both (left-padded ragged prompts; no eos stops either)."""
  P = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), P), np.int64)
  mask = np.zeros((len(prompts), P), np.int64)
  for i, p in enumerate(prompts):
    ids[i, P - len(p):], mask[i, P - len(p):] = p, 1
  with torch.no_grad():
    ref = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                         eos_token_id=None).numpy()[:, P:]
  sampler = Sampler(mdef, mesh, shd.DEFAULT_RULES, pad_id=0, eos_id=V + 7)
  ours = sampler.generate(params, prompts, max_new_tokens=n, temperature=0.0).tokens
  return ours, ref


@pytest.mark.parametrize("name", list(MODELS))
def test_family_parity_and_round_trip(name, tmp_path):
  """Logits within 1e-4 (full and ragged batch) on one device and on a 2x4 mesh, 32 greedy
  tokens identical, and HF -> PIT -> HF gives transformers the same logits."""
  model = build_hf(name, tmp_path / "hf")
  mesh1 = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  mdef, params = load(tmp_path / "hf", mesh1)
  assert mdef.cfg.family == name
  tokens_BL, mask_BL = batch()

  ref_BLV = hf_logits(model, tokens_BL)
  assert np.std(ref_BLV) > 0.3  # a meaningful comparison, not near-constant logits
  np.testing.assert_allclose(our_logits(mdef, params, tokens_BL, np.ones((B, L), bool)), ref_BLV,
                             atol=1e-4, rtol=0)
  ref_BLV = hf_logits(model, tokens_BL, mask_BL)
  out_BLV = our_logits(mdef, params, tokens_BL, mask_BL)
  np.testing.assert_allclose(out_BLV[mask_BL], ref_BLV[mask_BL], atol=1e-4, rtol=0)

  mesh = shd.make_mesh((2, 4, 1))   # data 2 x fsdp 4: params sharded over 4 devices
  mdef8, params8 = load(tmp_path / "hf", mesh)
  leaf = params8["block_0"]["mlp"]["w_down"]
  assert len({s.device for s in leaf.addressable_shards}) == 8
  tokens_4L = np.concatenate([tokens_BL, tokens_BL[:1]])
  mask_4L = np.concatenate([mask_BL, mask_BL[:1]])
  np.testing.assert_allclose(our_logits(mdef8, params8, tokens_4L, mask_4L, mesh)[mask_4L],
                             hf_logits(model, tokens_4L, mask_4L)[mask_4L], atol=1e-4, rtol=0)

  prompts = [list(tokens_BL[0, :9]), list(tokens_BL[1, :5]), list(tokens_BL[2, :3])]
  ours, ref = greedy(model, mdef, params, mesh1, prompts)
  np.testing.assert_array_equal(ours, ref)
  ours8, _ = greedy(model, mdef8, params8, mesh, prompts + prompts[:1])
  np.testing.assert_array_equal(ours8[:3], ref)

  hf_export.export(mdef.cfg, params, str(tmp_path / "back"), family=name)
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back")).float().eval()
  assert type(back) is type(model)
  np.testing.assert_allclose(hf_logits(back, tokens_BL, mask_BL)[mask_BL],
                             hf_logits(model, tokens_BL, mask_BL)[mask_BL], atol=2e-5, rtol=0)


def test_export_infers_the_family_and_refuses_what_it_cannot_express(tmp_path):
  from pit.model import ModelConfig
  base = ModelConfig(vocab_size=V, d_model=32, num_heads=4, d_ff=64)
  assert hf_export.infer_family(base) == "llama"
  assert hf_export.infer_family(base.replace(qkv_bias=True)) == "qwen2"
  assert hf_export.infer_family(base.replace(qk_norm=True)) == "qwen3"
  assert hf_export.infer_family(base.replace(embed_scale=True, mlp="geglu")) == "gemma"
  assert hf_export.infer_family(base.replace(sliding_window=8)) == "mistral"
  with pytest.raises(ValueError, match="post_norms"):   # llama has no post norms
    hf_export.hf_config(base.replace(post_norms=True), "llama")
  with pytest.raises(ValueError, match="mlp"):          # Phi-2's MLP is not gated
    hf_export.hf_config(base, "phi")
  with pytest.raises(ValueError, match="family 'bert'"):
    hf_export.hf_config(base, "bert")


def test_reward_model_exports_as_sequence_classification(tmp_path):
  """A scalar-head model loads as LlamaForSequenceClassification and scores every row at
  its last real token exactly as we do (our bias travels as pit_score_bias)."""
  from pit.model import ModelConfig, gather_last
  from pit.params import init_params
  cfg = ModelConfig(vocab_size=V, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, head="scalar")
  mdef = model_def(cfg)
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  params = init_params(mdef, mesh, shd.DEFAULT_RULES, 0)
  params = {**params, "score_bias": params["score_bias"] + 0.25}

  class Tok:  # the ids the exported config carries (pad marks a row's end for HF)
    bos_id, eos_id, pad_id = 1, 2, 0
  hf_export.export(cfg, params, str(tmp_path), tokenizer=Tok())
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf["architectures"] == ["LlamaForSequenceClassification"] and hf["pit_score_bias"] == 0.25
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
  tokens_BL, mask_BL = batch()
  tokens_BL = np.where(mask_BL, tokens_BL, 0)
  with torch.no_grad():
    ref_B = model(input_ids=torch.from_numpy(tokens_BL.astype(np.int64)),
                  attention_mask=torch.from_numpy(mask_BL.astype(np.int64))).logits[:, 0].numpy()
  values = our_logits(mdef, params, tokens_BL, mask_BL)
  ours_B = np.asarray(gather_last(values, mask_BL))
  np.testing.assert_allclose(ours_B, ref_B + 0.25, atol=1e-5)


def test_sharded_checkpoint_with_index_and_bf16(tmp_path):
  """A sharded bf16 checkpoint (index.json) loads exactly; export writes shards + index
  when over the shard size, and transformers reads them."""
  model = build_hf("llama", tmp_path / "fp32")
  with torch.no_grad():  # the fp32 reference holds exactly the bf16-rounded weights
    for p in model.parameters():
      p.copy_(p.bfloat16().float())
  copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="20KB")
  assert os.path.exists(tmp_path / "bf16" / "model.safetensors.index.json")
  assert len(hf_convert.checkpoint_files(str(tmp_path / "bf16"))) > 1
  cfg, params = hf_convert.load_hf_checkpoint(str(tmp_path / "bf16"))
  w = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
  np.testing.assert_array_equal(params["block_0"]["attn"]["wq"], w.T.reshape(32, 4, 8))
  tokens_BL, _ = batch()
  np.testing.assert_allclose(our_logits(model_def(cfg), params, tokens_BL, np.ones((B, L), bool)),
                             hf_logits(model, tokens_BL), atol=1e-4, rtol=0)
  info = hf_export.export(cfg, params, str(tmp_path / "out"), dtype="bfloat16",
                          max_shard_bytes=16 * 1024)
  assert len(info["files"]) > 1 and os.path.exists(tmp_path / "out" / "model.safetensors.index.json")
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).float().eval()
  np.testing.assert_allclose(hf_logits(back, tokens_BL), hf_logits(model, tokens_BL), atol=1e-5)


def test_safetensors_reader_and_writer_match_the_reference(tmp_path):
  from safetensors.numpy import load_file, save_file
  arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array(3, np.int64),
            "c": np.zeros((0, 2), np.float16), "d": np.array([True, False])}
  save_file(arrays, str(tmp_path / "x.safetensors"), metadata={"format": "np"})
  ours, ref = hf_convert.read_safetensors(str(tmp_path / "x.safetensors")), load_file(str(tmp_path / "x.safetensors"))
  assert sorted(ours) == sorted(ref) == sorted(arrays)
  for k in arrays:
    assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape
    np.testing.assert_array_equal(ours[k], ref[k])
  written = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.ones(3, np.float16)}
  hf_export.write_safetensors(str(tmp_path / "y.safetensors"), written)
  back = load_file(str(tmp_path / "y.safetensors"))
  for k in written:
    np.testing.assert_array_equal(back[k], written[k])
  (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
  with pytest.raises(ValueError, match="bad.safetensors"):
    hf_convert.read_safetensors(str(tmp_path / "bad.safetensors"))


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
  llama = dict(MODELS["llama"][2], model_type="llama")
  old_style = {k: v for k, v in llama.items() if k != "rope_parameters"}
  old_style.update(rope_theta=500.0, rope_scaling={k: v for k, v in LLAMA3_ROPE.items()
                                                   if k != "rope_theta"})
  assert hf_convert.config_from_hf(old_style) == hf_convert.config_from_hf(llama)
  gemma2 = hf_convert.config_from_hf(dict(MODELS["gemma2"][2], model_type="gemma2",
                                          layer_types=["sliding_attention", "full_attention"] * 2))
  assert [gemma2.layer_window(i) for i in range(3)] == [4, 0, 4]


def test_gpt2_score_options_are_folded_into_queries(tmp_path):
  """GPT-2's unscaled / inverse-layer-scaled attention maps onto scaled query weights."""
  model = build_hf("gpt2", tmp_path, scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True)
  cfg, params = hf_convert.load_hf_checkpoint(str(tmp_path))
  tokens_BL, _ = batch()
  np.testing.assert_allclose(our_logits(model_def(cfg), params, tokens_BL, np.ones((B, L), bool)),
                             hf_logits(model, tokens_BL), atol=1e-4, rtol=0)


def test_unsupported_and_inconsistent_checkpoints_fail_loudly(tmp_path):
  build_hf("llama", tmp_path)
  hf = json.loads((tmp_path / "config.json").read_text())
  tensors = hf_convert.load_safetensors(str(tmp_path))
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    hf_convert.config_from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "factor": 2.0,
                                                         "rope_theta": 1e4}})
  with pytest.raises(ValueError, match="model_type 'bert'"):
    hf_convert.config_from_hf({**hf, "model_type": "bert"})
  with pytest.raises(ValueError, match="use_sliding_window"):
    hf_convert.config_from_hf({**hf, "model_type": "qwen2", "use_sliding_window": True})
  with pytest.raises(ValueError, match="model.extra.weight"):
    hf_convert.params_from_hf(hf, {**tensors, "model.extra.weight": np.zeros(3, np.float32)})
  missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
    hf_convert.params_from_hf(hf, missing)
  with pytest.raises(ValueError, match="gate_proj.weight: shape .* block_0.mlp.w_gate"):  # wrong config for these weights
    hf_convert.params_from_hf({**hf, "intermediate_size": 48}, tensors)
  with pytest.raises(FileNotFoundError, match="safetensors"):
    hf_convert.load_safetensors(str(tmp_path / "nowhere"))
  (tmp_path / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}}))
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
    hf_convert.checkpoint_files(str(tmp_path))
