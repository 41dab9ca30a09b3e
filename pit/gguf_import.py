"""GGUF files (llama.cpp) -> ModelConfig + params + tokenizer, with the `gguf` package.

Reads the file memory-mapped with `gguf.GGUFReader`; each tensor is dequantized to fp32
by `gguf.quants.dequantize` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K and the other
ggml types the package knows) only when its turn comes, renamed to its Hugging Face name
and put through the same family table as a safetensors checkpoint (`pit.hf_convert`), so
the two paths cannot disagree on layout. llama.cpp's converter permutes the rows of
Llama's q/k projections into interleaved RoPE pairs; that is undone here. No torch is
imported.

Architectures: llama (Llama 1/2/3, Mistral, SmolLM ...), qwen2, qwen3, gemma, gemma2.
The tokenizer is rebuilt from the file's `tokenizer.ggml.*` metadata by transformers' GGUF
tokenizer converter (the maintained one; the `tokenizers` library does the work), with the
chat template from `tokenizer.chat_template`. Anything unsupported raises ValueError naming
the file and the key or tensor.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from pit import hf_convert
from pit.model import ModelConfig

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma", "gemma2")
# GGUF tensor name (after blk.N.) -> HF name (after model.layers.N.)
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    # Gemma 2's sandwich norms
    "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _import_gguf():
  try:
    import gguf
  except ImportError as e:  # pragma: no cover - a dependency in setup.py
    raise ImportError("reading .gguf files needs the `gguf` package (pip install gguf)") from e
  return gguf


class GGUFFile:
  """One .gguf file: its metadata (`meta`, plain Python values) and its tensors by name.
  Raises FileNotFoundError / ValueError naming the file."""

  def __init__(self, path: str):
    gguf = _import_gguf()
    if not os.path.isfile(path):
      raise FileNotFoundError(f"GGUF file not found: {path}")
    self.path = path
    try:
      self.reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError / struct errors on damage
      raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    self.meta: dict[str, Any] = {}
    for key, field in self.reader.fields.items():
      try:
        self.meta[key] = field.contents()
      except Exception:   # a value type the package cannot decode: leave it out
        continue
    self.tensors = {t.name: t for t in self.reader.tensors}
    self.arch = self.meta.get("general.architecture")

  def get(self, key: str, default=None, required: bool = False):
    """Metadata `key` ('{arch}.' prefixed when it starts with '.'); ValueError naming the
    file and key when `required` and absent."""
    full = f"{self.arch}{key}" if key.startswith(".") else key
    if full in self.meta:
      return self.meta[full]
    if required:
      raise ValueError(f"{self.path}: metadata key {full!r} is missing")
    return default

  def dequantize(self, name: str) -> np.ndarray:
    """Tensor `name` as fp32 numpy in HF's [out, in] order (ValueError on an unknown type)."""
    gguf = _import_gguf()
    t = self.tensors[name]
    try:
      return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    except NotImplementedError:
      raise ValueError(f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which the "
                       "gguf package cannot dequantize") from None


def config_from_gguf(f: GGUFFile, **overrides) -> ModelConfig:
  """The ModelConfig of a GGUF file's metadata (an HF config built from it and mapped by
  `hf_convert.config_from_hf`)."""
  return hf_convert.config_from_hf(hf_config_from_gguf(f), **overrides)


def hf_config_from_gguf(f: GGUFFile) -> dict:
  """An HF-style config dict from the file's `{arch}.*` metadata. ValueError names the file
  and the unsupported architecture / rope scaling."""
  if f.arch not in ARCHITECTURES:
    raise ValueError(f"{f.path}: general.architecture {f.arch!r} not supported "
                     f"(supported: {', '.join(ARCHITECTURES)})")
  heads = int(f.get(".attention.head_count", required=True))
  D = int(f.get(".embedding_length", required=True))
  tokens = f.get("tokenizer.ggml.tokens")
  vocab = int(f.get(".vocab_size", len(tokens) if tokens else 0) or 0)
  if not vocab:
    vocab = int(f.tensors["token_embd.weight"].shape[-1])
  head_dim = int(f.get(".attention.key_length", D // heads))
  rotary = int(f.get(".rope.dimension_count", head_dim))
  scaling = f.get(".rope.scaling.type", "none")
  if scaling not in ("none", None) or "rope_freqs.weight" in f.tensors:
    raise ValueError(f"{f.path}: rope scaling ({scaling!r}"
                     f"{', rope_freqs.weight' if 'rope_freqs.weight' in f.tensors else ''}) "
                     "is not supported for GGUF import; convert from the HF checkpoint instead")
  hf = dict(model_type=f.arch, vocab_size=vocab, hidden_size=D,
            num_hidden_layers=int(f.get(".block_count", required=True)),
            num_attention_heads=heads,
            num_key_value_heads=int(f.get(".attention.head_count_kv", heads)),
            head_dim=head_dim, intermediate_size=int(f.get(".feed_forward_length", required=True)),
            max_position_embeddings=int(f.get(".context_length", 2048)),
            rms_norm_eps=float(f.get(".attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(f.get(".rope.freq_base", 10000.0)),
            partial_rotary_factor=rotary / head_dim,
            tie_word_embeddings="output.weight" not in f.tensors)
  if f.arch in ("gemma", "gemma2"):
    hf["hidden_act"] = "gelu_pytorch_tanh"
  if f.arch == "gemma2":
    window = f.get(".attention.sliding_window")
    # llama.cpp: Gemma 2 27B (46 layers) scales queries by (d_model / heads) ** -0.5 (144, not
    # its head_dim 128); the other sizes by head_dim ** -0.5. The file does not say which.
    hf.update(query_pre_attn_scalar=D // heads if hf["num_hidden_layers"] == 46 else head_dim,
              attn_logit_softcapping=f.get(".attn_logit_softcapping"),
              final_logit_softcapping=f.get(".final_logit_softcapping"),
              sliding_window=window,
              layer_types=["sliding_attention" if i % 2 == 0 and window else "full_attention"
                           for i in range(hf["num_hidden_layers"])])
  return hf


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's `permute` (HF rotate-half rows -> interleaved pairs) of a q/k weight
  [heads * E, D] or bias [heads * E]."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GEMMA2_NAMES = {"ffn_norm": "pre_feedforward_layernorm"}   # llama.cpp's FFN_PRE_NORM


class _GGUFSource(hf_convert.TensorSource):
  """The file's tensors under their HF names, dequantized on demand (the interface of
  `hf_convert.TensorSource`)."""

  def __init__(self, f: GGUFFile, hf: dict):
    self.f, self.hf, self.used = f, hf, set()
    self.names: dict[str, str] = {}
    for name in f.tensors:
      hf_name = _hf_name(name, f.arch)
      if hf_name is None:
        raise ValueError(f"{f.path}: tensor {name!r} has no place in a {f.arch} model")
      self.names[hf_name] = name
    self.where = {k: None for k in self.names}

  def resolve(self, name):
    return name if name in self.names else None

  def get(self, name):
    if name not in self.names:
      raise ValueError(f"{self.f.path}: no tensor gives {name!r} "
                       f"(GGUF name {_gguf_name(name)!r})")
    self.used.add(name)
    w = self.f.dequantize(self.names[name])
    if self.f.arch == "llama" and re.search(r"self_attn\.(q|k)_proj\.(weight|bias)$", name):
      heads = self.hf["num_attention_heads"] if ".q_proj." in name else self.hf["num_key_value_heads"]
      w = _unpermute(w, heads)
    return w

  def release(self, name):
    pass


def _hf_name(gguf_name: str, arch: str = "llama") -> str | None:
  m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
  if m:
    names = {**_BLOCK_NAMES, **_GEMMA2_NAMES} if arch == "gemma2" else _BLOCK_NAMES
    inner = names.get(m.group(2))
    return None if inner is None else f"model.layers.{m.group(1)}.{inner}.{m.group(3)}"
  m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
  if m and m.group(1) in _TOP_NAMES:
    return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
  return None


def _gguf_name(hf_name: str) -> str:
  m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
  if m:
    inv = {v: k for k, v in _BLOCK_NAMES.items()}
    return f"blk.{m.group(1)}.{inv.get(m.group(2), m.group(2))}.{m.group(3)}"
  inv = {v: k for k, v in _TOP_NAMES.items()}
  base, _, kind = hf_name.rpartition(".")
  return f"{inv.get(base, base)}.{kind}"


def _fix_gemma_norms(f: GGUFFile, src: _GGUFSource):
  """llama.cpp stores Gemma's norm weights as (1 + w); HF (and our table) store w."""
  base_get = src.get

  def get(name):
    w = base_get(name)
    return w - 1.0 if name.endswith("norm.weight") else w
  src.get = get


def load_gguf(path: str, mdef=None, mesh=None, rules=None, **overrides):
  """(ModelConfig, params) of a GGUF file: numpy fp32 params, or with `mdef` / `mesh` /
  `rules` the params placed on the mesh tensor by tensor (`hf_convert.load_params_sharded`'s
  placement). `overrides` change runtime fields (dtype, head ...)."""
  f = GGUFFile(path)
  hf = hf_config_from_gguf(f)
  cfg = mdef.cfg if mdef is not None else hf_convert.config_from_hf(hf, **overrides)
  src = _GGUFSource(f, hf)
  if f.arch in ("gemma", "gemma2"):
    _fix_gemma_norms(f, src)
  if mesh is None:
    return cfg, hf_convert.convert(hf, src, cfg)
  return cfg, hf_convert.convert(hf, src, cfg, hf_convert.placer(mdef, mesh, rules),
                                 skip_head=cfg.head == "scalar")


def tokenizer_from_gguf(path: str):
  """A transformers fast tokenizer rebuilt from the file's `tokenizer.ggml.*` metadata and
  chat template, as transformers' own GGUF loader builds it (without its torch-importing
  reader). ValueError naming the file when the metadata has no tokenizer."""
  from transformers import PreTrainedTokenizerFast
  from transformers.integrations.gguf import gguf_tokenizer_mapping as m
  f = GGUFFile(path)
  if "tokenizer.ggml.tokens" not in f.meta:
    raise ValueError(f"{path}: no tokenizer.ggml.tokens metadata (the file carries no tokenizer)")
  grouped = {group: {name: f.meta[f"tokenizer.{key}"] for key, name in renames.items()
                     if f"tokenizer.{key}" in f.meta}
             for group, renames in m.GGUF_TOKENIZER_MAPPING.items()}
  tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
  if tokenizer.get("tokenizer_type") == "llama":
    config.setdefault("add_bos_token", True)
  for name, key in m._SPECIAL_TOKENS.items():
    token_id = f.meta.get(f"tokenizer.ggml.{key}")
    config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
  backend, extra = m.convert_gguf_tokenizer(f.arch, tokenizer)
  return PreTrainedTokenizerFast(tokenizer_object=backend, **{**config, **extra})
