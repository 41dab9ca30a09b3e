"""Hugging Face checkpoints (config.json + *.safetensors) <-> ModelConfig + params.

Families (`model_type`): llama (Llama 2 / 3, Llama-3.1 `rope_type: llama3` and linear
rope scaling), mistral (sliding window), qwen2, qwen3 (q/k norms), gemma (scaled
embeddings, GeGLU, (1 + w) norms), gemma2 (logit soft-capping, alternating sliding-window
layers, post-attention / post-MLP norms, query_pre_attn_scalar), phi3 (fused qkv and
gate/up projections), gpt2 (LayerNorm, learned positions, fused Conv1D q/k/v) and phi
(Phi-2: partial rotary, one LayerNorm feeding parallel attention + MLP, biases).

One table per family (`_entries`) says which HF tensor becomes which of our parameters
and how (transpose, head split, fused split, norm offset); import reads it one way and
export (`pit.hf_export`) the other, so the two cannot drift apart.

Import (`load_hf_checkpoint`, `load_params_sharded`): weights are read only from
safetensors files (never pickle / torch.load), memory-mapped; with a mesh each tensor is
converted and placed straight onto its shards, then its pages are released, so peak host
memory stays near the size of the largest tensor plus the placed params. An option we
cannot represent, a missing or unexpected tensor and a shape mismatch raise ValueError
naming the key or tensor.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import mmap
import os
import re
import struct
from typing import Any, Callable, Iterable

import jax
import ml_dtypes
import numpy as np

from pit.model import ModelConfig

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "phi")
# Buffers some checkpoints carry that are not parameters.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")
_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")


def _unsupported(hf: dict, what: str):
  raise ValueError(f"HF {hf.get('model_type')!r} checkpoint: {what} is not supported")


def _rope(hf: dict) -> dict:
  """RoPE fields of ModelConfig from the v5 `rope_parameters` or the older flat keys /
  `rope_scaling`: theta, partial rotary, and linear / llama3 scaling."""
  rp = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  src = rp if rp.get("rope_type", rp.get("type")) not in (None, "default") else scaling
  rope_type = src.get("rope_type", src.get("type")) or "default"
  out = dict(rope_theta=float(rp.get("rope_theta", hf.get("rope_theta", 10000.0))),
             rotary_fraction=float(rp.get("partial_rotary_factor",
                                          hf.get("partial_rotary_factor", 1.0))))
  if rope_type == "default":
    return out
  if rope_type == "linear":
    return {**out, "rope_scaling": "linear", "rope_scaling_factor": float(src["factor"])}
  if rope_type == "llama3":
    return {**out, "rope_scaling": "llama3", "rope_scaling_factor": float(src["factor"]),
            "rope_low_freq_factor": float(src["low_freq_factor"]),
            "rope_high_freq_factor": float(src["high_freq_factor"]),
            "rope_original_max_len": int(src["original_max_position_embeddings"])}
  _unsupported(hf, f"rope_parameters.rope_type {rope_type!r} (supported: default, linear, llama3)")


def _gelu_approximate(hf: dict, act: str) -> bool:
  if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return True
  if act == "gelu":
    return False
  _unsupported(hf, f"activation {act!r}")


def _window(hf: dict) -> dict:
  """sliding_window / sliding_window_pattern from `layer_types` (v5) or the flat keys."""
  window = hf.get("sliding_window")
  types = hf.get("layer_types")
  if types:
    sliding = [t == "sliding_attention" for t in types]
    if any(t not in ("sliding_attention", "full_attention") for t in types):
      _unsupported(hf, f"layer_types {sorted(set(types))}")
    if not any(sliding):
      return {}
    for pattern in (1, 2):
      if sliding == [i % pattern == 0 for i in range(len(types))]:
        return dict(sliding_window=int(window), sliding_window_pattern=pattern)
    _unsupported(hf, "this layer_types pattern of sliding-window layers")
  if hf.get("model_type") in ("qwen2", "qwen3"):
    if hf.get("use_sliding_window"):
      _unsupported(hf, "use_sliding_window")
    return {}
  if window and hf.get("model_type") == "gemma2":   # configs written before `layer_types`
    return dict(sliding_window=int(window), sliding_window_pattern=2)
  if window:
    return dict(sliding_window=int(window), sliding_window_pattern=1)
  return {}


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """Maps a HF config dict (config.json) to a ModelConfig; `overrides` win (e.g. dtype).
  Raises ValueError naming the key of any option that cannot be represented."""
  kind = hf.get("model_type")
  if kind not in SUPPORTED:
    raise ValueError(f"HF model_type {kind!r} not supported (supported: {', '.join(SUPPORTED)})")
  overrides = {"family": kind, **overrides}
  tied = bool(hf.get("tie_word_embeddings", kind in ("gpt2", "gemma", "gemma2")))
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
    return ModelConfig(**{**kw, **overrides})
  H = hf["num_attention_heads"]
  D = hf["hidden_size"]
  n_layers = hf["num_hidden_layers"]
  act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  if kind in ("gemma", "gemma2") and not hf.get("hidden_activation"):
    act = "gelu_pytorch_tanh"   # HF's Gemma uses the tanh GELU whatever old configs' hidden_act says
  kw = dict(vocab_size=hf["vocab_size"], d_model=D, num_layers=n_layers,
            num_heads=H, num_kv_heads=hf.get("num_key_value_heads") or H,
            head_dim=hf.get("head_dim") or D // H, d_ff=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"], position="rope",
            tie_embeddings=tied, **_rope(hf))
  if kind == "phi":
    if hf.get("qk_layernorm"):
      _unsupported(hf, "qk_layernorm")
    kw.update(norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5),
              mlp="gelu", gelu_approximate=_gelu_approximate(hf, act), qkv_bias=True,
              out_bias=True, mlp_bias=True, lm_head_bias=True, parallel_residual=True,
              shared_parallel_norm=True)
    return ModelConfig(**{**kw, **overrides})
  if act in ("silu", "swish"):
    mlp, approximate = "swiglu", True
  else:
    mlp, approximate = "geglu", _gelu_approximate(hf, act)
  bias = bool(hf.get("attention_bias", False))
  kw.update(norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp=mlp,
            gelu_approximate=approximate, qkv_bias=bias or kind == "qwen2",
            out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)), **_window(hf))
  if kind == "qwen3":
    kw["qk_norm"] = True
  if kind in ("gemma", "gemma2"):
    kw["embed_scale"] = True
  if kind == "gemma2":
    kw.update(post_norms=True, attn_scale=float(hf.get("query_pre_attn_scalar") or
                                                kw["head_dim"]) ** -0.5,
              attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
              final_softcap=float(hf.get("final_logit_softcapping") or 0.0))
  return ModelConfig(**{**kw, **overrides})


# ------------------------------------------------------------------ tensor tables
@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor and the parameter(s) it becomes: `ours` are '/'-joined param paths;
  `load(hf_array) -> tuple of our arrays`, `save(*our arrays) -> hf_array` (inverse)."""
  hf: str
  ours: tuple[str, ...]
  load: Callable[[np.ndarray], tuple]
  save: Callable[..., np.ndarray]


def _same(name, ours):
  return Entry(name, (ours,), lambda w: (w,), lambda w: w)


def _transposed(name, ours):
  return Entry(name, (ours,), lambda w: (w.T,), lambda w: w.T)


def _heads_in(name, ours, heads, E):
  """torch Linear weight [heads*E, D] <-> [D, heads, E]."""
  return Entry(name, (ours,), lambda w: (w.T.reshape(w.shape[1], heads, E),),
               lambda w: w.reshape(w.shape[0], -1).T)


def _heads_out(name, ours, heads, E):
  """torch Linear weight [D, heads*E] <-> [heads, E, D]."""
  return Entry(name, (ours,), lambda w: (w.T.reshape(heads, E, w.shape[0]),),
               lambda w: w.reshape(-1, w.shape[-1]).T)


def _bias_heads(name, ours, heads, E):
  return Entry(name, (ours,), lambda b: (b.reshape(heads, E),), lambda b: b.reshape(-1))


def _offset(name, ours, offset):
  """Gemma's RMSNorm multiplies by (1 + w): our scale is w + 1."""
  return Entry(name, (ours,), lambda w: (w.astype(np.float32) + offset,),
               lambda w: w.astype(np.float32) - offset)


def _fused_rows(name, ours, sizes, reshape):
  """A torch Linear weight whose output rows concatenate several projections (Phi-3's
  qkv_proj / gate_up_proj): split into `ours` (each then `reshape`d), joined back on export."""
  cuts = np.cumsum(sizes)[:-1]
  def load(w):
    return tuple(r(part) for r, part in zip(reshape, np.split(w, cuts, axis=0)))
  def save(*ws):
    return np.concatenate([w.reshape(w.shape[0], -1).T if w.ndim == 3 else w.T for w in ws], 0)
  return Entry(name, ours, load, save)


def _norm_entries(hf_name, ours, cfg, offset=0.0):
  if offset:
    return [_offset(hf_name + ".weight", ours + "/scale", offset)]
  out = [_same(hf_name + ".weight", ours + "/scale")]
  if cfg.norm == "layernorm":
    out.append(_same(hf_name + ".bias", ours + "/bias"))
  return out


def _head_entries(cfg) -> list[Entry]:
  out = []
  if cfg.head == "lm" and not cfg.tie_embeddings:
    out.append(_transposed("lm_head.weight", "lm_head"))
  if cfg.head == "lm" and cfg.lm_head_bias:
    out.append(_same("lm_head.bias", "lm_head_bias"))
  return out


def _llama_entries(cfg: ModelConfig, kind: str) -> list[Entry]:
  H, K, E, D, F = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model, cfg.d_ff
  offset = 1.0 if kind in ("gemma", "gemma2") else 0.0
  out = [_same("model.embed_tokens.weight", "embed")]
  for i in range(cfg.num_layers):
    pre, b = f"model.layers.{i}.", f"block_{i}/"
    a = pre + "self_attn."
    if kind == "phi3":
      out.append(_fused_rows(
          a + "qkv_proj.weight", (b + "attn/wq", b + "attn/wk", b + "attn/wv"),
          (H * E, K * E, K * E),
          (lambda w: w.T.reshape(D, H, E), lambda w: w.T.reshape(D, K, E),
           lambda w: w.T.reshape(D, K, E))))
      out.append(_fused_rows(pre + "mlp.gate_up_proj.weight", (b + "mlp/w_gate", b + "mlp/w_up"),
                             (F, F), (lambda w: w.T, lambda w: w.T)))
    else:
      out += [_heads_in(a + "q_proj.weight", b + "attn/wq", H, E),
              _heads_in(a + "k_proj.weight", b + "attn/wk", K, E),
              _heads_in(a + "v_proj.weight", b + "attn/wv", K, E)]
      out += [_transposed(pre + f"mlp.{n}_proj.weight", b + f"mlp/w_{n}") for n in ("gate", "up")]
    out.append(_heads_out(a + "o_proj.weight", b + "attn/wo", H, E))
    out.append(_transposed(pre + "mlp.down_proj.weight", b + "mlp/w_down"))
    if cfg.qkv_bias:
      out += [_bias_heads(a + "q_proj.bias", b + "attn/bq", H, E),
              _bias_heads(a + "k_proj.bias", b + "attn/bk", K, E),
              _bias_heads(a + "v_proj.bias", b + "attn/bv", K, E)]
    if cfg.out_bias:
      out.append(_same(a + "o_proj.bias", b + "attn/bo"))
    if cfg.mlp_bias:
      out += [_same(pre + f"mlp.{n}_proj.bias", b + f"mlp/b_{n}") for n in ("gate", "up", "down")]
    if cfg.qk_norm:
      out += [_same(a + "q_norm.weight", b + "attn/q_norm/scale"),
              _same(a + "k_norm.weight", b + "attn/k_norm/scale")]
    out += _norm_entries(pre + "input_layernorm", b + "attn_norm", cfg, offset)
    if cfg.post_norms:
      out += _norm_entries(pre + "post_attention_layernorm", b + "attn_post_norm", cfg, offset)
      out += _norm_entries(pre + "pre_feedforward_layernorm", b + "mlp_norm", cfg, offset)
      out += _norm_entries(pre + "post_feedforward_layernorm", b + "mlp_post_norm", cfg, offset)
    else:
      out += _norm_entries(pre + "post_attention_layernorm", b + "mlp_norm", cfg, offset)
  return out + _norm_entries("model.norm", "final_norm", cfg, offset) + _head_entries(cfg)


def _phi_entries(cfg: ModelConfig) -> list[Entry]:
  H, K, E = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  out = [_same("model.embed_tokens.weight", "embed")]
  for i in range(cfg.num_layers):
    pre, b = f"model.layers.{i}.", f"block_{i}/"
    a = pre + "self_attn."
    out += [_heads_in(a + "q_proj.weight", b + "attn/wq", H, E),
            _heads_in(a + "k_proj.weight", b + "attn/wk", K, E),
            _heads_in(a + "v_proj.weight", b + "attn/wv", K, E),
            _bias_heads(a + "q_proj.bias", b + "attn/bq", H, E),
            _bias_heads(a + "k_proj.bias", b + "attn/bk", K, E),
            _bias_heads(a + "v_proj.bias", b + "attn/bv", K, E),
            _heads_out(a + "dense.weight", b + "attn/wo", H, E), _same(a + "dense.bias", b + "attn/bo"),
            _transposed(pre + "mlp.fc1.weight", b + "mlp/w_up"), _same(pre + "mlp.fc1.bias", b + "mlp/b_up"),
            _transposed(pre + "mlp.fc2.weight", b + "mlp/w_down"),
            _same(pre + "mlp.fc2.bias", b + "mlp/b_down")]
    out += _norm_entries(pre + "input_layernorm", b + "attn_norm", cfg)
  return out + _norm_entries("model.final_layernorm", "final_norm", cfg) + _head_entries(cfg)


def _gpt2_entries(cfg: ModelConfig, hf: dict) -> list[Entry]:
  D, H, E = cfg.d_model, cfg.num_heads, cfg.dim_per_head
  out = [_same("transformer.wte.weight", "embed"), _same("transformer.wpe.weight", "pos_embed")]
  for i in range(cfg.num_layers):
    pre, b = f"transformer.h.{i}.", f"block_{i}/"
    # GPT-2's attention-score options are folded into the query projection (scores are
    # linear in q); export writes the standard options, so it needs no inverse.
    q_scale = 1.0 if hf.get("scale_attn_weights", True) else math.sqrt(E)
    if hf.get("scale_attn_by_inverse_layer_idx", False):
      q_scale /= i + 1

    def load_w(w, s=q_scale):  # Conv1D [in, out] = [D, 3 * H * E]
      wq, wk, wv = (x.reshape(D, H, E) for x in np.split(w, 3, axis=1))
      return wq * s, wk, wv

    def load_b(bias, s=q_scale):
      bq, bk, bv = (x.reshape(H, E) for x in np.split(bias, 3))
      return bq * s, bk, bv
    out += [Entry(pre + "attn.c_attn.weight", (b + "attn/wq", b + "attn/wk", b + "attn/wv"), load_w,
                  lambda *ws: np.concatenate([w.reshape(D, -1) for w in ws], 1)),
            Entry(pre + "attn.c_attn.bias", (b + "attn/bq", b + "attn/bk", b + "attn/bv"), load_b,
                  lambda *bs: np.concatenate([x.reshape(-1) for x in bs])),
            Entry(pre + "attn.c_proj.weight", (b + "attn/wo",), lambda w: (w.reshape(H, E, D),),
                  lambda w: w.reshape(-1, D)),
            _same(pre + "attn.c_proj.bias", b + "attn/bo"),
            _same(pre + "mlp.c_fc.weight", b + "mlp/w_up"), _same(pre + "mlp.c_fc.bias", b + "mlp/b_up"),
            _same(pre + "mlp.c_proj.weight", b + "mlp/w_down"),
            _same(pre + "mlp.c_proj.bias", b + "mlp/b_down")]
    out += _norm_entries(pre + "ln_1", b + "attn_norm", cfg)
    out += _norm_entries(pre + "ln_2", b + "mlp_norm", cfg)
  return out + _norm_entries("transformer.ln_f", "final_norm", cfg) + _head_entries(cfg)


def entries(hf: dict, cfg: ModelConfig) -> list[Entry]:
  """The tensor table of `hf`'s family for model `cfg` (HF names with the canonical
  prefix: `model.` or `transformer.`). Scalar-head models have no LM head entries."""
  kind = hf.get("model_type")
  if kind == "gpt2":
    return _gpt2_entries(cfg, hf)
  if kind == "phi":
    return _phi_entries(cfg)
  if kind in _LLAMA_LIKE:
    return _llama_entries(cfg, kind)
  raise ValueError(f"HF model_type {kind!r} not supported (supported: {', '.join(SUPPORTED)})")


# ------------------------------------------------------------------ safetensors
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}


class SafetensorsFile:
  """One .safetensors file, memory-mapped: `tensor(name)` is a read-only numpy view (bf16
  included, unlike `safetensors.numpy`); `release(name)` drops its pages from this
  process's memory. Format: an 8-byte header length, a JSON header of
  {name: {dtype, shape, data_offsets}} and raw little-endian data; nothing is unpickled.
  Raises ValueError naming the file on a damaged header or an unsupported dtype."""

  def __init__(self, file: str):
    self.file = file
    size = os.path.getsize(file)
    with open(file, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise ValueError(f"{file}: not a safetensors file (shorter than its header)")
      (n,) = struct.unpack("<Q", raw)
      if 8 + n > size:
        raise ValueError(f"{file}: damaged safetensors header (length {n} > file size {size})")
      try:
        self.header = json.loads(f.read(n))
      except ValueError as e:
        raise ValueError(f"{file}: damaged safetensors header ({e})") from None
      self.offset = 8 + n
      self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
    self.names = [k for k in self.header if k != "__metadata__"]
    for name in self.names:
      info = self.header[name]
      if info.get("dtype") not in _ST_DTYPES:
        raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {info.get('dtype')}")
      start, end = info["data_offsets"]
      if self.offset + end > size:
        raise ValueError(f"{file}: tensor {name!r} runs past the end of the file (truncated?)")

  def shape(self, name: str) -> tuple:
    """The stored shape of tensor `name`."""
    return tuple(self.header[name]["shape"])

  def tensor(self, name: str) -> np.ndarray:
    """Tensor `name` as a read-only view of the mapped file (no copy)."""
    info = self.header[name]
    start, end = info["data_offsets"]
    dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
    if end == start:
      return np.zeros(info["shape"], dtype)
    buf = np.frombuffer(self._mm, np.uint8, count=end - start, offset=self.offset + start)
    return buf.view(dtype).reshape(info["shape"])

  def release(self, name: str):
    """Tells the kernel this process no longer needs tensor `name`'s pages (they leave the
    resident set; the data stays in the file)."""
    if self._mm is None or not hasattr(self._mm, "madvise"):
      return
    start, end = self.header[name]["data_offsets"]
    page = mmap.PAGESIZE
    lo = (self.offset + start) // page * page
    self._mm.madvise(mmap.MADV_DONTNEED, lo, self.offset + end - lo)


def read_safetensors(file: str) -> dict[str, np.ndarray]:
  """Every tensor of one .safetensors file as memory-mapped read-only numpy arrays."""
  st = SafetensorsFile(file)
  return {name: st.tensor(name) for name in st.names}


def checkpoint_files(path: str) -> list[str]:
  """The safetensors files of an HF directory: those its `model.safetensors.index.json`
  lists (sharded checkpoints; a listed file missing is an error), else every
  *.safetensors in it (or `path` itself when it is a file)."""
  if os.path.isfile(path):
    return [path]
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index}: no weight_map")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
    if missing:
      raise FileNotFoundError(f"{index} lists {missing[0]}, which is not in {path}")
    return [os.path.join(path, f) for f in files]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path} (pickle checkpoints are not read)")
  return files


class TensorSource:
  """The tensors of several safetensors files under one name space (a name in two files is
  an error); remembers which were used so unexpected ones can be named."""

  def __init__(self, files: Iterable[str]):
    self.where: dict[str, SafetensorsFile] = {}
    for file in files:
      st = SafetensorsFile(file)
      for name in st.names:
        if name in self.where:
          raise ValueError(f"tensor {name!r} appears in {self.where[name].file} and {file}")
        self.where[name] = st
    self.used: set[str] = set()

  def resolve(self, name: str) -> str | None:
    """The stored name of canonical `name` (checkpoints saved from the base model lack
    the `model.` / `transformer.` prefix), or None."""
    if name in self.where:
      return name
    for prefix in ("model.", "transformer."):
      if name.startswith(prefix) and name[len(prefix):] in self.where:
        return name[len(prefix):]
    return None

  def get(self, name: str) -> np.ndarray:
    """Canonical tensor `name` (a mapped view); ValueError naming it when absent."""
    key = self.resolve(name)
    if key is None:
      raise ValueError(f"checkpoint has no tensor {name!r}")
    self.used.add(key)
    return self.where[key].tensor(key)

  def release(self, name: str):
    """Drops canonical tensor `name`'s pages (`SafetensorsFile.release`)."""
    key = self.resolve(name)
    if key is not None:
      self.where[key].release(key)

  def unused(self, ignore: Callable[[str], bool] = lambda k: False) -> list[str]:
    """Stored names never read (buffers that are not parameters left out)."""
    return sorted(k for k in self.where if k not in self.used and not _IGNORED.search(k)
                  and not ignore(k))


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of an HF directory's safetensors files (or one file), memory-mapped."""
  src = TensorSource(checkpoint_files(path))
  return {k: st.tensor(k) for k, st in src.where.items()}


# ------------------------------------------------------------------ conversion
def _flat_abstract(cfg: ModelConfig) -> dict[str, Any]:
  from pit.params import model_def
  flat = jax.tree_util.tree_flatten_with_path(model_def(cfg).abstract_params)[0]
  return {_path_name(p): a for p, a in flat}


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _nest(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for name, value in flat.items():
    node = out
    keys = name.split("/")
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return out


def convert(hf: dict, src: TensorSource, cfg: ModelConfig,
            place: Callable[[str, np.ndarray], Any] = lambda name, a: a,
            skip_head: bool = False) -> dict:
  """Converts every tensor of `src` through the family table into our params (nested
  dict), calling `place(param_path, float32 array)` on each as soon as it is ready (to
  put it on the mesh) and releasing the tensor's pages after. With `skip_head` (a
  scalar-head model built on an LM checkpoint) the LM head tensors are read for nothing
  and `score` / `score_bias` are left out. Raises ValueError naming the tensor on a
  missing / unexpected tensor or a shape mismatch. A `scan_layers` model: the blocks' tensors
  are converted one layer at a time as for the unrolled model, kept on the host, and each
  stacked parameter [num_layers, ...] is placed once all its layers are read."""
  scan = cfg.scan_layers
  if scan:   # each block tensor written into its stacked host buffer [N, ...] as it is read
    cfg, scanned_place, buffers = cfg.replace(scan_layers=False), place, {}

    def place(name, a):
      if not name.startswith("block_"):
        return scanned_place(name, a)
      layer, rest = name.split("/", 1)
      if rest not in buffers:
        buffers[rest] = np.empty((cfg.num_layers,) + a.shape, np.float32)
      buffers[rest][int(layer[len("block_"):])] = a
      return None
  want = _flat_abstract(cfg)
  if skip_head:
    want = {k: v for k, v in want.items() if k not in ("score", "score_bias")}
  lm_cfg = cfg.replace(head="lm") if cfg.head == "scalar" else cfg
  table = entries(hf, lm_cfg)
  flat: dict[str, Any] = {}
  for entry in table:
    arrays = entry.load(src.get(entry.hf))
    for ours, array in zip(entry.ours, arrays):
      if ours not in want:
        if cfg.head == "scalar" and ours in ("lm_head", "lm_head_bias"):
          continue
        raise ValueError(f"{entry.hf}: maps to {ours!r}, which model {cfg} does not have")
      if tuple(array.shape) != tuple(want[ours].shape):
        raise ValueError(f"{entry.hf}: shape {tuple(src.get(entry.hf).shape)} does not give "
                         f"{ours} its shape {tuple(want[ours].shape)} (config.json and weights "
                         "disagree)")
      flat[ours] = place(ours, np.ascontiguousarray(array, dtype=np.float32))
    src.release(entry.hf)
  if lm_cfg.tie_embeddings:
    head = src.resolve("lm_head.weight")
    if head is not None:   # tied checkpoints may store the head anyway: it must equal the embedding
      w, e = src.get("lm_head.weight"), src.get(table[0].hf)
      if w.shape != e.shape or not np.array_equal(w, e):
        raise ValueError("tie_word_embeddings is set but lm_head.weight differs from the embedding")
  unexpected = src.unused(ignore=lambda k: cfg.head == "scalar" and k.startswith(("lm_head", "score")))
  if unexpected:
    raise ValueError(f"checkpoint tensors not mapped to any parameter: {unexpected[:8]}"
                     + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
  missing = sorted(set(want) - set(flat))
  if missing:
    raise ValueError(f"no checkpoint tensor gives parameter(s) {missing[:8]}")
  if scan:   # every layer was read (the missing check above): place the stacked buffers
    out = {k: v for k, v in flat.items() if not k.startswith("block_")}
    for rest in sorted(buffers):
      out["layers/" + rest] = scanned_place("layers/" + rest, buffers.pop(rest))
    return _nest(out)
  return _nest(flat)


def read_hf_config(path: str) -> dict:
  """`path`/config.json as a dict (FileNotFoundError / ValueError naming the file)."""
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file} not found: an HF checkpoint directory has config.json")
  with open(file) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{file}: not valid JSON ({e})") from None


def params_from_hf(hf: dict, tensors: dict[str, np.ndarray], cfg: ModelConfig | None = None) -> dict:
  """HF state dict (name -> numpy array) -> our params pure dict (float32 numpy)."""
  cfg = cfg or config_from_hf(hf)
  src = TensorSource([])
  src.where = {k: _Array(v) for k, v in tensors.items()}
  return convert(hf, src, cfg)


class _Array:
  """A numpy array behind the SafetensorsFile interface (`params_from_hf`)."""
  def __init__(self, a):
    self.a, self.file = a, "<memory>"

  def tensor(self, name):
    return self.a

  def release(self, name):
    pass


def load_hf_checkpoint(path: str, **overrides) -> tuple[ModelConfig, dict]:
  """Reads `path`/config.json and its safetensors -> (ModelConfig, params numpy dict)."""
  hf = read_hf_config(path)
  cfg = config_from_hf(hf, **overrides)
  return cfg, convert(hf, TensorSource(checkpoint_files(path)), cfg)


def placer(mdef, mesh, rules) -> Callable[[str, np.ndarray], Any]:
  """`place(param_path, array)` for `convert`: the array cast to `mdef`'s param dtype and
  put onto its shards of `mesh` (`jax.make_array_from_callback`: only each device's slice is
  copied)."""
  shardings = {_path_name(p): s for p, s in
               jax.tree_util.tree_flatten_with_path(mdef.shardings(mesh, rules))[0]}
  dtype = np.dtype(jax.numpy.dtype(mdef.cfg.param_dtype))

  def place(name, array):
    array = array.astype(dtype, copy=False)
    return jax.make_array_from_callback(array.shape, shardings[name], lambda idx: array[idx])
  return place


def load_params_sharded(path: str, mdef, mesh, rules, skip_head: bool = False) -> dict:
  """The HF checkpoint at `path` as `mdef`'s params on `mesh`, each tensor converted,
  placed onto its shards (`placer`) in the model's param dtype and released. With
  `skip_head` the scalar head is left out (the caller adds a fresh one)."""
  hf = read_hf_config(path)
  return convert(hf, TensorSource(checkpoint_files(path)), mdef.cfg, placer(mdef, mesh, rules),
                 skip_head)


def check_params(cfg: ModelConfig, params: dict) -> None:
  """Raises ValueError unless `params` has exactly the model's structure and shapes."""
  want = {k: tuple(a.shape) for k, a in _flat_abstract(cfg).items()}
  have = {_path_name(p): tuple(np.shape(a)) for p, a in jax.tree_util.tree_flatten_with_path(params)[0]}
  problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
  problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
  problems += [f"{k}: shape {have[k]} != {want[k]}" for k in sorted(set(want) & set(have))
               if have[k] != want[k]]
  if problems:
    raise ValueError("converted params do not match the model: " + "; ".join(problems[:10]))


def shard_params(params: dict, mdef, mesh, rules) -> Any:
  """Places host params on `mesh` with the model's shardings (cast to its param dtype)."""
  check_params(mdef.cfg, params)
  dtype = jax.numpy.dtype(mdef.cfg.param_dtype)
  params = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
  return jax.device_put(params, mdef.shardings(mesh, rules))
