"""The single generic, jit-compiled train step every method plugs a loss into.

A loss function has the signature

    loss_fn(model, batch, rng, extra) -> (loss, weight, metrics)

where `loss` is the mean loss over the (micro)batch, `weight` its normaliser
(e.g. the number of target tokens or pairs) and `metrics` a dict of scalars.
With gradient accumulation the step minimises sum(weight_i * loss_i) / sum(weight_i)
over micro-batches, i.e. exactly the full-batch mean. `extra` is any pytree the
loss needs besides the trained params (a frozen reference model's params,
precomputed reference log-probs, ...); it is passed through untouched.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pit import sharding as shd
from pit.params import ModelDef

LossFn = Callable[[Any, dict, jax.Array, Any], tuple[jax.Array, jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
  """The trained state: step (int32 scalar), params and optimizer state (pytrees)."""
  step: jax.Array
  params: Any
  opt_state: Any


def create_train_state(params, optimizer: optax.GradientTransformation, mesh: Mesh,
                       param_shardings) -> tuple[TrainState, TrainState]:
  """Builds the state in place on the mesh; returns (state, state_shardings)."""
  abs_opt = jax.eval_shape(optimizer.init, params)
  opt_shardings = match_param_shardings(abs_opt, params, param_shardings, mesh)
  shardings = TrainState(step=shd.replicated(mesh), params=param_shardings, opt_state=opt_shardings)
  init = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)),
                 in_shardings=(param_shardings,), out_shardings=shardings)
  return init(params), shardings


def abstract_train_state(abstract_params, optimizer, mesh, param_shardings):
  """ShapeDtypeStructs with shardings, e.g. as a restore target."""
  abs_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_shardings = match_param_shardings(abs_opt, abstract_params, param_shardings, mesh)
  abs_state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), abstract_params, abs_opt)
  shardings = TrainState(shd.replicated(mesh), param_shardings, opt_shardings)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abs_state, shardings), shardings


def match_param_shardings(tree, params, param_shardings, mesh: Mesh):
  """Shardings for an optimizer-state tree: a leaf whose key path ends with a
  parameter's path (Adam's mu / nu) gets that parameter's sharding; the rest
  (counters, scalars) is replicated."""
  by_path = {}
  for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]:
    by_path[_keys(path)] = s
  shapes = {_keys(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

  def pick(path, leaf):
    keys = _keys(path)
    for n in range(len(keys)):
      suffix = keys[n:]
      if suffix in by_path and shapes[suffix] == getattr(leaf, "shape", None):
        return by_path[suffix]
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(pick, tree)


def _keys(path) -> tuple:
  return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def make_train_step(mdef: ModelDef, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules, state_shardings: TrainState, *, accum_steps: int = 1,
                    seed: int = 0, lr_schedule: optax.Schedule | None = None,
                    extra_shardings: Any = None, donate: bool = True,
                    frozen_shardings: Any = None):
  """Returns jitted `step(state, batch, extra, frozen=None) -> (state, metrics)`. With
  `frozen_shardings` (LoRA, `pit.lora`) the state holds only the trained leaves and `frozen`
  (the rest of `mdef`'s params, not donated, never updated) is joined to them for the
  forward pass."""
  base_key = jax.random.key(seed)

  def micro_loss(params, batch, rng, extra, frozen):
    if frozen is not None:
      from pit import lora
      params = lora.join(frozen, params)
    model = mdef.merge(params)
    loss, weight, metrics = loss_fn(model, batch, rng, extra)
    return loss * weight, (weight, metrics)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(state: TrainState, batch, extra, frozen):
    rng = jax.random.fold_in(base_key, state.step)
    with shd.axis_rules(mesh, rules):
      if accum_steps == 1:
        (wloss, (weight, metrics)), grads = grad_fn(state.params, batch, rng, extra, frozen)
        wmetrics = jax.tree.map(lambda m: m * weight, metrics)
      else:
        micro = jax.tree.map(lambda x: _split_micro(x, accum_steps), batch)

        def body(carry, xs):
          mb, i = xs
          (wl, (w, m)), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i), extra, frozen)
          acc_g, acc_l, acc_w, acc_m = carry
          return (jax.tree.map(jnp.add, acc_g, g), acc_l + wl, acc_w + w,
                  jax.tree.map(lambda a, b: a + b * w, acc_m, m)), None

        zeros_g = jax.tree.map(jnp.zeros_like, state.params)
        _, (_, m_shape) = jax.eval_shape(micro_loss, state.params,
                                         jax.tree.map(lambda x: x[0], micro), rng, extra, frozen)
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
        (grads, wloss, weight, wmetrics), _ = jax.lax.scan(
            body, (zeros_g, 0.0, 0.0, zeros_m), (micro, jnp.arange(accum_steps)))
      denom = jnp.maximum(weight, 1e-12)
      grads = jax.tree.map(lambda g: g / denom, grads)
      metrics = jax.tree.map(lambda m: m / denom, wmetrics)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics["loss"] = wloss / denom
    metrics["grad_norm"] = optax.global_norm(grads)
    # One reduction over the new params: a finite loss can still overflow them.
    metrics["params_finite"] = jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    metrics["weight"] = weight
    if lr_schedule is not None:
      metrics["learning_rate"] = lr_schedule(state.step)
    new_state = TrainState(state.step + 1, params, opt_state)
    return new_state, metrics

  batch_sharding = lambda b: jax.tree.map(lambda x: shd.batch_sharding(mesh, rules, x.ndim, x.shape), b)
  compiled = {}

  def run(state, batch, extra=None, frozen=None):
    key = jax.tree.structure(batch), tuple(x.shape for x in jax.tree.leaves(batch))
    if key not in compiled:
      compiled[key] = jax.jit(
          step, in_shardings=(state_shardings, batch_sharding(batch), extra_shardings,
                              frozen_shardings),
          out_shardings=(state_shardings, shd.replicated(mesh)),
          donate_argnums=(0,) if donate else ())
    return compiled[key](state, batch, extra, frozen)

  run.num_compiled = lambda: len(compiled)
  return run


def _split_micro(x, n):
  """[B, ...] -> [n, B/n, ...], micro-batch i = rows i, i+n, ... so each device's
  contiguous share of the batch is spread evenly over the micro-batches."""
  if x.shape[0] % n:
    raise ValueError(f"batch size {x.shape[0]} not divisible by accum_steps={n}")
  y = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
  return shd.constrain(y, (None, "activation_batch") + (None,) * (x.ndim - 1))
