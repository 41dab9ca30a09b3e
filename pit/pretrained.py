"""`model.init_from`: where a stage's weights start, for every pipeline and PIT stage.

  ''               random initialisation (the from-scratch presets)
  'hf:DIR'         a Hugging Face directory (config.json + safetensors; `pit.hf_convert`)
  'gguf:FILE'      a llama.cpp GGUF file (`pit.gguf_import`)
  'checkpoint:DIR' a PIT workdir or checkpoints folder (its saved config gives the shape)

`resolve(config)` (called before a run's config is saved, and again by
`pipelines.common.setup`, idempotently) replaces the model section's shape with the
source's — keeping how the model runs (dtype, param_dtype, remat, head) from the config —
and, unless `tokenizer.path` is set, takes the tokenizer and its chat template from the same
source. `init_fn(rt, config)` gives the trainer's `init_params_fn`: language models get the
source's weights; scalar-head models (reward, gap reward, value) its trunk with a fresh
head. A stage's own init setting (train.init_checkpoint, reward.init_checkpoint, ...) wins
over init_from, so PIT's later stages still start from the earlier stages' results.
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from pit import hf_convert, roles
from pit.checkpoint import Checkpointer
from pit.model import ModelConfig
from pit.params import init_params

KINDS = ("hf", "gguf", "checkpoint")
# How the model runs, not what it computes: kept from the run's own config.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "head", "init_std", "scan_layers", "attention")


def parse(init_from: str) -> tuple[str, str]:
  """('hf' | 'gguf' | 'checkpoint', path) of a `model.init_from` value; ('', '') when empty.
  Raises ValueError on another prefix and FileNotFoundError on a missing path (both naming
  model.init_from)."""
  init_from = str(init_from or "").strip()
  if not init_from:
    return "", ""
  kind, sep, path = init_from.partition(":")
  if not sep or kind not in KINDS or not path:
    raise ValueError(f"model.init_from: {init_from!r} is not 'hf:DIR', 'gguf:FILE' or "
                     "'checkpoint:DIR'")
  path = os.path.expanduser(path)
  exists = os.path.isfile(path) if kind == "gguf" else os.path.isdir(path)
  if not exists:
    raise FileNotFoundError(f"model.init_from: {'file' if kind == 'gguf' else 'directory'} "
                            f"not found: {path}")
  return kind, os.path.abspath(path)


def source_model_config(kind: str, path: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, tokenizer section) of a source (see the module docstring)."""
  if kind == "hf":
    return hf_convert.config_from_hf(hf_convert.read_hf_config(path)), {"kind": "hf", "path": path}
  if kind == "gguf":
    from pit import gguf_import
    return gguf_import.config_from_gguf(gguf_import.GGUFFile(path)), {"kind": "gguf", "path": path}
  saved = roles.saved_config(path)
  if saved is None:
    raise FileNotFoundError(f"model.init_from: {roles.workdir_of(path)} has no config_*.json "
                            "saying the model's shape")
  return ModelConfig.from_config(saved["model"]), dict(saved.get("tokenizer", {}))


def resolve(config) -> None:
  """Applies `model.init_from` to `config` in place (module docstring); no-op without it."""
  kind, path = parse(config.model.get("init_from", ""))
  if not kind:
    return
  source, tokenizer = source_model_config(kind, path)
  keep = {k: config.model[k] for k in RUNTIME_FIELDS if k in config.model}
  for field, value in source.__dict__.items():
    if field not in keep and field in config.model:
      config.model[field] = value
  if not config.tokenizer.get("path", ""):
    config.tokenizer.update({k: v for k, v in tokenizer.items() if k in ("kind", "path")})


def _fresh_scalar_head(mdef, mesh, rules, seed: int) -> dict:
  """`score` / `score_bias` of a new scalar head, initialised as the model would be."""
  abstract = mdef.abstract_params
  shardings = mdef.shardings(mesh, rules)
  D = abstract["score"].shape[0]
  score = (jax.random.truncated_normal(jax.random.key(seed), -2.0, 2.0, abstract["score"].shape)
           / (D + 1) ** 0.5).astype(abstract["score"].dtype)
  return {"score": jax.device_put(score, shardings["score"]),
          "score_bias": jax.device_put(jnp.zeros(abstract["score_bias"].shape,
                                                 abstract["score_bias"].dtype),
                                       shardings["score_bias"])}


def load_params(kind: str, path: str, mdef, mesh, rules, seed: int = 0):
  """The source's params for `mdef` on `mesh` (a scalar model: the trunk + a fresh head)."""
  scalar = mdef.cfg.head == "scalar"
  if kind == "hf":
    params = hf_convert.load_params_sharded(path, mdef, mesh, rules, skip_head=scalar)
  elif kind == "gguf":
    from pit import gguf_import
    params = gguf_import.load_gguf(path, mdef=mdef, mesh=mesh, rules=rules)[1]
  else:
    if scalar:
      return trunk_from_lm_checkpoint(mdef, mesh, rules, roles.checkpoint_dir(path, "model.init_from"),
                                      seed)
    return roles.restore_params(mdef, path, mesh, rules, "model.init_from")[0]
  if scalar:
    params.update(_fresh_scalar_head(mdef, mesh, rules, seed))
  logging.info("weights from %s:%s (%d parameters)", kind, path,
               sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)))
  return params


def init_fn(rt, config):
  """The trainer's `init_params_fn` for `model.init_from` (None without it)."""
  kind, path = parse(config.model.get("init_from", ""))
  if not kind:
    return None
  seed = int(config.train.seed)
  return lambda: load_params(kind, path, rt.mdef, rt.mesh, rt.rules, seed)


def trunk_from_lm_checkpoint(mdef, mesh, rules, checkpoint_dir: str, seed: int):
  """Scalar-model params: a fresh head (`score`, `score_bias`) on the trunk of a PIT LM
  checkpoint of the same width. A reward model deeper than the LM (model.num_layers above
  the checkpoint's) takes the LM's blocks as its lower blocks; each extra top block starts
  as the identity (its attention and MLP output projections zero), so training starts from
  exactly the LM trunk's features. Either model may have scanned layers (`scan_layers`): the
  trunk is assembled unrolled and stacked at the end when the scalar model is scanned."""
  from pit.params import model_def, stack_layers, unstack_layers
  if mdef.cfg.scan_layers:
    params = trunk_from_lm_checkpoint(model_def(mdef.cfg.replace(scan_layers=False)), mesh, rules,
                                      checkpoint_dir, seed)
    params = stack_layers(params, mdef.cfg.num_layers, jnp.stack)
    return jax.device_put(params, mdef.shardings(mesh, rules))
  head = ("score", "score_bias")
  target = {k: v for k, v in mdef.sharded_abstract(mesh, rules).items() if k not in head}
  ckpt = Checkpointer(checkpoint_dir, read_only=True, async_save=False)
  try:
    if "layers" in ckpt.saved_param_keys():   # a scanned LM: restored at its own depth, unstacked
      shapes = ckpt.saved_param_shapes()["layers"]
      n_lm = int(jax.tree.leaves(shapes, is_leaf=lambda t: isinstance(t, tuple))[0][0])
      if n_lm > mdef.cfg.num_layers:
        raise ValueError(f"{checkpoint_dir}: the LM has {n_lm} layers, the scalar model "
                         f"{mdef.cfg.num_layers}")
      lm = model_def(mdef.cfg.replace(scan_layers=True, num_layers=n_lm))
      lm_target = {k: v for k, v in lm.sharded_abstract(mesh, rules).items() if k not in head}
      trunk, step = ckpt.restore_params(lm_target)
      trunk = unstack_layers(trunk)
    else:
      trunk, step = ckpt.restore_params(target, allow_missing=lambda k: k.startswith("block_"))
  finally:
    ckpt.close()
  extra = sorted((k for k in target if k not in trunk), key=lambda k: int(k.split("_")[1]))
  n_lm = sum(k.startswith("block_") for k in trunk)
  if [int(k.split("_")[1]) for k in extra] != list(range(n_lm, n_lm + len(extra))):
    raise ValueError(f"{checkpoint_dir}: the LM lacks {extra}, not only the reward model's top blocks")
  if extra:
    params = dict(init_params(mdef, mesh, rules, seed))
    for k in extra:
      block = params[k]
      params[k] = {**block, "attn": {**block["attn"], "wo": block["attn"]["wo"] * 0},
                   "mlp": {**block["mlp"], "w_down": block["mlp"]["w_down"] * 0}}
  else:
    params = _fresh_scalar_head(mdef, mesh, rules, seed)
  params.update(trunk)
  logging.info("scalar model trunk from %s step %d%s", checkpoint_dir, step,
               f" (+{len(extra)} identity-initialised top blocks)" if extra else "")
  return params


# how a teacher / judge loaded by `load_lm` computes, taken from the run's own model section
INFERENCE_FIELDS = ("dtype", "attention", "scan_layers")


def load_lm(spec: str, mesh, rules, *, chat_template: bool = True, field: str = "model",
            compute_like=None):
  """(ModelDef, params, tokenizer) of a language model named by `spec`: 'hf:DIR', 'gguf:FILE',
  'checkpoint:DIR' or a bare PIT workdir / checkpoints folder, with its own shape and tokenizer
  (a teacher or judge need not share the student's). `compute_like` (a ModelConfig, the run's):
  its `INFERENCE_FIELDS` (compute dtype, attention path, scanned layers) apply to this model
  too (its weights are converted to the layout). Errors name `field`."""
  from pit.data.tokenizer import make_tokenizer
  from pit.params import model_def
  import ml_collections
  spec = str(spec or "").strip()
  if not spec:
    raise ValueError(f"{field}: no model given")
  if ":" not in spec.split("/")[0]:
    spec = f"checkpoint:{spec}"
  try:
    kind, path = parse(spec)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(str(e).replace("model.init_from", field)) from None
  cfg, tok = source_model_config(kind, path)
  tok = ml_collections.ConfigDict({**tok, "chat_template": chat_template})
  compute = ({f: getattr(compute_like, f) for f in INFERENCE_FIELDS}
             if compute_like is not None else {})
  if kind == "checkpoint":
    model = roles.load("policy", path, mesh=mesh, rules=rules, field=field, compute=compute)
    return model.mdef, model.params, make_tokenizer(tok)
  mdef = model_def(cfg.replace(head="lm", **compute))
  return mdef, load_params(kind, path, mdef, mesh, rules), make_tokenizer(tok)
