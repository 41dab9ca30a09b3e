"""One configurable decoder-only Transformer (Flax NNX).

Covers the Llama family (RMSNorm, RoPE with optional Llama-3 / linear scaling, SwiGLU,
GQA, optional q/k/v bias, tied or untied embeddings), Mistral / Phi-3 (sliding-window
attention), Qwen3 (per-head q/k RMSNorm), Gemma / Gemma 2 (scaled embeddings, GeGLU,
logit soft-capping, alternating sliding-window layers, post-attention / post-MLP norms,
a custom attention scale) and GPT-2 / Phi / NeoX options (LayerNorm, learned positions
or partial rotary, GELU, parallel attention+MLP residual, biases). `head='lm'`
gives next-token logits; `head='scalar'` gives one value per token (reward and
value models read it at the last non-pad token).

Every parameter carries logical axis names in its `axes` metadata; activations
are constrained by logical names too (`pit.sharding.constrain`).

Shape suffixes: B batch, L query length, S key/cache length, D d_model,
H query heads, K kv heads, G query heads per kv head, E head_dim, F d_ff, V vocab.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pit.sharding import constrain

NEG_INF = -1e30  # finite so fully-masked (pad) query rows give no NaNs.
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The shape and options of `Transformer` (field comments give the choices). Raises
  ValueError on a non-positive size, num_kv_heads not dividing num_heads, d_model not
  divisible by num_heads without head_dim, an unknown choice, or an odd rotary_dim."""
  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 0          # 0 -> num_heads (multi-head attention)
  head_dim: int = 0              # 0 -> d_model // num_heads
  d_ff: int = 256
  max_seq_len: int = 2048
  norm: str = "rmsnorm"          # rmsnorm | layernorm
  norm_eps: float = 1e-6
  position: str = "rope"         # rope | learned | none
  rope_theta: float = 10000.0
  rotary_fraction: float = 1.0   # partial rotary (Phi / NeoX): share of head_dim rotated
  rope_scaling: str = "none"     # none | linear (positions / factor) | llama3 (Llama 3.1)
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0    # llama3 scaling
  rope_high_freq_factor: float = 4.0   # llama3 scaling
  rope_original_max_len: int = 8192    # llama3 scaling: the pre-training context length
  qk_norm: bool = False          # Qwen3: RMSNorm over head_dim of q and k before RoPE
  embed_scale: bool = False      # Gemma: embeddings multiplied by sqrt(d_model)
  attn_scale: float = 0.0        # score scale; 0 -> head_dim ** -0.5 (Gemma 2: query_pre_attn_scalar ** -0.5)
  attn_softcap: float = 0.0      # Gemma 2: scores -> cap * tanh(scores / cap); 0 = off
  final_softcap: float = 0.0     # Gemma 2: logits -> cap * tanh(logits / cap); 0 = off
  sliding_window: int = 0        # > 0: a query sees keys less than this many slots back
  sliding_window_pattern: int = 1  # layer i slides iff i % pattern == 0 (1: all; Gemma 2: 2)
  post_norms: bool = False       # Gemma 2: norms after attention and after the MLP, too
  family: str = ""               # HF model_type it came from / exports as ('' -> inferred)
  # LoRA adapters (set by the trainer from train.lora; saved model configs never carry them):
  # y = x W + (lora_alpha / lora_rank) * (x A) B on the named weights; B starts at zero.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
  mlp: str = "swiglu"            # swiglu | geglu | gelu | relu
  gelu_approximate: bool = True  # tanh GELU (GPT-2 "gelu_new")
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  lm_head_bias: bool = False
  tie_embeddings: bool = False
  parallel_residual: bool = False  # x + attn(n1(x)) + mlp(n2(x))
  shared_parallel_norm: bool = False  # Phi: one norm feeds both branches
  head: str = "lm"               # lm | scalar
  dtype: str = "float32"         # compute dtype
  param_dtype: str = "float32"
  # none | full (recompute the block) | dots (keep the weight matmuls' outputs) |
  # dots_saveable (keep every matmul's output, attention's batched ones too)
  remat: str = "none"
  # plain: `attend` (einsums, fp32 scores; the reference, and the faster one on CPU);
  # dot_product: jax.nn.dot_product_attention (cuDNN flash attention on GPU where it applies,
  # XLA otherwise); soft-capped scores (Gemma 2) always take the plain path
  attention: str = "plain"
  # One stacked `layers` module (every block's params with a leading [num_layers] axis,
  # logical axis "layers") applied by `jax.lax.scan`: the block is traced and compiled once,
  # so compile time does not grow with depth (decoding keeps one cache buffer per layer)
  scan_layers: bool = False
  init_std: float = 0.02

  def __post_init__(self):
    def bad(field, msg):
      raise ValueError(f"model.{field}: {msg}")
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff"):
      if getattr(self, field) <= 0:
        bad(field, f"must be positive, got {getattr(self, field)}")
    if self.num_heads % self.kv_heads:
      bad("num_kv_heads", f"{self.kv_heads} does not divide num_heads={self.num_heads}")
    if not self.head_dim and self.d_model % self.num_heads:
      bad("head_dim", f"d_model={self.d_model} not divisible by num_heads={self.num_heads}; set head_dim")
    choices = dict(norm=("rmsnorm", "layernorm"), position=("rope", "learned", "none"),
                   mlp=("swiglu", "geglu", "gelu", "relu"), head=("lm", "scalar"),
                   remat=("none", "full", "dots", "dots_saveable"), attention=("plain", "dot_product"), dtype=("float32", "bfloat16", "float16"),
                   rope_scaling=("none", "linear", "llama3"),
                   param_dtype=("float32", "bfloat16"))
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        bad(field, f"{getattr(self, field)!r} not in {allowed}")
    if self.rotary_dim % 2:
      bad("rotary_fraction", f"rotated dims ({self.rotary_dim}) must be even")
    for field in ("rope_scaling_factor", "rope_theta"):
      if getattr(self, field) <= 0:
        bad(field, f"must be positive, got {getattr(self, field)}")
    if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      bad("rope_high_freq_factor", "must exceed rope_low_freq_factor")
    for field in ("attn_scale", "attn_softcap", "final_softcap", "sliding_window"):
      if getattr(self, field) < 0:
        bad(field, f"must be >= 0, got {getattr(self, field)}")
    if self.lora_rank < 0:
      bad("lora_rank", f"must be >= 0, got {self.lora_rank}")
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown:
      bad("lora_targets", f"unknown weight(s) {unknown}; known: {list(LORA_TARGETS)}")
    if self.sliding_window_pattern < 1:
      bad("sliding_window_pattern", f"must be >= 1, got {self.sliding_window_pattern}")

  @property
  def kv_heads(self) -> int:
    """K: key/value heads (num_kv_heads, or num_heads when 0)."""
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    """E: head_dim, or d_model // num_heads when 0."""
    return self.head_dim or self.d_model // self.num_heads

  @property
  def rotary_dim(self) -> int:
    """Dims of each head rotated by RoPE: int(E * rotary_fraction), 0 unless
    position='rope'."""
    return int(self.dim_per_head * self.rotary_fraction) if self.position == "rope" else 0

  def layer_window(self, layer: int) -> int:
    """The sliding window of layer `layer` (0: full causal attention)."""
    return self.sliding_window if layer % self.sliding_window_pattern == 0 else 0

  def inv_freq(self) -> jax.Array:
    """RoPE inverse frequencies [rotary_dim // 2] (fp32), with `rope_scaling` applied
    (linear: / factor; llama3: Llama 3.1's wavelength-dependent scaling, HF
    `_compute_llama3_parameters`)."""
    rd = self.rotary_dim
    inv = 1.0 / (self.rope_theta ** (jnp.arange(0, rd, 2, dtype=jnp.float32) / rd))
    factor = self.rope_scaling_factor
    if self.rope_scaling == "linear":
      return inv / factor
    if self.rope_scaling == "llama3":
      old, lo, hi = self.rope_original_max_len, self.rope_low_freq_factor, self.rope_high_freq_factor
      wavelen = 2 * jnp.pi / inv
      scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
      smooth = (old / wavelen - lo) / (hi - lo)
      smoothed = (1 - smooth) * scaled / factor + smooth * scaled
      medium = (wavelen >= old / hi) & (wavelen <= old / lo)
      return jnp.where(medium, smoothed, scaled)
    return inv

  @property
  def compute_dtype(self):
    """The compute dtype (`dtype`) as a jnp.dtype."""
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, cfg) -> "ModelConfig":
    """From an ml_collections ConfigDict (or dict); unknown fields are an error
    (`init_from`, the weights' source, is not a field and is ignored)."""
    values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    values.pop("init_from", None)   # where the weights come from (pit.pretrained), not a shape
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"model: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**values)

  def replace(self, **kw) -> "ModelConfig":
    """A copy with the fields in `kw` changed (validated again)."""
    return dataclasses.replace(self, **kw)

  def weight_differences(self, other: "ModelConfig") -> list[str]:
    """The fields, other than how the model computes (`COMPUTE_FIELDS`: compute dtype, remat,
    attention path, scanned layers, LoRA, init scale), on which `other` differs: [] when a
    checkpoint of one restores into the other (the layer layout is converted on restore)."""
    return [f.name for f in dataclasses.fields(self) if f.name not in COMPUTE_FIELDS
            and getattr(self, f.name) != getattr(other, f.name)]


# how a model computes, not which weights it has: a run may change them between checkpoints
COMPUTE_FIELDS = ("dtype", "remat", "attention", "scan_layers", "lora_rank", "lora_alpha",
                  "lora_targets", "init_std")


def _param(rngs, shape, axes, cfg: ModelConfig, init: str = "normal", std=None):
  dtype = jnp.dtype(cfg.param_dtype)
  if init == "zeros":
    value = jnp.zeros(shape, dtype)
  elif init == "ones":
    value = jnp.ones(shape, dtype)
  else:
    std = cfg.init_std if std is None else std
    value = (std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape)).astype(dtype)
  return nnx.Param(value, axes=tuple(axes))


def _lora_pair(module, rngs, cfg: ModelConfig, name: str, in_shape, in_axes, out_shape, out_axes):
  """Adds LoRA factors `{name}_lora_a` [*in, r] ~ N(0, 1/fan_in) and `{name}_lora_b`
  [r, *out] = 0 to `module` when `name` is a target (else None attributes)."""
  if not cfg.lora_rank or name not in cfg.lora_targets:
    setattr(module, f"{name}_lora_a", None)
    setattr(module, f"{name}_lora_b", None)
    return
  r = cfg.lora_rank
  fan_in = 1
  for d in in_shape:
    fan_in *= d
  setattr(module, f"{name}_lora_a", _param(rngs, (*in_shape, r), (*in_axes, "lora_rank"), cfg,
                                           std=fan_in ** -0.5))
  setattr(module, f"{name}_lora_b", _param(rngs, (r, *out_shape), ("lora_rank", *out_axes), cfg,
                                           "zeros"))


def flat_matmul(x, w, n_in: int = 1, preferred_element_type=None):
  """x [..., *I] @ w [*I, *O] -> [..., *O] (the last `n_in` dims of x contract with the first
  `n_in` of w) as ONE 2-D matmul [prod(...), prod(I)] x [prod(I), prod(O)].

  The same contraction as `jnp.tensordot(x, w, n_in)`, but XLA:CPU lowers the backward
  pass of a 2-D dot to transposed-operand GEMMs, where a dot with several free or
  contracting dims (`einsum('bld,dv->blv')`) gets whole-activation transposes and copies
  (the [B, L, V] logit gradient, 65 M floats at 8 x 256 x 32000, was transposed every
  step; the LM head's forward + backward took 1.8x the 2-D form's time). The reshapes are
  of contiguous dims: free on every backend."""
  lead, inner = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
  if tuple(w.shape[:n_in]) != tuple(inner):
    raise ValueError(f"flat_matmul: x {x.shape} and w {w.shape} do not contract over {n_in} dim(s)")
  outer = w.shape[n_in:]
  k = 1
  for d in inner:
    k *= d
  y = jnp.matmul(x.reshape(-1, k), w.reshape(k, -1), preferred_element_type=preferred_element_type)
  return y.reshape(*lead, *outer)


def _lora_delta(module, name: str, x, n_in: int):
  """(alpha / r) * (x A) B for weight `name` (x's last `n_in` dims contract with A), or None."""
  a = getattr(module, f"{name}_lora_a", None)
  if a is None:
    return None
  cfg = module.cfg
  dt = cfg.compute_dtype
  b = getattr(module, f"{name}_lora_b")
  h = flat_matmul(x, a[...].astype(dt), n_in)
  return flat_matmul(h, b[...].astype(dt), 1) * (cfg.lora_alpha / cfg.lora_rank)


class Norm(nnx.Module):
  """RMSNorm or LayerNorm (`cfg.norm`) over the last axis (D, or E for `HeadNorm`),
  computed in fp32: x [..., D] -> [..., D] in the compute dtype (scale, and bias for
  LayerNorm)."""
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, dim: int = 0, axis: str = "norm",
               kind: str = ""):
    self.cfg, self.kind = cfg, kind or cfg.norm
    dim = dim or cfg.d_model
    self.scale = _param(rngs, (dim,), (axis,), cfg, "ones")
    self.bias = _param(rngs, (dim,), (axis,), cfg, "zeros") if self.kind == "layernorm" else None

  def __call__(self, x_BLD):
    x = x_BLD.astype(jnp.float32)
    if self.kind == "layernorm":
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.cfg.norm_eps)
    x = x * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      x = x + self.bias[...].astype(jnp.float32)
    return x.astype(self.cfg.compute_dtype)


def rope(x_BLHE, positions_BL, rotary_dim: int, inv_freq_F):
  """Rotary embedding on the first `rotary_dim` dims (half-split / `rotate_half` layout)
  with inverse frequencies inv_freq_F [rotary_dim // 2] (`ModelConfig.inv_freq`)."""
  if rotary_dim == 0:
    return x_BLHE
  half = rotary_dim // 2
  inv_freq = inv_freq_F
  angle_BLF = positions_BL.astype(jnp.float32)[..., None] * inv_freq
  sin, cos = jnp.sin(angle_BLF)[:, :, None, :], jnp.cos(angle_BLF)[:, :, None, :]
  rot, rest = x_BLHE[..., :rotary_dim], x_BLHE[..., rotary_dim:]
  x1, x2 = rot[..., :half].astype(jnp.float32), rot[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x_BLHE.dtype)
  return jnp.concatenate([rotated, rest], -1) if rest.shape[-1] else rotated


class Attention(nnx.Module):
  """Causal multi-head / grouped-query attention with RoPE (or none), optional q/k/v and
  output biases, per-head q/k norms, score soft-capping and a sliding window (layer
  `layer`): (x_BLD [B, L, D], positions_BL, kv_mask_BS[, cache, cache_index]) ->
  (out_BLD [B, L, D], new cache {'k', 'v'} [B, K, S, E] or None)."""
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, layer: int = 0):
    self.cfg = cfg
    self.window = cfg.layer_window(layer)
    D, H, K, E = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    self.wq = _param(rngs, (D, H, E), ("embed", "q_heads", "head_dim"), cfg)
    self.wk = _param(rngs, (D, K, E), ("embed", "kv_heads", "head_dim"), cfg)
    self.wv = _param(rngs, (D, K, E), ("embed", "kv_heads", "head_dim"), cfg)
    self.wo = _param(rngs, (H, E, D), ("q_heads", "head_dim", "embed"), cfg, std=out_std)
    if cfg.qkv_bias:
      self.bq = _param(rngs, (H, E), ("q_heads", "head_dim"), cfg, "zeros")
      self.bk = _param(rngs, (K, E), ("kv_heads", "head_dim"), cfg, "zeros")
      self.bv = _param(rngs, (K, E), ("kv_heads", "head_dim"), cfg, "zeros")
    else:
      self.bq = self.bk = self.bv = None
    self.bo = _param(rngs, (D,), ("embed",), cfg, "zeros") if cfg.out_bias else None
    for name, out_shape, out_axes in (("wq", (H, E), ("q_heads", "head_dim")),
                                      ("wk", (K, E), ("kv_heads", "head_dim")),
                                      ("wv", (K, E), ("kv_heads", "head_dim"))):
      _lora_pair(self, rngs, cfg, name, (D,), ("embed",), out_shape, out_axes)
    _lora_pair(self, rngs, cfg, "wo", (H, E), ("q_heads", "head_dim"), (D,), ("embed",))
    if cfg.qk_norm:
      self.q_norm = Norm(cfg, rngs, E, "head_dim", "rmsnorm")
      self.k_norm = Norm(cfg, rngs, E, "head_dim", "rmsnorm")
    else:
      self.q_norm = self.k_norm = None

  def _proj(self, x_BLD, w, b, name):
    dt = self.cfg.compute_dtype
    y = flat_matmul(x_BLD, w[...].astype(dt), 1)
    delta = _lora_delta(self, name, x_BLD, 1)
    if delta is not None:
      y = y + delta
    return y + b[...].astype(dt) if b is not None else y

  def __call__(self, x_BLD, positions_BL, kv_mask_BS, cache=None, cache_index=None,
               window=None):
    """`window` (a traced int, scanned layers): this layer's sliding window, 0 for none; None
    takes the layer's own (`ModelConfig.layer_window`)."""
    cfg = self.cfg
    q_BLHE, k_BLKE = self._proj(x_BLD, self.wq, self.bq, "wq"), self._proj(x_BLD, self.wk, self.bk, "wk")
    if self.q_norm is not None:
      q_BLHE, k_BLKE = self.q_norm(q_BLHE), self.k_norm(k_BLKE)
    inv_freq = cfg.inv_freq() if cfg.rotary_dim else None
    q_BLHE = rope(q_BLHE, positions_BL, cfg.rotary_dim, inv_freq)
    k_BLKE = rope(k_BLKE, positions_BL, cfg.rotary_dim, inv_freq)
    v_BLKE = self._proj(x_BLD, self.wv, self.bv, "wv")
    q_BLHE = constrain(q_BLHE, ("activation_batch", "activation_length", "activation_heads", None))
    L = x_BLD.shape[1]
    if cache is not None:
      # The cache is stored [B, K, S, E] (heads before slots): the attention dots batch
      # over (B, K), so this layout needs no per-step transpose of the whole cache.
      start = (0, 0, cache_index, 0)
      k_BKSE = jax.lax.dynamic_update_slice(
          cache["k"], k_BLKE.swapaxes(1, 2).astype(cache["k"].dtype), start)
      v_BKSE = jax.lax.dynamic_update_slice(
          cache["v"], v_BLKE.swapaxes(1, 2).astype(cache["v"].dtype), start)
      axes = ("cache_batch", "activation_kv_heads", "cache_length", None)
      k_BKSE, v_BKSE = constrain(k_BKSE, axes), constrain(v_BKSE, axes)
      new_cache = {"k": k_BKSE, "v": v_BKSE}
      q_slot_L = cache_index + jnp.arange(L)
    else:
      k_BKSE, v_BKSE, new_cache = k_BLKE.swapaxes(1, 2), v_BLKE.swapaxes(1, 2), None
      q_slot_L = jnp.arange(L)
    S = k_BKSE.shape[2]
    causal_LS = jnp.arange(S)[None, :] <= q_slot_L[:, None]
    if window is not None:   # scanned layers: the window is data (0 = full attention)
      causal_LS = causal_LS & ((window <= 0)
                               | (q_slot_L[:, None] - jnp.arange(S)[None, :] < window))
    elif self.window:  # HF: a key is visible when q_slot - k_slot < sliding_window
      causal_LS = causal_LS & (q_slot_L[:, None] - jnp.arange(S)[None, :] < self.window)
    mask_BLS = causal_LS[None] & kv_mask_BS[:, None, :].astype(bool)
    if cfg.attention == "dot_product" and not cfg.attn_softcap:
      out_BLHE = attend_fused(q_BLHE, k_BKSE.astype(q_BLHE.dtype), v_BKSE.astype(q_BLHE.dtype),
                              mask_BLS, scale=cfg.attn_scale)
    elif cache is None:   # self-attention over the row: the mask is causal, skip future keys
      out_BLHE = attend_causal(q_BLHE, k_BKSE.astype(q_BLHE.dtype), v_BKSE.astype(q_BLHE.dtype),
                               mask_BLS, scale=cfg.attn_scale, softcap=cfg.attn_softcap)
    else:
      out_BLHE = attend(q_BLHE, k_BKSE.astype(q_BLHE.dtype), v_BKSE.astype(q_BLHE.dtype), mask_BLS,
                        scale=cfg.attn_scale, softcap=cfg.attn_softcap)
    out_BLD = flat_matmul(out_BLHE, self.wo[...].astype(cfg.compute_dtype), 2)
    delta = _lora_delta(self, "wo", out_BLHE, 2)
    if delta is not None:
      out_BLD = out_BLD + delta
    if self.bo is not None:
      out_BLD = out_BLD + self.bo[...].astype(cfg.compute_dtype)
    return out_BLD, new_cache


def attend(q_BLHE, k_BKSE, v_BKSE, mask_BLS, scale: float = 0.0, softcap: float = 0.0):
  """Grouped-query softmax attention with fp32 scores, scaled by `scale` (0: E ** -0.5)
  and soft-capped to (-softcap, softcap) when softcap > 0 (Gemma 2): q_BLHE [B, L, H, E],
  k_BKSE / v_BKSE [B, K, S, E] (the KV cache's layout), mask_BLS [B, L, S] -> [B, L, H, E].

  Head-major: the G = H / K query heads of a kv head and the L positions form one
  Q = G * L axis, so both products are plain batched matmuls over (B, K)
  ([Q, E] x [E, S] and [Q, S] x [S, E]) with no size-1 or interleaved dims, which
  XLA:CPU otherwise answers with copies of the [.., L, S] score matrices in the backward pass."""
  B, L, H, E = q_BLHE.shape
  K, S = k_BKSE.shape[1], k_BKSE.shape[2]
  G = H // K
  q_BKQE = q_BLHE.reshape(B, L, K, G, E).transpose(0, 2, 3, 1, 4).reshape(B, K, G * L, E)
  scores_BKQS = jnp.einsum("bkqe,bkse->bkqs", q_BKQE, k_BKSE,
                           preferred_element_type=jnp.float32) * (scale or E ** -0.5)
  if softcap:
    scores_BKQS = softcap * jnp.tanh(scores_BKQS / softcap)
  scores_BKGLS = scores_BKQS.reshape(B, K, G, L, S)
  scores_BKGLS = jnp.where(mask_BLS[:, None, None], scores_BKGLS, NEG_INF)
  probs_BKQS = jax.nn.softmax(scores_BKGLS, axis=-1).astype(v_BKSE.dtype).reshape(B, K, G * L, S)
  out_BKQE = jnp.einsum("bkqs,bkse->bkqe", probs_BKQS, v_BKSE)
  return out_BKQE.reshape(B, K, G, L, E).transpose(0, 3, 1, 2, 4).reshape(B, L, H, E)


QUERY_BLOCK = 64


def num_query_blocks(L: int, block: int = QUERY_BLOCK) -> int:
  """How many equal query blocks `attend_causal` cuts L queries into: the divisor n of L whose
  block L / n is closest to `block` among blocks of at least block / 2 (1 when L < 2 * block
  or no such divisor)."""
  if L < 2 * block:
    return 1
  sizes = [L // n for n in range(1, L + 1) if L % n == 0 and L // n >= block // 2]
  best = min(sizes, key=lambda b: (abs(b - block), -b))
  return L // best


def attend_causal(q_BLHE, k_BKSE, v_BKSE, mask_BLS, scale: float = 0.0, softcap: float = 0.0,
                  block: int = QUERY_BLOCK):
  """`attend` for self-attention whose mask is causal (query i never sees key j > i; S = L):
  queries in blocks of ~`block` (`num_query_blocks`), block i against keys [0, end of block i)
  only. Equal to `attend` with the same mask for every query that sees a key (a fully masked
  padding query gets a finite average over its block's keys instead of all keys; nothing
  reads it). The masked upper triangle is not computed
  (~(n + 1) / 2n of the score matrix), and the smaller score blocks stay in cache: the
  attention gradient of a 32 x 384 row batch (4 heads, E = 32) took 240-285 ms against 483 ms
  unblocked on the 2-core CPU (BUILD_NOTES, issue 17)."""
  L = q_BLHE.shape[1]
  n = num_query_blocks(L, block)
  if n == 1:
    return attend(q_BLHE, k_BKSE, v_BKSE, mask_BLS, scale=scale, softcap=softcap)
  bq = L // n
  outs = []
  for i in range(n):
    lo, hi = i * bq, (i + 1) * bq
    outs.append(attend(q_BLHE[:, lo:hi], k_BKSE[:, :, :hi], v_BKSE[:, :, :hi],
                       mask_BLS[:, lo:hi, :hi], scale=scale, softcap=softcap))
  return jnp.concatenate(outs, axis=1)


def attend_fused(q_BLHE, k_BKSE, v_BKSE, mask_BLS, scale: float = 0.0):
  """`attend` (no soft-cap) through `jax.nn.dot_product_attention`: cuDNN's fused flash
  attention on GPUs where its conditions hold (bf16 / fp16 and supported head sizes), XLA's
  composition elsewhere. Same shapes and mask as `attend`; a query row with no visible key
  (left padding) gives finite output like `attend`'s."""
  E = q_BLHE.shape[-1]
  return jax.nn.dot_product_attention(
      q_BLHE, k_BKSE.swapaxes(1, 2), v_BKSE.swapaxes(1, 2), mask=mask_BLS[:, None],
      scale=scale or E ** -0.5).astype(q_BLHE.dtype)


class Mlp(nnx.Module):
  """Feed-forward block: gated (SwiGLU, GeGLU) or plain (GELU, ReLU), optional biases:
  x_BLD [B, L, D] -> [B, L, D] through F = d_ff hidden units."""
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, F = cfg.d_model, cfg.d_ff
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    gated = cfg.mlp in ("swiglu", "geglu")
    self.w_gate = _param(rngs, (D, F), ("embed", "mlp"), cfg) if gated else None
    self.w_up = _param(rngs, (D, F), ("embed", "mlp"), cfg)
    self.w_down = _param(rngs, (F, D), ("mlp", "embed"), cfg, std=out_std)
    self.b_up = _param(rngs, (F,), ("mlp",), cfg, "zeros") if cfg.mlp_bias else None
    self.b_gate = _param(rngs, (F,), ("mlp",), cfg, "zeros") if cfg.mlp_bias and gated else None
    self.b_down = _param(rngs, (D,), ("embed",), cfg, "zeros") if cfg.mlp_bias else None
    if gated:
      _lora_pair(self, rngs, cfg, "w_gate", (D,), ("embed",), (F,), ("mlp",))
    _lora_pair(self, rngs, cfg, "w_up", (D,), ("embed",), (F,), ("mlp",))
    _lora_pair(self, rngs, cfg, "w_down", (F,), ("mlp",), (D,), ("embed",))

  def _act(self, x):
    if self.cfg.mlp == "swiglu":
      return jax.nn.silu(x)
    if self.cfg.mlp == "relu":
      return jax.nn.relu(x)
    return jax.nn.gelu(x, approximate=self.cfg.gelu_approximate)

  def __call__(self, x_BLD):
    dt = self.cfg.compute_dtype
    def dense(x, w, b, name):
      y = flat_matmul(x, w[...].astype(dt), 1)
      delta = _lora_delta(self, name, x, 1)
      if delta is not None:
        y = y + delta
      return y + b[...].astype(dt) if b is not None else y
    up_BLF = dense(x_BLD, self.w_up, self.b_up, "w_up")
    if self.w_gate is not None:
      h_BLF = self._act(dense(x_BLD, self.w_gate, self.b_gate, "w_gate")) * up_BLF
    else:
      h_BLF = self._act(up_BLF)
    h_BLF = constrain(h_BLF, ("activation_batch", "activation_length", "activation_mlp"))
    return dense(h_BLF, self.w_down, self.b_down, "w_down")


class Block(nnx.Module):
  """A pre-norm Transformer layer (number `layer`): x + attn(norm(x)), then
  x + mlp(norm(x)); with post_norms (Gemma 2) each branch's output is normed again before
  the residual add; or the parallel residual x + attn(n1(x)) + mlp(n2(x)) (one shared norm
  with shared_parallel_norm). Returns (x_BLD [B, L, D], the layer's new cache or None)."""
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, layer: int = 0):
    self.cfg = cfg
    self.attn_norm = Norm(cfg, rngs)
    self.attn = Attention(cfg, rngs, layer)
    self.mlp_norm = None if (cfg.parallel_residual and cfg.shared_parallel_norm) else Norm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs)
    self.attn_post_norm = Norm(cfg, rngs) if cfg.post_norms else None
    self.mlp_post_norm = Norm(cfg, rngs) if cfg.post_norms else None

  def __call__(self, x_BLD, positions_BL, kv_mask_BS, cache=None, cache_index=None,
               window=None):
    h_BLD = self.attn_norm(x_BLD)
    attn_BLD, new_cache = self.attn(h_BLD, positions_BL, kv_mask_BS, cache, cache_index, window)
    if self.cfg.parallel_residual:
      mlp_in = h_BLD if self.mlp_norm is None else self.mlp_norm(x_BLD)
      x_BLD = x_BLD + attn_BLD + self.mlp(mlp_in)
    else:
      if self.attn_post_norm is not None:
        attn_BLD = self.attn_post_norm(attn_BLD)
      x_BLD = x_BLD + attn_BLD
      mlp_BLD = self.mlp(self.mlp_norm(x_BLD))
      if self.mlp_post_norm is not None:
        mlp_BLD = self.mlp_post_norm(mlp_BLD)
      x_BLD = x_BLD + mlp_BLD
    x_BLD = constrain(x_BLD, ("activation_batch", "activation_length", "activation_embed"))
    return x_BLD, new_cache


def _block_apply(block, x_BLD, positions_BL, kv_mask_BS, cache, cache_index):
  return block(x_BLD, positions_BL, kv_mask_BS, cache, cache_index)


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


class Transformer(nnx.Module):
  """Decoder-only LM (`head='lm'`) or scalar model (`head='scalar'`)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, V = cfg.d_model, cfg.vocab_size
    self.embed = _param(rngs, (V, D), ("vocab", "embed"), cfg)
    self.pos_embed = (_param(rngs, (cfg.max_seq_len, D), ("position", "embed"), cfg)
                      if cfg.position == "learned" else None)
    if cfg.scan_layers:
      self.num_blocks = 0
      self.layers = _stacked_blocks(cfg, rngs)
    else:
      self.num_blocks = cfg.num_layers
      self.layers = None
      for i in range(cfg.num_layers):
        setattr(self, f"block_{i}", Block(cfg, rngs, i))
    self.final_norm = Norm(cfg, rngs)
    if cfg.head == "scalar":
      self.score = _param(rngs, (D, 1), ("embed", "score"), cfg, std=1.0 / (D + 1) ** 0.5)
      self.score_bias = _param(rngs, (1,), ("score",), cfg, "zeros")
      self.lm_head = self.lm_head_bias = None
    else:
      self.score = self.score_bias = None
      self.lm_head = None if cfg.tie_embeddings else _param(rngs, (D, V), ("embed", "vocab"), cfg)
      self.lm_head_bias = _param(rngs, (V,), ("vocab",), cfg, "zeros") if cfg.lm_head_bias else None

  def blocks(self):
    """The `num_layers` Blocks in order (none with scan_layers: see `layers`)."""
    return [getattr(self, f"block_{i}") for i in range(self.num_blocks)]

  def hidden(self, tokens_BL, positions_BL, kv_mask_BS, cache=None, cache_index=None):
    """Final-norm hidden states [B, L, D] and the updated cache (or None)."""
    cfg = self.cfg
    dt = cfg.compute_dtype
    x_BLD = jnp.take(self.embed[...], tokens_BL, axis=0).astype(dt)
    if cfg.embed_scale:  # Gemma: the normaliser is rounded to the compute dtype first
      x_BLD = x_BLD * jnp.asarray(cfg.d_model ** 0.5, dt)
    if self.pos_embed is not None:
      x_BLD = x_BLD + jnp.take(self.pos_embed[...], positions_BL, axis=0).astype(dt)
    x_BLD = constrain(x_BLD, ("activation_batch", "activation_length", "activation_embed"))
    apply = _block_apply
    # remat trades compute for the memory of the backward pass: training and scoring forwards
    # (no cache). Decoding keeps no activations for a gradient, and nnx.remat inside the
    # sampler's while_loop cannot merge the outer trace's params (TraceContextError).
    if cfg.remat != "none" and cache is None:
      apply = nnx.remat(_block_apply, policy=_REMAT_POLICIES[cfg.remat])
    if cfg.scan_layers:
      return self._scan_blocks(x_BLD, positions_BL, kv_mask_BS, cache, cache_index)
    new_cache = [] if cache is not None else None
    for i, block in enumerate(self.blocks()):
      layer_cache = cache[i] if cache is not None else None
      x_BLD, c = apply(block, x_BLD, positions_BL, kv_mask_BS, layer_cache, cache_index)
      if cache is not None:
        new_cache.append(c)
    return self.final_norm(x_BLD), new_cache

  def _scan_blocks(self, x_BLD, positions_BL, kv_mask_BS, cache, cache_index):
    """`hidden`'s layers as one `lax.scan` over the stacked `layers` params; each layer's
    window is scanned as data. Decoding (with a per-layer cache): see below."""
    cfg = self.cfg
    graphdef, state = nnx.split(self.layers)
    if cache is None:
      windows_N = jnp.asarray([cfg.layer_window(i) for i in range(cfg.num_layers)], jnp.int32)

      def body(x_BLD, xs):
        layer_state, window = xs
        block = nnx.merge(graphdef, layer_state)
        return block(x_BLD, positions_BL, kv_mask_BS, None, None, window)[0], None

      if cfg.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
      x_BLD, _ = jax.lax.scan(body, x_BLD, (state, windows_N))
      return self.final_norm(x_BLD), None

    # Decoding: the layers unrolled over static slices of the stacked params, each with its
    # own cache buffer (a per-layer list as for unrolled models) updated in place. Measured on
    # CPU: a scanned decode step, or one slicing a stacked [N, ...] cache, copies every layer's
    # cache each token (2x slower); the decode step is small, so compiling it unrolled is cheap.
    new_cache = []
    for i in range(cfg.num_layers):
      block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
      x_BLD, c = block(x_BLD, positions_BL, kv_mask_BS, cache[i], cache_index,
                       cfg.layer_window(i))
      new_cache.append(c)
    return self.final_norm(x_BLD), new_cache

  def head(self, h_BLD):
    """LM logits [B, L, V] (fp32) or scalar values [B, L] (fp32)."""
    dt = self.cfg.compute_dtype
    if self.score is not None:
      values_BL1 = flat_matmul(h_BLD.astype(jnp.float32), self.score[...].astype(jnp.float32), 1)
      return values_BL1[..., 0] + self.score_bias[...].astype(jnp.float32)[0]
    if self.lm_head is None:
      logits_BLV = flat_matmul(h_BLD, self.embed[...].astype(dt).T, 1,
                               preferred_element_type=jnp.float32)
    else:
      logits_BLV = flat_matmul(h_BLD, self.lm_head[...].astype(dt), 1,
                               preferred_element_type=jnp.float32)
    if self.lm_head_bias is not None:
      logits_BLV = logits_BLV + self.lm_head_bias[...].astype(jnp.float32)
    if self.cfg.final_softcap:
      cap = self.cfg.final_softcap
      logits_BLV = cap * jnp.tanh(logits_BLV / cap)
    return constrain(logits_BLV, ("activation_batch", "activation_length", "activation_vocab"))

  def __call__(self, tokens_BL, positions_BL=None, mask_BL=None, cache=None, cache_index=None):
    """Runs the model.

    Without a cache: `mask_BL` marks real tokens (default all), attention is
    causal within the row. With a cache (a list of per-layer {'k','v'} arrays
    [B, K, S, E]) the L new tokens are written at slot `cache_index` and
    `mask_BL` is the [B, S] validity mask of all cache slots.
    Returns (logits_BLV or values_BL, new_cache).
    """
    B, L = tokens_BL.shape
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
    if mask_BL is None:
      S = L if cache is None else cache[0]["k"].shape[2]
      mask_BL = jnp.ones((B, S), bool)
    if cache is not None and cache_index is None:
      cache_index = 0
    h_BLD, new_cache = self.hidden(tokens_BL, positions_BL, mask_BL, cache, cache_index)
    return self.head(h_BLD), new_cache


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
  """`num_layers` Blocks as one module whose params carry a leading [num_layers] axis. The
  blocks are made one after another from `rngs`, as the unrolled model makes them, and stacked:
  a seed gives the same model in either layout. (Each is built as layer 0; the scanned
  forward passes every layer's own window as data.)"""
  blocks = [nnx.split(Block(cfg, rngs, 0)) for _ in range(cfg.num_layers)]
  graphdef = blocks[0][0]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in blocks))
  return nnx.merge(graphdef, stacked)


def constrain_cache(cache):
  """`cache` with its logical sharding (batch over the data axes, heads over tensor)."""
  axes = ("cache_batch", "activation_kv_heads", "cache_length", None)
  return [{k: constrain(v, axes) for k, v in c.items()} for c in cache]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> list[dict[str, jax.Array]]:
  """An all-zero KV cache: one {'k', 'v'} per layer, each [B, K, S, E] with B = `batch`,
  S = `length`, in `dtype` (default the compute dtype); scanned layers too (their decode step
  runs the layers unrolled, each on its own buffer: `Transformer._scan_blocks`)."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  shape = (batch, cfg.kv_heads, length, cfg.dim_per_head)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)]


CACHE_AXES = ("cache_batch", "kv_heads", "cache_length", "head_dim")


def last_token_index(mask_BL) -> jax.Array:
  """Index of the last real token per row (works for left and right padding)."""
  L = mask_BL.shape[1]
  return L - 1 - jnp.argmax(mask_BL[:, ::-1].astype(jnp.int32), axis=1)


def gather_last(values_BL, mask_BL) -> jax.Array:
  """values_BL [B, L] read at each row's last real token (`last_token_index`): [B]."""
  idx_B = last_token_index(mask_BL)
  return jnp.take_along_axis(values_BL, idx_B[:, None], axis=1)[:, 0]


def positions_from_mask(mask_BL) -> jax.Array:
  """Per-row positions counting only real tokens (left padding -> 0 at first real)."""
  return jnp.maximum(jnp.cumsum(mask_BL.astype(jnp.int32), axis=1) - 1, 0)


def count_params(cfg: ModelConfig, embeddings: bool = True) -> int:
  """Number of parameters of the model `cfg` (counted from abstract shapes, nothing
  allocated); without `embeddings`, the token and learned position embeddings are left out
  (with tied embeddings that includes the output head)."""
  abs_model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
  state = nnx.state(abs_model, nnx.Param).to_pure_dict()
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if not embeddings and name in ("embed", "pos_embed"):
      continue
    total += int(leaf.size) if hasattr(leaf, "size") else 0
  return total
