"""Abstract model definitions and directly-sharded parameter creation."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from pit import sharding as shd
from pit.model import ModelConfig, Transformer

Params = Any  # nested dict of arrays (nnx pure dict)


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """What a jitted function needs to rebuild the model from a params pytree."""
  cfg: ModelConfig
  graphdef: Any
  abstract_params: Params  # ShapeDtypeStructs
  axes: Params             # logical axis names per leaf (tuples wrapped in LogicalAxes)

  def merge(self, params: Params) -> Transformer:
    """The Transformer module with `params` (a pure-dict pytree) in place; call it inside
    jit."""
    return nnx.merge(self.graphdef, params)

  def shardings(self, mesh: Mesh, rules) -> Params:
    """A NamedSharding per parameter leaf on `mesh`, from its logical axes and `rules`."""
    return jax.tree.map(
        lambda ax, a: NamedSharding(mesh, shd.logical_to_spec(ax.names, rules, mesh, a.shape)),
        self.axes, self.abstract_params, is_leaf=lambda x: isinstance(x, LogicalAxes))

  def sharded_abstract(self, mesh: Mesh, rules) -> Params:
    """ShapeDtypeStructs carrying each param's sharding on `mesh`: a restore target."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_params, self.shardings(mesh, rules))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LogicalAxes:
  """A parameter's logical axis names (a static pytree leaf, so axis trees map like
  params)."""
  names: tuple


def model_def(cfg: ModelConfig) -> ModelDef:
  """The ModelDef of `cfg`: graph definition, abstract params (ShapeDtypeStructs) and the
  logical axes of every leaf, from an abstract model (nothing allocated)."""
  abs_model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(abs_model)
  is_var = lambda x: isinstance(x, nnx.Variable)
  axes_state = jax.tree.map(lambda v: v.replace(LogicalAxes(tuple(v.get_metadata()["axes"]))),
                            state, is_leaf=is_var)
  axes = _to_pure(axes_state)
  if cfg.scan_layers:   # nnx.vmap stacked the block params: a leading "layers" axis
    axes["layers"] = jax.tree.map(lambda a: LogicalAxes(("layers",) + a.names), axes["layers"],
                                  is_leaf=lambda x: isinstance(x, LogicalAxes))
  return ModelDef(cfg, graphdef, state.to_pure_dict(), axes)


def _to_pure(state) -> dict:
  out = {}
  for path, var in state.flat_state():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = var.get_value()
  return out


def init_params(mdef: ModelDef, mesh: Mesh, rules, seed: int) -> Params:
  """Creates parameters directly in their shards (never whole on one device)."""
  shardings = mdef.shardings(mesh, rules)

  def init(key):
    model = Transformer(mdef.cfg, nnx.Rngs(params=key))
    params = nnx.state(model).to_pure_dict()
    return jax.lax.with_sharding_constraint(params, shardings)

  init = jax.jit(init, out_shardings=shardings)
  with shd.axis_rules(mesh, rules):
    return init(jax.random.key(seed))


def num_params(params: Params) -> int:
  """Total number of elements over the leaves of `params`."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


def stack_layers(params: Params, num_layers: int, stack=None) -> Params:
  """Unrolled params ({'block_0': ..., 'block_{N-1}': ..., rest}) as scanned params ({'layers':
  every leaf stacked over the N blocks [N, ...], rest}), the layout of `scan_layers` models.
  `stack` (default numpy's) joins one leaf's N arrays. Raises ValueError when a block is
  missing or the blocks differ in structure."""
  import numpy as np
  stack = stack or (lambda xs: np.stack(xs))
  names = [f"block_{i}" for i in range(num_layers)]
  missing = [n for n in names if n not in params]
  if missing:
    raise ValueError(f"stack_layers: no {missing[:4]} in the params")
  out = {k: v for k, v in params.items() if k not in names}
  blocks = [params[n] for n in names]
  if any(jax.tree.structure(b) != jax.tree.structure(blocks[0]) for b in blocks):
    raise ValueError("stack_layers: the blocks differ in structure")
  out["layers"] = jax.tree.map(lambda *xs: stack(list(xs)), *blocks)
  return out


def unstack_layers(params: Params) -> Params:
  """Scanned params ({'layers': [N, ...] leaves, rest}) as unrolled ones ({'block_i': the
  i-th slice of each leaf, rest}); unrolled params are returned as they are."""
  if "layers" not in params:
    return params
  out = {k: v for k, v in params.items() if k != "layers"}
  n = jax.tree.leaves(params["layers"])[0].shape[0]
  for i in range(n):
    out[f"block_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
  return out
