"""Mesh construction and logical-axis sharding (MaxText style).

Parameters and activations are annotated with *logical* axis names
(`embed`, `mlp`, `activation_batch`, ...). `config.mesh.rules` maps each logical
name to zero, one or several mesh axes (`data`, `fsdp`, `tensor`). The same model
code therefore runs FSDP on a TPU pod and FSDP+TP on 8 GPUs by changing config.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LogicalRules = Sequence[tuple[str, Any]]

DEFAULT_AXIS_NAMES = ("data", "fsdp", "tensor")

# FSDP over `fsdp`, tensor parallelism over `tensor`, batch over `data`+`fsdp`.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("position", None),
    ("score", None),
    ("layers", None),     # the stacked layer axis of scanned layers (model.scan_layers)
)

_state = threading.local()


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = DEFAULT_AXIS_NAMES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh; one entry of `shape` may be -1 ("all remaining devices")."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [int(s) for s in shape]
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh.shape {tuple(shape)} and mesh.axis_names {tuple(axis_names)} differ in length")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape {tuple(shape)}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if known <= 0 or len(devices) % known:
      raise ValueError(f"mesh.shape {tuple(shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}")
  try:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_device_mesh(shape, devices=devices,
                                                 allow_split_physical_axes=True)
  except Exception:  # CPU / unusual topologies: plain row-major order.
    device_array = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(device_array, tuple(axis_names))


def mesh_from_config(mesh_cfg) -> Mesh:
  """The mesh of a config's `mesh` section (shape, axis_names) over all devices
  (`make_mesh`; ValueError when the shape does not fit the devices)."""
  return make_mesh(tuple(mesh_cfg.shape), tuple(mesh_cfg.axis_names))


def rules_from_config(mesh_cfg) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules of a config's `mesh` section as a tuple of
  (logical name, mesh axis / tuple of axes / None); DEFAULT_RULES when it has none."""
  rules = mesh_cfg.get("rules", None)
  if not rules:
    return DEFAULT_RULES
  return tuple((str(name), _as_axes(axes)) for name, axes in rules)


def _as_axes(axes):
  if axes is None or isinstance(axes, str):
    return axes
  return tuple(axes)


def logical_to_spec(logical: Sequence[str | None], rules: LogicalRules,
                    mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> P:
  """Maps logical axis names to a PartitionSpec.

  A mesh axis is used at most once per array (first logical dim wins). When
  `mesh` and `shape` are given, mesh axes that do not divide the dimension are
  dropped (the dimension is replicated over them) instead of failing: tiny test
  models and odd head counts then still run on any mesh.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for dim, name in enumerate(logical):
    axes = table.get(name) if name is not None else None
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    size = 1
    for ax in axes:
      if ax in used or (mesh is not None and ax not in mesh.shape):
        continue
      ax_size = mesh.shape[ax] if mesh is not None else 1
      if shape is not None and shape[dim] % (size * ax_size):
        continue
      kept.append(ax)
      size *= ax_size
    used.update(kept)
    out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return P(*out)


@contextlib.contextmanager
def axis_rules(mesh: Mesh | None, rules: LogicalRules):
  """Activates `mesh` and `rules` for activation constraints inside the model."""
  prev = getattr(_state, "ctx", None)
  _state.ctx = (mesh, tuple(rules))
  try:
    yield
  finally:
    _state.ctx = prev


def current_mesh_and_rules():
  """(mesh, rules) activated by the innermost `axis_rules` of this thread, else
  (None, ())."""
  return getattr(_state, "ctx", None) or (None, ())


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside `axis_rules`."""
  mesh, rules = current_mesh_and_rules()
  if mesh is None or mesh.size == 1:
    return x
  spec = logical_to_spec(logical, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def named_sharding(mesh: Mesh, rules: LogicalRules, logical: Sequence[str | None],
                   shape: Sequence[int] | None = None) -> NamedSharding:
  """NamedSharding on `mesh` of an array with `logical` axis names (`logical_to_spec`;
  with `shape`, mesh axes that do not divide a dimension are dropped)."""
  return NamedSharding(mesh, logical_to_spec(logical, rules, mesh, shape))


def replicated(mesh: Mesh) -> NamedSharding:
  """A NamedSharding that replicates an array on every device of `mesh`."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules: LogicalRules, ndim: int, shape=None) -> NamedSharding:
  """Sharding of a [batch, ...] input array: batch over the data axes, rest replicated."""
  return named_sharding(mesh, rules, ("activation_batch",) + (None,) * (ndim - 1), shape)


def put_batch(batch: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Places a host-local numpy batch on the mesh as global arrays (multi-host safe).

  Every leaf's leading dim is this process's share of the global batch.
  """
  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    sharding = batch_sharding(mesh, rules, x.ndim, global_shape)
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(put, batch)


def data_parallel_size(mesh: Mesh, rules: LogicalRules) -> int:
  """Number of devices the batch dimension is split over: the product of the mesh
  axes `activation_batch` maps to (1 when none)."""
  spec = logical_to_spec(("activation_batch",), rules, mesh)
  axes = spec[0]
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


_DISTRIBUTED = {"initialized": False}


def maybe_initialize_distributed(dist_cfg) -> None:
  """Calls `jax.distributed.initialize` for multi-host runs when configured (once per
  process: the CLI calls it before anything asks for the process index, pipelines again)."""
  if not dist_cfg or not dist_cfg.get("enabled", False) or _DISTRIBUTED["initialized"]:
    return
  _DISTRIBUTED["initialized"] = True
  kwargs = {}
  for key in ("coordinator_address", "num_processes", "process_id"):
    value = dist_cfg.get(key, None)
    if value not in (None, "", -1):
      kwargs[key] = value
  logging.info("jax.distributed.initialize(%s)", kwargs)
  jax.distributed.initialize(**kwargs)


def to_host(tree: Any) -> Any:
  """Every leaf of `tree` as a numpy array of its GLOBAL value on every process (multi-host
  safe): arrays whose shards live on other processes too (a batch sharded over the hosts'
  devices) are all-gathered (`multihost_utils.process_allgather`, a collective: every
  process must call it in the same order); local or fully replicated arrays are copied.
  Non-array leaves go through `np.asarray`."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def tree_specs(tree) -> Any:
  """The `sharding` of every leaf of `tree` (None for leaves without one)."""
  return jax.tree.map(lambda x: getattr(x, "sharding", None), tree)


def put_global(batch: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """Places a batch that every process holds in full (e.g. prompts) on the mesh."""
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, rules, x.ndim, x.shape)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, batch)
