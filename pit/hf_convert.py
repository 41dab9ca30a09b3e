"""Hugging Face checkpoints (config.json + *.safetensors) -> ModelConfig + params.

Supported `model_type`s: llama, qwen2 (Llama family: RMSNorm, RoPE, SwiGLU, GQA),
gpt2 (LayerNorm, learned positions, GELU, fused Conv1D q/k/v) and phi (partial
rotary, one LayerNorm feeding parallel attention + MLP, biases everywhere).

Weights are read only from safetensors files (never pickle / torch.load). Params
are returned as a nested dict of float32 numpy arrays with exactly the structure
of `pit.params.model_def(cfg).abstract_params`; place them on a mesh with
`shard_params`. Options we cannot represent raise `ValueError` instead of
silently converting to a different model.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import struct
from typing import Any

import jax
import ml_dtypes
import numpy as np

from pit.model import ModelConfig

SUPPORTED = ("llama", "qwen2", "gpt2", "phi")
# Buffers some checkpoints carry that are not parameters.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")


def _unsupported(hf: dict, what: str):
  raise ValueError(f"HF {hf.get('model_type')!r} checkpoint: {what} is not supported")


def _rope(hf: dict) -> tuple[float, float]:
  """(rope_theta, partial_rotary_factor) from the v5 `rope_parameters` or the older flat keys."""
  rp = dict(hf.get("rope_parameters") or {})
  scaling = hf.get("rope_scaling") or {}
  rope_type = rp.get("rope_type", rp.get("type")) or scaling.get("rope_type", scaling.get("type"))
  if rope_type not in (None, "default"):
    _unsupported(hf, f"rope_type {rope_type!r}")
  theta = rp.get("rope_theta", hf.get("rope_theta", 10000.0))
  fraction = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  return float(theta), float(fraction)


def _gelu_approximate(hf: dict, act: str) -> bool:
  if act in ("gelu_new", "gelu_pytorch_tanh"):
    return True
  if act == "gelu":
    return False
  _unsupported(hf, f"activation {act!r}")


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """Maps a HF config dict (config.json) to a ModelConfig; `overrides` win (e.g. dtype)."""
  kind = hf.get("model_type")
  if kind not in SUPPORTED:
    raise ValueError(f"HF model_type {kind!r} not supported (supported: {SUPPORTED})")
  tied = bool(hf.get("tie_word_embeddings", kind == "gpt2"))
  if kind == "gpt2":
    if hf.get("add_cross_attention"):
      _unsupported(hf, "add_cross_attention")
    act = hf.get("activation_function", "gelu_new")
    mlp, approximate = ("relu", True) if act == "relu" else ("gelu", _gelu_approximate(hf, act))
    D = hf["n_embd"]
    kw = dict(vocab_size=hf["vocab_size"], d_model=D, num_layers=hf["n_layer"],
              num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * D,
              max_seq_len=hf["n_positions"], norm="layernorm",
              norm_eps=hf.get("layer_norm_epsilon", 1e-5), position="learned",
              mlp=mlp, gelu_approximate=approximate,
              qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=tied)
  else:
    H = hf["num_attention_heads"]
    D = hf["hidden_size"]
    theta, fraction = _rope(hf)
    act = hf.get("hidden_act", "silu")
    kw = dict(vocab_size=hf["vocab_size"], d_model=D, num_layers=hf["num_hidden_layers"],
              num_heads=H, num_kv_heads=hf.get("num_key_value_heads") or H,
              head_dim=hf.get("head_dim") or D // H, d_ff=hf["intermediate_size"],
              max_seq_len=hf["max_position_embeddings"], position="rope", rope_theta=theta,
              rotary_fraction=fraction, tie_embeddings=tied)
    if kind == "phi":
      if hf.get("qk_layernorm"):
        _unsupported(hf, "qk_layernorm")
      kw.update(norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5),
                mlp="gelu", gelu_approximate=_gelu_approximate(hf, act), qkv_bias=True,
                out_bias=True, mlp_bias=True, lm_head_bias=True, parallel_residual=True,
                shared_parallel_norm=True)
    else:
      if hf.get("use_sliding_window"):
        _unsupported(hf, "use_sliding_window")
      if act in ("silu", "swish"):
        mlp, approximate = "swiglu", True
      else:
        mlp, approximate = "geglu", _gelu_approximate(hf, act)
      bias = bool(hf.get("attention_bias", False))
      kw.update(norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp=mlp,
                gelu_approximate=approximate, qkv_bias=bias or kind == "qwen2",
                out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))
  return ModelConfig(**{**kw, **overrides})


class _State:
  """Hands out checkpoint tensors as float32 and remembers which were used."""

  def __init__(self, tensors: dict[str, np.ndarray], prefix: str):
    self.tensors, self.prefix, self.used = tensors, prefix, set()

  def __call__(self, name: str, root: bool = False) -> np.ndarray:
    key = name if root else self.prefix + name
    if key not in self.tensors:
      raise ValueError(f"checkpoint has no tensor {key!r}")
    self.used.add(key)
    return np.array(self.tensors[key], np.float32)  # a copy, never the file mapping

  def has(self, name: str, root: bool = False) -> bool:
    return (name if root else self.prefix + name) in self.tensors

  def check_all_used(self):
    left = sorted(k for k in self.tensors if k not in self.used and not _IGNORED.search(k))
    if left:
      raise ValueError(f"checkpoint tensors not mapped to any parameter: {left[:8]}"
                       + (f" (+{len(left) - 8} more)" if len(left) > 8 else ""))


def _prefix(tensors, base: str) -> str:
  return base if any(k.startswith(base) for k in tensors) else ""


def _heads_in(w_OI, heads, E):
  """torch Linear weight [heads*E, D] -> [D, heads, E]."""
  return w_OI.T.reshape(w_OI.shape[1], heads, E)


def _norm(take, name, cfg):
  out = {"scale": take(name + ".weight")}
  if cfg.norm == "layernorm":
    out["bias"] = take(name + ".bias")
  return out


def _head(take, cfg, params):
  if not cfg.tie_embeddings:
    params["lm_head"] = take("lm_head.weight", root=True).T
  if cfg.lm_head_bias:
    params["lm_head_bias"] = take("lm_head.bias", root=True)


def _llama_params(cfg: ModelConfig, take, phi: bool) -> dict:
  """Llama / Qwen2, or Phi (`dense` out projection, fc1/fc2 MLP, `final_layernorm`)."""
  H, K, E = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  p = {"embed": take("embed_tokens.weight")}
  for i in range(cfg.num_layers):
    pre = f"layers.{i}."
    a = pre + "self_attn."
    attn = {"wq": _heads_in(take(a + "q_proj.weight"), H, E),
            "wk": _heads_in(take(a + "k_proj.weight"), K, E),
            "wv": _heads_in(take(a + "v_proj.weight"), K, E)}
    out_name = a + ("dense" if phi else "o_proj")
    attn["wo"] = take(out_name + ".weight").T.reshape(H, E, cfg.d_model)
    if cfg.qkv_bias:
      attn.update(bq=take(a + "q_proj.bias").reshape(H, E), bk=take(a + "k_proj.bias").reshape(K, E),
                  bv=take(a + "v_proj.bias").reshape(K, E))
    if cfg.out_bias:
      attn["bo"] = take(out_name + ".bias")
    m = pre + "mlp."
    if phi:
      mlp = {"w_up": take(m + "fc1.weight").T, "w_down": take(m + "fc2.weight").T,
             "b_up": take(m + "fc1.bias"), "b_down": take(m + "fc2.bias")}
    else:
      mlp = {"w_gate": take(m + "gate_proj.weight").T, "w_up": take(m + "up_proj.weight").T,
             "w_down": take(m + "down_proj.weight").T}
      if cfg.mlp_bias:
        mlp.update(b_gate=take(m + "gate_proj.bias"), b_up=take(m + "up_proj.bias"),
                   b_down=take(m + "down_proj.bias"))
    block = {"attn_norm": _norm(take, pre + "input_layernorm", cfg), "attn": attn, "mlp": mlp}
    if not phi:
      block["mlp_norm"] = _norm(take, pre + "post_attention_layernorm", cfg)
    p[f"block_{i}"] = block
  p["final_norm"] = _norm(take, "final_layernorm" if phi else "norm", cfg)
  _head(take, cfg, p)
  return p


def _gpt2_params(cfg: ModelConfig, take, hf: dict) -> dict:
  D, H, E = cfg.d_model, cfg.num_heads, cfg.dim_per_head
  p = {"embed": take("wte.weight"), "pos_embed": take("wpe.weight")}
  for i in range(cfg.num_layers):
    pre = f"h.{i}."
    # Fold GPT-2's attention-score options into the query projection (scores are linear in q).
    q_scale = 1.0 if hf.get("scale_attn_weights", True) else math.sqrt(E)
    if hf.get("scale_attn_by_inverse_layer_idx", False):
      q_scale /= i + 1
    w_DX, b_X = take(pre + "attn.c_attn.weight"), take(pre + "attn.c_attn.bias")  # Conv1D [in, out]
    wq, wk, wv = (w.reshape(D, H, E) for w in np.split(w_DX, 3, axis=1))
    bq, bk, bv = (b.reshape(H, E) for b in np.split(b_X, 3))
    attn = {"wq": wq * q_scale, "wk": wk, "wv": wv, "bq": bq * q_scale, "bk": bk, "bv": bv,
            "wo": take(pre + "attn.c_proj.weight").reshape(H, E, D),
            "bo": take(pre + "attn.c_proj.bias")}
    mlp = {"w_up": take(pre + "mlp.c_fc.weight"), "b_up": take(pre + "mlp.c_fc.bias"),
           "w_down": take(pre + "mlp.c_proj.weight"), "b_down": take(pre + "mlp.c_proj.bias")}
    p[f"block_{i}"] = {"attn_norm": _norm(take, pre + "ln_1", cfg), "attn": attn,
                       "mlp_norm": _norm(take, pre + "ln_2", cfg), "mlp": mlp}
  p["final_norm"] = _norm(take, "ln_f", cfg)
  _head(take, cfg, p)
  return p


def params_from_hf(hf: dict, tensors: dict[str, np.ndarray], cfg: ModelConfig | None = None) -> dict:
  """HF state dict (name -> numpy array) -> our params pure dict (float32 numpy)."""
  cfg = cfg or config_from_hf(hf)
  kind = hf.get("model_type")
  if kind == "gpt2":
    take = _State(tensors, _prefix(tensors, "transformer."))
    params = _gpt2_params(cfg, take, hf)
  else:
    take = _State(tensors, _prefix(tensors, "model."))
    params = _llama_params(cfg, take, phi=kind == "phi")
  if cfg.tie_embeddings and take.has("lm_head.weight", root=True):
    # Tied checkpoints may store the head anyway; it must then equal the embedding.
    if not np.array_equal(take("lm_head.weight", root=True), params["embed"]):
      raise ValueError("tie_word_embeddings is set but lm_head.weight differs from the embedding")
  take.check_all_used()
  check_params(cfg, params)
  return params


def check_params(cfg: ModelConfig, params: dict) -> None:
  """Raises ValueError unless `params` has exactly the model's structure and shapes."""
  from pit.params import model_def
  expected = jax.tree_util.tree_flatten_with_path(model_def(cfg).abstract_params)[0]
  got = jax.tree_util.tree_flatten_with_path(params)[0]
  name = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)
  want = {name(p): tuple(a.shape) for p, a in expected}
  have = {name(p): tuple(np.shape(a)) for p, a in got}
  problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
  problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
  problems += [f"{k}: shape {have[k]} != {want[k]}" for k in sorted(set(want) & set(have))
               if have[k] != want[k]]
  if problems:
    raise ValueError("converted params do not match the model: " + "; ".join(problems[:10]))


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


def read_safetensors(file: str) -> dict[str, np.ndarray]:
  """One .safetensors file as memory-mapped numpy arrays (bf16 included, unlike
  `safetensors.numpy`). The format is an 8-byte header length, a JSON header of
  {name: {dtype, shape, data_offsets}} and raw little-endian data; nothing is unpickled."""
  with open(file, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  empty = os.path.getsize(file) == 8 + n  # np.memmap refuses a zero-length mapping
  data = np.zeros(0, np.uint8) if empty else np.memmap(file, dtype=np.uint8, mode="r", offset=8 + n)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
    out[name] = data[start:end].view(dtype).reshape(info["shape"])
  return out


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of every *.safetensors file in directory `path` (or one file)."""
  files = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path} (pickle checkpoints are not read)")
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    for k, v in read_safetensors(f).items():
      if k in tensors:
        raise ValueError(f"tensor {k!r} appears in more than one file")
      tensors[k] = v
  return tensors


def load_hf_checkpoint(path: str, **overrides) -> tuple[ModelConfig, dict]:
  """Reads `path`/config.json and `path`/*.safetensors -> (ModelConfig, params numpy dict)."""
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  cfg = config_from_hf(hf, **overrides)
  return cfg, params_from_hf(hf, load_safetensors(path), cfg)


def shard_params(params: dict, mdef, mesh, rules) -> Any:
  """Places host params on `mesh` with the model's shardings (cast to its param dtype)."""
  dtype = jax.numpy.dtype(mdef.cfg.param_dtype)
  params = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
  return jax.device_put(params, mdef.shardings(mesh, rules))
