"""`pipeline=dpo`: DPO-family preference optimisation (`pit.losses.dpo_loss`:
sigmoid / conservative DPO via label smoothing, IPO, hinge, robust).

Policy init: `dpo.init_checkpoint` (an SFT workdir or checkpoints/ dir; params
only); empty -> random init (smoke tests only). Reference:
`dpo.reference_checkpoint`, empty -> the policy's init; for iterative DPO point
it (and init_checkpoint) at the previous iteration's workdir.
`dpo.reference='precompute'` computes the reference's summed response
log-probs of every train and eval pair once at start (jitted, sharded, fixed-
shape batches per bucket) and feeds them in the batch; 'live' runs the frozen
reference in the train step (its params passed through `extra`), which also
gives the exact token KL metric.

Evaluation: the held-out DPO loss, implicit-reward margin and accuracy every
`train.eval_every` steps and at the end; with `dpo.oracle_eval_prompts > 0`
(synthetic task) the oracle score of greedy and sampled responses to held-out
prompts before and after training. WORKDIR/dpo_summary.json has the figures.
"""
from __future__ import annotations

import logging

import jax
import numpy as np

from pit import losses, pretrained, roles
from pit import sharding as shd
from pit.data import encoding, pair_batching
from pit.params import init_params
from pit.pipelines import common
from pit.pipelines.reward import load_pair_splits, make_pair_eval_fn, pair_iterator
from pit.sampler import Sampler
from pit.trainer import train

REFERENCE_MODES = ("precompute", "live")


def precompute_reference(rt, ref_params, examples, config) -> None:
  """Sets every example's `ref_logps` = the reference's summed response log-probs (chosen,
  rejected), nats: each process scores its slice of every fixed-shape batch, the results are
  gathered on every process (`pit.sharding.to_host`). `examples`: a
  `pit.data.sharded.ShardedExamples` (the values attached with `set_field`) or a list of
  PairExamples (set on each)."""
  if not examples:
    return
  batches = pair_batching.fixed_batches(examples, batch_size=int(config.train.batch_size),
                                        buckets=common.buckets(config), pad_id=rt.tokenizer.pad_id,
                                        **common.process_share())

  @jax.jit
  def logps(params, batch):
    with shd.axis_rules(rt.mesh, rt.rules):
      return losses.pair_logprobs(rt.mdef.merge(params), batch)

  values = [None] * len(examples)
  for b, idx in batches:
    out = shd.to_host(logps(ref_params, shd.put_batch(b, rt.mesh, rt.rules)))
    for row, i in enumerate(idx):
      values[i] = (float(out[row, 0]), float(out[row, 1]))
  if hasattr(examples, "set_field"):
    examples.set_field("ref_logps", values)
  else:
    for ex, v in zip(examples, values):
      ex.ref_logps = v


def oracle_eval(rt, params, config, sampler: Sampler) -> dict:
  """Mean oracle score of greedy and of sampled (temperature 1) responses to
  `dpo.oracle_eval_prompts` held-out prompts of the synthetic task
  (`data.synthetic_task`), each in [0, 1]."""
  from pit.data import synthetic
  dcfg = config.dpo
  prompts = synthetic.eval_prompts(int(dcfg.oracle_eval_prompts), int(config.data.seed),
                                   config.data.get("synthetic_task", "sort"))
  tok = rt.tokenizer
  ids = encoding.prompts_ids(tok, [config.data.prompt_format.format(prompt=p) for p in prompts])
  out = {}
  for name, temp in (("greedy", 0.0), ("sampled", 1.0)):
    gen = sampler.generate(params, ids, max_new_tokens=int(config.generate.max_new_tokens),
                           temperature=temp, seed=int(config.generate.seed))
    responses = [tok.decode(t[:n]) for t, n in zip(gen.tokens, gen.lengths)]
    out[f"oracle_{name}"] = float(np.mean(synthetic.oracle_scores(prompts, responses)))
  return out


def run(config, workdir: str):
  """`pipeline=dpo` (see the module docstring): trains the policy and returns the summary
  written to WORKDIR/dpo_summary.json. Raises ValueError on a bad dpo section (reference
  mode, loss, beta, label_smoothing, nll_coef) or a model whose head is not 'lm'."""
  dcfg = config.dpo
  if dcfg.reference not in REFERENCE_MODES:
    raise ValueError(f"dpo.reference: {dcfg.reference!r} not in {REFERENCE_MODES}")
  loss_fn = losses.make_dpo_loss(dcfg)
  rt = common.setup(config)
  if rt.mdef.cfg.head != "lm":
    raise ValueError("pipeline=dpo needs model.head='lm'")
  seed = int(config.train.seed)
  if dcfg.init_checkpoint:
    load_init = lambda: roles.restore_params(rt.mdef, dcfg.init_checkpoint, rt.mesh, rt.rules,
                                             "dpo.init_checkpoint")[0]
  elif pretrained.init_fn(rt, config) is not None:
    load_init = pretrained.init_fn(rt, config)
  else:
    logging.warning("dpo.init_checkpoint and model.init_from are empty: policy and reference "
                    "start at random")
    load_init = lambda: init_params(rt.mdef, rt.mesh, rt.rules, seed)
  if dcfg.reference_checkpoint:
    ref_params = roles.restore_params(rt.mdef, dcfg.reference_checkpoint, rt.mesh, rt.rules,
                                      "dpo.reference_checkpoint")[0]
  else:
    ref_params = load_init()
  train_ex, eval_ex, report = load_pair_splits(config, rt.tokenizer)
  extra = extra_shardings = None
  if dcfg.reference == "precompute":
    precompute_reference(rt, ref_params, train_ex, config)
    precompute_reference(rt, ref_params, eval_ex, config)
  else:
    extra = {"ref_params": ref_params}
    extra_shardings = {"ref_params": rt.mdef.shardings(rt.mesh, rt.rules)}
  eval_fn = make_pair_eval_fn(rt, eval_ex, config, loss_fn, extra)
  sampler = None
  summary = {}
  if int(dcfg.oracle_eval_prompts) > 0:
    sampler = Sampler(rt.mdef, rt.mesh, rt.rules, pad_id=rt.tokenizer.pad_id,
                      eos_id=rt.tokenizer.eos_id)
    summary["oracle_before"] = oracle_eval(rt, load_init(), config, sampler)
  if eval_fn is not None:
    summary["eval_before"] = eval_fn(_ParamsOnly(load_init()), 0)
  result = train(config, workdir, rt.mdef, loss_fn, pair_iterator(rt, train_ex, config),
                 mesh=rt.mesh, rules=rt.rules, extra=extra, extra_shardings=extra_shardings,
                 eval_fn=eval_fn, init_params_fn=load_init, name="dpo")
  summary.update(common.train_summary(result, train_pairs=len(train_ex),
                                      eval_pairs=len(eval_ex), reference=dcfg.reference,
                                      loss=dcfg.loss, data=report.as_dict()))
  if eval_fn is not None:
    summary["final_eval"] = eval_fn(result.state, int(config.train.steps))
  if sampler is not None:
    summary["oracle_after"] = oracle_eval(rt, result.state.params, config, sampler)
  common.write_summary(workdir, "dpo", summary)
  return summary


class _ParamsOnly:
  """What an eval_fn reads of a TrainState, for evaluating the init params."""

  def __init__(self, params):
    self.params = params
