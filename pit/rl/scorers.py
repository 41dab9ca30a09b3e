"""Scalar scorers of (prompt, response[, reference]) triples for RL.

Interface: `scorer(prompts, responses, references=None) -> np.ndarray [n] float32`.

- `RewardModelScorer`: a scalar-head Transformer (`head='scalar'`) read at the
  last non-pad token (the eos). A formatting function of (prompt, response,
  reference) gives the (prompt part, response part) texts, which are encoded by
  `pit.data.encoding.example` with the lengths the model was trained with, so the
  model scores exactly the token rows it was trained on; a gap reward model
  r_gap(x, y, y_ref), whose prompt part holds the reference, plugs in with a
  different format (`pit.rl.gap_scorer`). `reward_model_scorer(dir, ...)` builds
  one from a reward-model workdir.
- `OracleScorer`: any Python function of (prompts, responses), by default the
  synthetic task's `pit.data.synthetic.oracle_scores`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from pit import roles
from pit import sharding as shd
from pit.model import gather_last
from pit.data import encoding
from pit.data.batching import bucket_length, default_buckets

# (prompt, response, reference) -> (prompt part, response part) of the scored sequence.
FormatFn = Callable[[str, str, "str | None"], tuple[str, str]]


def template_format(template: str, prompt_format: str = "{prompt}") -> FormatFn:
  """Formatting function from a template with {prompt}, {response} and optionally
  {reference}; the prompt is first rendered with `prompt_format`. The template's text
  before {response} is the prompt part, {response} and what follows the response part."""
  if template.count("{response}") != 1:
    raise ValueError(f"ppo.reward_format {template!r} must contain {{response}} once")
  needs_ref = "{reference}" in template
  head, tail = template.split("{response}")
  if "{prompt}" in tail or "{reference}" in tail:
    raise ValueError(f"ppo.reward_format {template!r}: {{prompt}} and {{reference}} must come "
                     "before {response}")

  def fmt(prompt, response, reference):
    if needs_ref and reference is None:
      raise ValueError("ppo.reward_format uses {reference} but no reference responses were given")
    fields = dict(prompt=prompt_format.format(prompt=prompt),
                  reference=reference if reference is not None else "")
    return head.format(**fields), response + tail.format(**fields)
  return fmt


class OracleScorer:
  """A scorer from a Python function `fn(prompts, responses) -> scores` (default: the
  synthetic task's `oracle_scores`, in [0, 1]); references are ignored. Returns float32 [n];
  raises ValueError when `fn` returns another shape."""
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
  """Scores the row `pit.data.encoding.example(prompt part, response part)` of
  `format_fn(prompt, response, reference)` with a scalar-head model, read at its eos.

  `max_len` / `max_response_len`: the truncation of the rows (give the lengths the
  model was trained with, as `reward_model_scorer` does, so scored rows equal training
  rows); `max_response_len` 0 -> all of max_len but the prefix. Rows are right-padded
  to a length bucket and scored in fixed-size batches (one compilation per bucket).
  """

  def __init__(self, mdef, params, tokenizer, mesh, rules, *, format_fn: FormatFn,
               max_len: int, batch_size: int = 32, buckets: Sequence[int] | None = None,
               max_response_len: int = 0):
    if mdef.cfg.head != "scalar":
      raise ValueError(f"reward model must have model.head='scalar', got {mdef.cfg.head!r}")
    self.mdef, self.params, self.tok = mdef, params, tokenizer
    self.mesh, self.rules, self.format_fn = mesh, tuple(rules), format_fn
    self.max_len = int(max_len)
    self.max_response_len = int(max_response_len) or self.max_len - len(tokenizer.sequence_prefix)
    self.buckets = tuple(buckets or default_buckets(self.max_len, 32))
    m = shd.data_parallel_size(mesh, self.rules)
    self.batch_size = -(-int(batch_size) // m) * m

    def score(params, tokens_BL, mask_BL):
      with shd.axis_rules(mesh, self.rules):
        values_BL, _ = mdef.merge(params)(tokens_BL, None, mask_BL)
        return gather_last(values_BL, mask_BL)
    self._score = jax.jit(score)

  def encode(self, prompt_part: str, response_part: str) -> list[int]:
    """The token row scored for one (prompt part, response part)."""
    return encoding.sequence_ids(self.tok, prompt_part, response_part, max_len=self.max_len,
                                 max_response_len=self.max_response_len)

  def __call__(self, prompts, responses, references=None) -> np.ndarray:
    n = len(prompts)
    if len(responses) != n or (references is not None and len(references) != n):
      raise ValueError("prompts, responses and references differ in length")
    refs = references if references is not None else [None] * n
    seqs = [self.encode(*self.format_fn(p, r, ref)) for p, r, ref in zip(prompts, responses, refs)]
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
      out[start:start + len(chunk)] = shd.to_host(vals)[:len(chunk)]
    return out


def load_reward_model(rm_dir: str, mesh, rules):
  """(ModelDef, params) of the scalar-head model in workdir `rm_dir` (`pit.roles`)."""
  model = roles.load("reward", rm_dir, mesh=mesh, rules=rules, field="reward_model_dir")
  return model.mdef, model.params


def reward_model_scorer(rm_dir: str, tokenizer, mesh, rules, *, format_fn: FormatFn,
                        batch_size: int = 32, max_len: int = 0) -> RewardModelScorer:
  """A scorer for the reward model in workdir `rm_dir`, truncating rows as it was trained
  (its data.max_len / data.max_response_len; `max_len` > 0 overrides the first)."""
  model = roles.load("reward", rm_dir, mesh=mesh, rules=rules, field="reward_model_dir")
  mdef, params = model.mdef, model.params
  data = (model.config or {}).get("data", {})
  max_len = int(max_len or data.get("max_len") or mdef.cfg.max_seq_len)
  max_resp = min(int(data.get("max_response_len") or max_len), max_len - len(tokenizer.sequence_prefix))
  return RewardModelScorer(mdef, params, tokenizer, mesh, rules, format_fn=format_fn,
                           max_len=max_len, batch_size=batch_size, max_response_len=max_resp)
