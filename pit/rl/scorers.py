"""Scalar scorers of (prompt, response[, reference]) triples for RL.

Interface: `scorer(prompts, responses, references=None) -> np.ndarray [n] float32`.

- `RewardModelScorer`: a scalar-head Transformer (`head='scalar'`) read at the
  last non-pad token. Its input text is built by a formatting function of
  (prompt, response, reference), so a gap reward model r_gap(x, y, y_ref), whose
  input holds both responses, plugs in with a different template.
- `OracleScorer`: any Python function of (prompts, responses), by default the
  synthetic task's `pit.data.synthetic.oracle_scores`.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Callable, Sequence

import jax
import numpy as np

from pit import sharding as shd
from pit.checkpoint import Checkpointer
from pit.data.batching import bucket_length, default_buckets
from pit.model import ModelConfig, gather_last
from pit.params import model_def

FormatFn = Callable[[str, str, "str | None"], str]


def template_format(template: str, prompt_format: str = "{prompt}") -> FormatFn:
  """Formatting function from a template with {prompt}, {response} and optionally
  {reference}; the prompt is first rendered with `prompt_format`."""
  if "{response}" not in template:
    raise ValueError(f"ppo.reward_format {template!r} must contain {{response}}")
  needs_ref = "{reference}" in template

  def fmt(prompt, response, reference):
    if needs_ref and reference is None:
      raise ValueError("ppo.reward_format uses {reference} but no reference responses were given")
    return template.format(prompt=prompt_format.format(prompt=prompt), response=response,
                           reference=reference if reference is not None else "")
  return fmt


class OracleScorer:
  def __init__(self, fn: Callable | None = None):
    if fn is None:
      from pit.data.synthetic import oracle_scores as fn
    self.fn = fn

  def __call__(self, prompts: Sequence[str], responses: Sequence[str],
               references: Sequence[str] | None = None) -> np.ndarray:
    del references
    out = np.asarray(self.fn(list(prompts), list(responses)), np.float32)
    if out.shape != (len(prompts),):
      raise ValueError(f"oracle returned shape {out.shape}, expected ({len(prompts)},)")
    return out


class RewardModelScorer:
  """Scores `[bos] format(prompt, response, reference) [eos]` with a scalar-head model.

  Sequences keep their end when longer than `max_len`; they are right-padded to a
  length bucket and scored in fixed-size batches (one compilation per bucket).
  """

  def __init__(self, mdef, params, tokenizer, mesh, rules, *, format_fn: FormatFn,
               max_len: int, batch_size: int = 32, buckets: Sequence[int] | None = None):
    if mdef.cfg.head != "scalar":
      raise ValueError(f"reward model must have model.head='scalar', got {mdef.cfg.head!r}")
    self.mdef, self.params, self.tok = mdef, params, tokenizer
    self.mesh, self.rules, self.format_fn = mesh, tuple(rules), format_fn
    self.max_len = int(max_len)
    self.buckets = tuple(buckets or default_buckets(self.max_len, 32))
    m = shd.data_parallel_size(mesh, self.rules)
    self.batch_size = -(-int(batch_size) // m) * m

    def score(params, tokens_BL, mask_BL):
      with shd.axis_rules(mesh, self.rules):
        values_BL, _ = mdef.merge(params)(tokens_BL, None, mask_BL)
        return gather_last(values_BL, mask_BL)
    self._score = jax.jit(score)

  def encode(self, text: str) -> list[int]:
    ids = [self.tok.bos_id] + self.tok.encode(text) + [self.tok.eos_id]
    return ids if len(ids) <= self.max_len else [self.tok.bos_id] + ids[len(ids) - self.max_len + 1:]

  def __call__(self, prompts, responses, references=None) -> np.ndarray:
    n = len(prompts)
    if len(responses) != n or (references is not None and len(references) != n):
      raise ValueError("prompts, responses and references differ in length")
    refs = references if references is not None else [None] * n
    seqs = [self.encode(self.format_fn(p, r, ref)) for p, r, ref in zip(prompts, responses, refs)]
    out = np.zeros(n, np.float32)
    bs = self.batch_size
    for start in range(0, n, bs):
      chunk = seqs[start:start + bs]
      L = bucket_length(max(len(s) for s in chunk), self.buckets)
      tokens = np.full((bs, L), self.tok.pad_id, np.int32)
      mask = np.zeros((bs, L), bool)
      for i in range(bs):
        s = chunk[i % len(chunk)]
        tokens[i, :len(s)], mask[i, :len(s)] = s, True
      vals = self._score(self.params, *shd.put_global((tokens, mask), self.mesh, self.rules))
      out[start:start + len(chunk)] = np.asarray(jax.device_get(vals))[:len(chunk)]
    return out


def load_reward_model(rm_dir: str, mesh, rules):
  """(ModelDef, params) of a scalar model from a workdir holding `config_*.json`
  (with model.head='scalar') and `checkpoints/`."""
  if not rm_dir or not os.path.isdir(rm_dir):
    raise FileNotFoundError(f"ppo.reward_model_dir: not a directory: {rm_dir!r}")
  model_cfg = None
  for path in sorted(glob.glob(os.path.join(rm_dir, "config_*.json"))):
    with open(path) as f:
      cfg = json.load(f).get("model", {})
    if cfg.get("head") == "scalar":
      model_cfg = cfg
      break
  if model_cfg is None:
    raise FileNotFoundError(f"ppo.reward_model_dir {rm_dir}: no config_*.json with model.head='scalar'")
  mdef = model_def(ModelConfig.from_config(model_cfg))
  ckpt_dir = os.path.join(rm_dir, "checkpoints")
  ckpt = Checkpointer(ckpt_dir, read_only=True, async_save=False)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  target = mdef.sharded_abstract(mesh, rules)
  params, _ = ckpt.restore_params(target)
  ckpt.close()
  return mdef, params
