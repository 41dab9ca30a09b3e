"""ModelConfig + params -> a Hugging Face directory transformers loads.

`export(cfg, params, out_dir, tokenizer=...)` writes config.json (built with the family's
transformers config class, so it is what `save_pretrained` would write), the weights as
sharded safetensors with `model.safetensors.index.json`, generation_config.json and the
tokenizer files with the chat template. LM models become `<Family>ForCausalLM`; scalar
(reward / value) models `<Family>ForSequenceClassification` with one label (`score.weight`;
HF's head has no bias, so a non-zero `score_bias` is written to config.json as
`pit_score_bias` — it shifts every reward equally and changes no preference).

The tensor layout comes from the same table as import (`pit.hf_convert.entries`), and the
config is checked by mapping it back: export refuses a model that would not import to the
same ModelConfig. Nothing here needs torch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from typing import Any

import jax
import ml_dtypes
import numpy as np

from pit import hf_convert
from pit import sharding as shd
from pit.model import ModelConfig

_CLASS_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3",
                 "gemma": "Gemma", "gemma2": "Gemma2", "phi3": "Phi3", "gpt2": "GPT2",
                 "phi": "Phi"}
# Fields that describe how we run a model, not what it computes.
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "init_std", "head", "family", "lora_rank",
                   "lora_alpha", "lora_targets", "scan_layers", "attention")
_DTYPES = {"float32": (np.float32, "F32"), "bfloat16": (ml_dtypes.bfloat16, "BF16"),
           "float16": (np.float16, "F16")}


def infer_family(cfg: ModelConfig) -> str:
  """The HF model_type a model exports as: `cfg.family` when set, else the family whose
  features it uses (learned positions -> gpt2, parallel residual -> phi, post norms or
  soft-capping -> gemma2, scaled embeddings -> gemma, q/k norms -> qwen3, q/k/v bias ->
  qwen2, a sliding window -> mistral, otherwise llama)."""
  if cfg.family:
    return cfg.family
  if cfg.position == "learned":
    return "gpt2"
  if cfg.parallel_residual:
    return "phi"
  if cfg.post_norms or cfg.attn_softcap or cfg.final_softcap:
    return "gemma2"
  if cfg.embed_scale:
    return "gemma"
  if cfg.qk_norm:
    return "qwen3"
  if cfg.qkv_bias and not cfg.out_bias:
    return "qwen2"
  if cfg.sliding_window:
    return "mistral"
  return "llama"


def _act(cfg: ModelConfig) -> str:
  if cfg.mlp == "swiglu":
    return "silu"
  if cfg.mlp == "relu":
    return "relu"
  return "gelu_pytorch_tanh" if cfg.gelu_approximate else "gelu"


def _rope_parameters(cfg: ModelConfig) -> dict:
  rp = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rotary_fraction != 1.0:
    rp["partial_rotary_factor"] = cfg.rotary_fraction
  if cfg.rope_scaling == "linear":
    rp.update(rope_type="linear", factor=cfg.rope_scaling_factor)
  elif cfg.rope_scaling == "llama3":
    rp.update(rope_type="llama3", factor=cfg.rope_scaling_factor,
              low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
              original_max_position_embeddings=cfg.rope_original_max_len)
  return rp


def hf_config_kwargs(cfg: ModelConfig, family: str) -> dict:
  """The family's config.json fields describing `cfg` (ids and architectures excluded)."""
  if family == "gpt2":
    return dict(vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.num_layers,
                n_head=cfg.num_heads, n_inner=cfg.d_ff, n_positions=cfg.max_seq_len,
                layer_norm_epsilon=cfg.norm_eps,
                activation_function="relu" if cfg.mlp == "relu" else
                ("gelu_new" if cfg.gelu_approximate else "gelu"),
                scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                tie_word_embeddings=cfg.tie_embeddings)
  kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head,
            max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.tie_embeddings,
            rope_parameters=_rope_parameters(cfg))
  if family == "phi":
    kw.pop("head_dim")
    return dict(kw, layer_norm_eps=cfg.norm_eps, hidden_act="gelu_new" if cfg.gelu_approximate
                else "gelu", qk_layernorm=False)
  kw.update(rms_norm_eps=cfg.norm_eps, hidden_act=_act(cfg))
  if family in ("llama", "qwen3"):
    kw.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
  if family in ("mistral", "phi3") and cfg.sliding_window:
    kw["sliding_window"] = cfg.sliding_window
  if family in ("mistral", "phi3") and not cfg.sliding_window:
    kw["sliding_window"] = None
  if family in ("qwen2", "qwen3"):
    kw.update(use_sliding_window=False)
  if family == "gemma":
    kw["hidden_activation"] = kw.pop("hidden_act")
  if family == "gemma2":
    kw["hidden_activation"] = kw.pop("hidden_act")
    scalar = (cfg.attn_scale or cfg.dim_per_head ** -0.5) ** -2
    kw.update(query_pre_attn_scalar=int(round(scalar)) if abs(scalar - round(scalar)) < 1e-6 else scalar,
              attn_logit_softcapping=cfg.attn_softcap or None,
              final_logit_softcapping=cfg.final_softcap or None,
              sliding_window=cfg.sliding_window or None,
              layer_types=["sliding_attention" if cfg.layer_window(i) else "full_attention"
                           for i in range(cfg.num_layers)])
  return kw


def hf_config(cfg: ModelConfig, family: str | None = None, *, token_ids: dict | None = None) -> dict:
  """The config.json dict of `cfg` as `family` (default `infer_family`), written by the
  family's transformers config class. Raises ValueError when the family cannot express
  the model exactly (the dict is mapped back with `config_from_hf` and compared)."""
  import transformers
  family = family or infer_family(cfg)
  if family not in _CLASS_PREFIX:
    raise ValueError(f"export: family {family!r} not supported (supported: {', '.join(_CLASS_PREFIX)})")
  head = "ForSequenceClassification" if cfg.head == "scalar" else (
      "LMHeadModel" if family == "gpt2" else "ForCausalLM")
  kw = hf_config_kwargs(cfg, family)
  # Unknown ids are None, not the family's defaults (which may lie outside this vocabulary).
  kw.update({k: (token_ids or {}).get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
  if cfg.head == "scalar":
    kw["num_labels"] = 1
  config = getattr(transformers, _CLASS_PREFIX[family] + "Config")(**kw)
  config.architectures = [_CLASS_PREFIX[family] + head]
  out = config.to_dict()
  norm = lambda c: c.replace(head_dim=c.dim_per_head, num_kv_heads=c.kv_heads)
  back, cfg_n = norm(hf_convert.config_from_hf(out)), norm(cfg)
  mismatched = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in _RUNTIME_FIELDS
                and getattr(back, f.name) != getattr(cfg_n, f.name)]
  if mismatched:
    raise ValueError(f"export as {family!r} would change model field(s) "
                     + ", ".join(f"{k}: {getattr(cfg_n, k)!r} -> {getattr(back, k)!r}" for k in mismatched))
  return out


def hf_tensors(cfg: ModelConfig, params: Any, family: str | None = None, hf: dict | None = None):
  """Yields (HF tensor name, float32 numpy array) for `params` of model `cfg`, one at a
  time (each fetched from the devices only when written). Scalar models give
  `score.weight` [1, D] in place of the LM head."""
  family = family or infer_family(cfg)
  flat = {}   # name -> a thunk giving the (unrolled) parameter; scanned layers sliced lazily
  for p, a in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = hf_convert._path_name(p)
    if name.startswith("layers/"):
      for i in range(a.shape[0]):
        flat[f"block_{i}/{name[len('layers/'):]}"] = lambda a=a, i=i: a[i]
    else:
      flat[name] = lambda a=a: a
  lm_cfg = cfg.replace(head="lm") if cfg.head == "scalar" else cfg
  for entry in hf_convert.entries(hf or {"model_type": family}, lm_cfg):
    if cfg.head == "scalar" and entry.ours[0] in ("lm_head", "lm_head_bias"):
      continue
    arrays = [shd.to_host(flat[name]()).astype(np.float32) for name in entry.ours]
    yield entry.hf, np.ascontiguousarray(entry.save(*arrays))
  if cfg.head == "scalar":
    yield "score.weight", np.ascontiguousarray(shd.to_host(flat["score"]()).astype(np.float32).T)


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None):
  """One .safetensors file (header JSON with dtype / shape / offsets, then the raw
  little-endian data, 8-byte aligned header), written to a temporary name and renamed.
  Our own writer because `safetensors.numpy` cannot write bf16."""
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  codes = {np.dtype(v[0]): v[1] for v in _DTYPES.values()}
  offset = 0
  for name, a in tensors.items():
    code = codes.get(a.dtype)
    if code is None:
      raise ValueError(f"{path}: tensor {name!r} has dtype {a.dtype}, not one of {list(_DTYPES)}")
    header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for a in tensors.values():
      f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def export(cfg: ModelConfig, params: Any, out_dir: str, *, tokenizer=None, family: str | None = None,
           dtype: str = "float32", max_shard_bytes: int = 2 * 1024 ** 3) -> dict:
  """Writes the HF directory `out_dir` (module docstring); returns {"family", "files",
  "params", "bytes"}. `tokenizer`: a PIT tokenizer with an HF tokenizer behind it
  (`HFTokenizer`, or one built from a GGUF file), whose files and chat template are saved;
  None or a byte / SentencePiece tokenizer writes weights and config only (logged).
  Raises ValueError on a family that cannot express the model or an unknown dtype."""
  if dtype not in _DTYPES:
    raise ValueError(f"export dtype {dtype!r} not in {list(_DTYPES)}")
  family = family or infer_family(cfg)
  hf_tok = getattr(tokenizer, "tok", None)
  ids: dict = {}
  if tokenizer is not None:
    ids = dict(bos_token_id=getattr(tokenizer, "bos_id", None), eos_token_id=tokenizer.eos_id,
               pad_token_id=tokenizer.pad_id)
  config = hf_config(cfg, family, token_ids=ids)
  config["dtype"] = dtype
  score_bias = 0.0
  if cfg.head == "scalar":
    score_bias = float(shd.to_host(params["score_bias"]).reshape(-1)[0])
    if score_bias:
      config["pit_score_bias"] = score_bias
      logging.warning("export: the reward head's bias (%g) has no place in HF's "
                      "ForSequenceClassification; written to config.json as pit_score_bias "
                      "(rewards shift by a constant, preferences are unchanged)", score_bias)
  os.makedirs(out_dir, exist_ok=True)
  np_dtype = np.dtype(_DTYPES[dtype][0])
  size = total = count = 0
  weight_map: dict[str, str] = {}
  written: list[tuple[str, list[str]]] = []   # (temporary file, its tensor names)
  current: dict[str, np.ndarray] = {}

  def flush():
    tmp = os.path.join(out_dir, f".shard-{len(written):05d}.safetensors")
    write_safetensors(tmp, current)
    written.append((tmp, list(current)))

  for name, array in hf_tensors(cfg, params, family):   # one shard in memory at a time
    a = array.astype(np_dtype)
    if current and size + a.nbytes > max_shard_bytes:
      flush()
      current, size = {}, 0
    current[name] = a
    size += a.nbytes
    total += a.nbytes
    count += a.size
  if current:
    flush()
  n = len(written)
  names = (["model.safetensors"] if n == 1 else
           [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
  for fname, (tmp, keys) in zip(names, written):
    os.replace(tmp, os.path.join(out_dir, fname))
    weight_map.update({k: fname for k in keys})
  if n > 1:
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump(gen, f, indent=2)
  if hf_tok is not None:
    hf_tok.save_pretrained(out_dir)
  elif tokenizer is not None:
    logging.warning("export: the %s tokenizer has no Hugging Face form; %s holds the weights "
                    "and config only", type(tokenizer).__name__, out_dir)
  return {"family": family, "files": names, "params": count, "bytes": total}
