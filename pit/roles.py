"""Roles: where a model lives in a workdir, the config it was trained with, and loading it.

The one place that knows a workdir's layout, used by every pipeline and recipe (no
pipeline imports another for this). A role is what a model is used as:

  policy      a language model that is sampled or trained (M_P, M_PIT, an RL round's policy)
  reference   a frozen language model (the KL reference of PPO, DPO's reference)
  judge       a language model prompted to judge (or an HF directory: `LMJudge.from_hf`)
  reward      a scalar-head reward model (Bradley-Terry)
  gap_reward  PIT's scalar-head gap reward model r_gap(x, y, y_ref)
  value       a scalar-head value model (PPO)

A path may be a workdir (its weights: WORKDIR/policy/checkpoints, an RL round's exported
policy, else WORKDIR/checkpoints) or a checkpoints folder itself. The model's shape comes
from the workdir's `config_<pipeline>.json` whose model.head matches the role, else from
the caller's default. Restores are verified (`pit.checkpoint`): a damaged checkpoint raises
CorruptCheckpointError naming it.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp

from pit.checkpoint import Checkpointer
from pit.model import ModelConfig
from pit.params import ModelDef, model_def, stack_layers, unstack_layers

HEADS = {"policy": "lm", "reference": "lm", "judge": "lm", "reward": "scalar",
         "gap_reward": "scalar", "value": "scalar"}


def checkpoint_dir(path: str, field: str = "checkpoint") -> str:
  """The checkpoints folder of `path`: WORKDIR/policy/checkpoints (an RL round's exported
  policy), else WORKDIR/merged/checkpoints (a LoRA run's merged model, `pit.lora`), else
  WORKDIR/checkpoints, else `path` itself. Errors name `field` (the config
  field that gave the path)."""
  if not path:
    raise ValueError(f"{field}: no checkpoint directory given")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{field}: not a directory: {path}")
  for sub in (("policy", "checkpoints"), ("merged", "checkpoints"), ("checkpoints",)):
    d = os.path.join(path, *sub)
    if os.path.isdir(d):
      return d
  return path


def workdir_of(path: str) -> str:
  """The workdir a checkpoints folder belongs to (`path` itself when it is a workdir)."""
  p = os.path.normpath(path)
  if os.path.basename(p) == "checkpoints":
    p = os.path.dirname(p)
    if os.path.basename(p) in ("policy", "merged"):
      p = os.path.dirname(p)
  return p


def saved_config(path: str, head: str | None = None) -> dict | None:
  """The config a workdir's model was trained with: its first `config_*.json` (by name)
  whose model.head is `head` (any head when None); None when there is none."""
  for cfg_path in sorted(glob.glob(os.path.join(workdir_of(path), "config_*.json"))):
    with open(cfg_path) as f:
      cfg = json.load(f)
    model = cfg.get("model", {})
    if model and (head is None or model.get("head", "lm") == head):
      return cfg
  return None


@dataclasses.dataclass
class Model:
  """A loaded role: its model definition, verified params and the step they are from."""
  role: str
  mdef: ModelDef
  params: Any
  step: int
  path: str              # the checkpoints folder read
  config: dict | None    # the saved config, when the workdir has one


def restore_params(mdef: ModelDef, path: str, mesh, rules, field: str = "checkpoint"):
  """(params, step) of the latest checkpoint of `path`, sharded on `mesh`, verified."""
  ckpt = Checkpointer(checkpoint_dir(path, field), read_only=True, async_save=False)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    saved = set(ckpt.saved_param_keys())
    scanned_saved = "layers" in saved
    if scanned_saved == mdef.cfg.scan_layers or not ({"layers", "block_0"} & saved):
      return ckpt.restore_params(mdef.sharded_abstract(mesh, rules))
    # the other layout (scanned vs unrolled layers): restored as saved, then (un)stacked
    saved_mdef = model_def(mdef.cfg.replace(scan_layers=scanned_saved))
    params, step = ckpt.restore_params(saved_mdef.sharded_abstract(mesh, rules))
  finally:
    ckpt.close()
  logging.info("%s: %s layers restored into %s ones", path, "scanned" if scanned_saved else
               "unrolled", "scanned" if mdef.cfg.scan_layers else "unrolled")
  params = (stack_layers(params, mdef.cfg.num_layers, jnp.stack) if mdef.cfg.scan_layers
            else unstack_layers(params))
  return jax.device_put(params, mdef.shardings(mesh, rules)), step


def load(role: str, path: str, *, mesh, rules, default_mdef: ModelDef | None = None,
         field: str | None = None, compute: dict | None = None) -> Model:
  """The `role`'s model from a workdir or checkpoints folder (see module docstring);
  `compute`: ModelConfig fields on how it computes (e.g. dtype, scan_layers) to use instead of
  the saved ones (the params are restored into that layout)."""
  if role not in HEADS:
    raise ValueError(f"unknown role {role!r} (known: {', '.join(HEADS)})")
  field = field or role
  ckpt_dir = checkpoint_dir(path, field)
  cfg = saved_config(path, HEADS[role])      # the model's shape: saved with it, else the default
  if cfg is not None:
    mdef = model_def(ModelConfig.from_config(cfg["model"]))
  elif default_mdef is not None:
    mdef = default_mdef
  else:
    raise FileNotFoundError(f"{workdir_of(path)}: no config_*.json with "
                            f"model.head='{HEADS[role]}' for the {role}")
  if mdef.cfg.head != HEADS[role]:
    raise ValueError(f"{field}: a {role} needs model.head='{HEADS[role]}', the model at {path} "
                     f"has '{mdef.cfg.head}'")
  if compute:
    mdef = model_def(mdef.cfg.replace(**compute))
  params, step = restore_params(mdef, ckpt_dir, mesh, rules, field)
  return Model(role, mdef, params, step, ckpt_dir, cfg)
