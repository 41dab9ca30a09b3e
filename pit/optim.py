"""AdamW with warmup + cosine decay and global-norm clipping."""
from __future__ import annotations

import jax
import optax


def decay_length(cfg, total_steps: int | None = None) -> int:
  """The cosine's length in steps: cfg.decay_steps, or with decay_steps = 0 the run's own
  length `total_steps` (train.steps), so overriding a run's steps moves its schedule too.
  ValueError when decay_steps < 0, or decay_steps = 0 and total_steps is missing or < 1."""
  decay = int(cfg.decay_steps)
  if decay < 0:
    raise ValueError(f"optim.decay_steps must be >= 0 (0: train.steps), got {decay}")
  if decay == 0:
    if total_steps is None:
      raise ValueError("optim.decay_steps = 0 means 'the run's train.steps', but no step "
                       "count was given")
    if int(total_steps) < 1:
      raise ValueError(f"optim.decay_steps = 0 follows train.steps, which is {total_steps} "
                       "(need >= 1)")
    decay = int(total_steps)
  return decay


def learning_rate_schedule(cfg, total_steps: int | None = None) -> optax.Schedule:
  """Linear warmup then cosine decay to end_lr_ratio x peak (optax.warmup_cosine_decay_schedule).
  cfg: optim section (learning_rate, warmup_steps, decay_steps, end_lr_ratio); decay_steps 0:
  `total_steps` (`decay_length`)."""
  peak = float(cfg.learning_rate)
  warmup = int(cfg.warmup_steps)
  decay = max(decay_length(cfg, total_steps), warmup + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
      decay_steps=decay, end_value=peak * float(cfg.end_lr_ratio))


BIASES = ("bq", "bk", "bv", "bo")


def is_weight_matrix(keys, ndim: int) -> bool:
  """Whether the param at path `keys` (its key names, e.g. ("layers", "attn", "wq")) with
  `ndim` dims is a weight matrix: not a norm scale, nor a bias of any rank (bq / bk / bv are
  [heads, head_dim]), nor the scalar head's bias; under `layers` (scanned layers) the leading
  layer axis does not count: a stacked norm scale [N, D] is still a vector per layer."""
  keys = [str(k) for k in keys]
  name = keys[-1] if keys else ""
  if name in BIASES or name.startswith("b_") or name.endswith("bias"):
    return False
  return ndim - int("layers" in keys) >= 2


def _decay_mask(params):
  """Weight decay on weight matrices only (`is_weight_matrix`)."""
  def is_matrix(path, x):
    return is_weight_matrix([getattr(k, "key", k) for k in path], x.ndim)
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg, total_steps: int | None = None) -> optax.GradientTransformation:
  """The optimizer of a config's `optim` section: global-norm gradient clipping (when
  grad_clip_norm > 0), then AdamW (Loshchilov & Hutter 2019; b1, b2, eps) on
  `learning_rate_schedule`, with weight decay on weight matrices only (`_decay_mask`).
  total_steps: the run's train.steps, the schedule's length when decay_steps = 0."""
  parts = []
  if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
  parts.append(optax.adamw(learning_rate_schedule(cfg, total_steps), b1=float(cfg.b1),
                           b2=float(cfg.b2), eps=float(cfg.eps),
                           weight_decay=float(cfg.weight_decay), mask=_decay_mask))
  return optax.chain(*parts)
