"""LoRA (Hu et al., 2021) as a training option of the one training loop (`train.lora`).

A LoRA run trains `{w}_lora_a` [*in, r] and `{w}_lora_b` [r, *out] beside each target
weight w (the model computes x w + (alpha / r) (x A) B; `pit.model`), plus a scalar model's
head (`score`, `score_bias`: a reward or value head is new and must learn). Everything
else is frozen: it is an input of the jitted step, not part of the train state, so the
optimizer state and every checkpoint hold the trainable leaves only. The frozen weights are
rebuilt on start and on resume from the stage's own init (a pretrained model, an earlier
stage, or the seed). At the end of training the adapters are merged into the weights
(w + (alpha / r) A B) and the merged model is written to WORKDIR/merged/checkpoints, which
every loader reads (`pit.roles.checkpoint_dir`), so later stages, sampling and export see a
plain model.

Why our own ~100 lines and not a library: Flax NNX's `nnx.LoRA` wraps `nnx.Linear` modules,
which our einsum-based model does not use; qwix intercepts `einsum` / `dot_general` calls and
finds the weight by identity, which misses our weights under bf16 compute (they are cast
before the einsum), and creates its parameters outside our logical-axis metadata, so they
would not shard by our rules nor checkpoint as a separate adapter tree.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

SUFFIXES = ("_lora_a", "_lora_b")
HEAD = ("score", "score_bias")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The `train.lora` section: rank (0 = off), alpha, dropout (must be 0), targets."""
  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

  @classmethod
  def from_config(cls, section) -> "LoraConfig":
    """From `config.train.lora` (absent or None -> off). Raises ValueError on a negative
    rank, a non-positive alpha, dropout other than 0 or an unknown target."""
    if section is None:
      return cls()
    get = section.get if hasattr(section, "get") else lambda k, d: getattr(section, k, d)
    c = cls(rank=int(get("rank", 0)), alpha=float(get("alpha", 16.0)),
            dropout=float(get("dropout", 0.0)), targets=tuple(get("targets", cls.targets)))
    if c.rank < 0:
      raise ValueError(f"train.lora.rank: must be >= 0, got {c.rank}")
    if c.rank and c.alpha <= 0:
      raise ValueError(f"train.lora.alpha: must be positive, got {c.alpha}")
    if c.dropout:
      raise ValueError("train.lora.dropout: only 0 is supported (the model has no dropout "
                       "randomness at call time)")
    from pit.model import LORA_TARGETS
    bad = sorted(set(c.targets) - set(LORA_TARGETS))
    if c.rank and (bad or not c.targets):
      raise ValueError(f"train.lora.targets: {bad or 'empty'}; known: {list(LORA_TARGETS)}")
    return c

  @property
  def enabled(self) -> bool:
    """Whether LoRA is on (rank > 0)."""
    return self.rank > 0

  @property
  def scale(self) -> float:
    """alpha / rank."""
    return self.alpha / self.rank


def _name(path) -> str:
  return str(getattr(path[-1], "key", path[-1]))


def is_trainable(path) -> bool:
  """A LoRA factor or a scalar head leaf (key path from `tree_flatten_with_path`)."""
  name = _name(path)
  return name.endswith(SUFFIXES) or name in HEAD


def _partition(tree, keep):
  """The nested-dict subtree of leaves whose path satisfies `keep`."""
  out: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if keep(path):
      node = out
      for k in path[:-1]:
        node = node.setdefault(getattr(k, "key", k), {})
      node[_name(path)] = leaf
  return out


def split(tree) -> tuple[dict, dict]:
  """(frozen, trainable) nested dicts of a params (or abstract / shardings) tree."""
  return (_partition(tree, lambda p: not is_trainable(p)), _partition(tree, is_trainable))


def join(frozen: dict, trainable: dict) -> dict:
  """The full tree from `split`'s two halves."""
  out = dict(frozen)
  for k, v in trainable.items():
    out[k] = join(out.get(k, {}), v) if isinstance(v, dict) else v
  return out


def merge(params: dict, scale: float, stacked: bool = False) -> dict:
  """Plain-model params: every weight w with factors gets w + scale * A B (contracting A's
  rank axis with B's), factors dropped. Works on nested trees (e.g. PPO's policy / value);
  under `layers` (scanned layers) A, B and w carry a leading layer axis, merged per layer."""
  out = {}
  for k, v in params.items():
    if isinstance(v, dict):
      out[k] = merge(v, scale, stacked or k == "layers")
    elif not k.endswith(SUFFIXES):
      a, b = params.get(k + "_lora_a"), params.get(k + "_lora_b")
      if a is not None and b is not None:
        product = lambda a, b: jnp.tensordot(a, b, axes=1)
        delta = (jax.vmap(product) if stacked else product)(a.astype(jnp.float32),
                                                            b.astype(jnp.float32))
        v = (v.astype(jnp.float32) + scale * delta).astype(v.dtype)
      out[k] = v
  return out


def augment(mdef, cfg: LoraConfig):
  """`mdef` (a ModelDef, or PPO's ActorCriticDef of two) with LoRA factors added."""
  from pit.params import model_def
  if hasattr(mdef, "policy") and hasattr(mdef, "value"):
    return dataclasses.replace(mdef, policy=augment(mdef.policy, cfg), value=augment(mdef.value, cfg))
  return model_def(mdef.cfg.replace(lora_rank=cfg.rank, lora_alpha=cfg.alpha,
                                    lora_targets=tuple(cfg.targets)))


def fresh_factors(abstract_trainable: dict, shardings: dict, seed: int) -> dict:
  """New factors placed on their shardings: A ~ N(0, 1/fan_in), B = 0 (so the adapted
  model starts equal to the frozen one). Head leaves are not made here."""
  keep = lambda p: _name(p).endswith(SUFFIXES)
  abstract = _partition(abstract_trainable, keep)
  out_shardings = _partition(shardings, keep)

  def make(key):   # one compiled function for every factor, placed on its shards
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for i, (path, a) in enumerate(leaves):
      if _name(path).endswith("_lora_b"):
        values.append(jnp.zeros(a.shape, a.dtype))
      else:
        fan_in = 1   # the input dims: not the rank, nor the scanned layers' leading axis
        stacked = any(getattr(k, "key", None) == "layers" for k in path)
        for d in a.shape[1 if stacked else 0:-1]:
          fan_in *= d
        values.append((jax.random.normal(jax.random.fold_in(key, i), a.shape, jnp.float32)
                       * fan_in ** -0.5).astype(a.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)
  return jax.jit(make, out_shardings=out_shardings)(jax.random.key(seed))


def check_frozen_base(workdir: str, frozen, cfg: LoraConfig, *, resuming: bool):
  """Records (fresh start) or checks (resume) WORKDIR/lora_base.json: the checksums of the
  frozen weights and the rank / alpha / targets the factors were trained with. A resume onto
  other frozen weights (the init source changed or was trained further) or another LoRA
  setting raises ValueError naming what differs — the factors would silently mean something
  else."""
  import json
  import os

  from pit import integrity, jsonio
  path = os.path.join(workdir, "lora_base.json")
  now = {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
         "frozen_checksums": integrity.leaf_checksums(frozen)}
  if resuming and os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    changed = [k for k in ("rank", "alpha", "targets") if before.get(k) != now[k]]
    problem = integrity.compare(before.get("frozen_checksums", {}), now["frozen_checksums"])
    if changed or problem:
      what = (f"train.lora {', '.join(changed)} changed" if changed else
              f"the frozen weights differ from those the adapters were trained on ({problem}): "
              "the stage's init source changed or was trained further")
      raise ValueError(f"{workdir}: cannot resume LoRA training: {what}; use a fresh workdir "
                       "or restore the original init")
    return
  if jax.process_index() == 0:
    jsonio.write_atomic(path, now)


def count(tree: Any) -> int:
  """Number of elements over the leaves of `tree`."""
  return sum(int(x.size) for x in jax.tree.leaves(tree))
