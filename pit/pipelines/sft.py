"""`pipeline=sft`: train a causal LM with the loss on response tokens only.

`train.init_checkpoint` (an LM workdir or its checkpoints/ dir) starts from
those params (fresh optimizer); '' -> random init. A resumed run always
continues from its own checkpoints."""
from __future__ import annotations


import jax
import numpy as np

from pit import losses, pretrained, roles
from pit import sharding as shd
from pit.data import batching, sources
from pit.pipelines import common
from pit.trainer import train


def _collate_weighted(items, length: int, pad_id: int, weights) -> dict:
  """SFT rows collated (`batching.collate`) with each row's loss mask times its weight (0 on
  the padding rows `fixed_batches` adds)."""
  b = batching.collate(items, length, pad_id)
  b["loss_mask"] = b["loss_mask"] * np.asarray(weights, np.float32)[:, None]
  return b


def make_eval_fn(rt, examples, config):
  """Held-out mean NLL on response tokens, in fixed-shape batches grouped by bucket
  (`batching.fixed_batches`: weight 0 on the padding rows of a bucket's last batch; each
  process collates only its slice of every batch)."""
  if not examples:
    return None
  batches = [b for b, _ in batching.fixed_batches(
      examples, batch_size=int(config.train.batch_size), buckets=common.buckets(config),
      pad_id=rt.tokenizer.pad_id, collate_fn=_collate_weighted,
      length_fn=batching.example_length, **common.process_share())]

  @jax.jit
  def nll_sum(params, batch):
    with shd.axis_rules(rt.mesh, rt.rules):
      loss, n, _ = losses.sft_loss(rt.mdef.merge(params), batch, None, None)
    return loss * n, n

  def eval_fn(state, step):
    tot, cnt = 0.0, 0.0
    for b in batches:
      s, n = nll_sum(state.params, shd.put_batch(b, rt.mesh, rt.rules))
      tot, cnt = tot + float(s), cnt + float(n)
    return {"nll": tot / max(cnt, 1.0)}
  return eval_fn


def run(config, workdir: str):
  """`pipeline=sft` (see the module docstring): trains on the SFT records of config.data
  (held out: data.eval_path, else a data.eval_fraction split of the training examples) and
  returns the summary written to WORKDIR/sft_summary.json."""
  rt = common.setup(config)
  reports = {"train": sources.DataReport()}
  examples = common.load_sft_examples(config.data.train_path, config, rt.tokenizer,
                                      report=reports["train"])
  if config.data.eval_path:
    reports["eval"] = sources.DataReport()
    eval_ex = common.load_sft_examples(config.data.eval_path, config, rt.tokenizer, split="eval",
                                       report=reports["eval"])
    train_ex = examples
  else:
    train_ex, eval_ex = common.split_eval(examples, float(config.data.eval_fraction), int(config.data.seed))
  data = batching.BatchIterator(
      train_ex, batch_size=int(config.train.batch_size), buckets=common.buckets(config),
      pad_id=rt.tokenizer.pad_id, seed=int(config.data.seed), **common.process_share(),
      group_by_length=bool(config.data.get("group_by_length", False)))
  eval_fn = make_eval_fn(rt, eval_ex, config)
  init_fn = pretrained.init_fn(rt, config)
  if config.train.get("init_checkpoint", ""):
    init_fn = lambda: roles.restore_params(rt.mdef, config.train.init_checkpoint, rt.mesh,
                                           rt.rules, "train.init_checkpoint")[0]
  result = train(config, workdir, rt.mdef, losses.sft_loss, data, mesh=rt.mesh, rules=rt.rules,
                 eval_fn=eval_fn, init_params_fn=init_fn, name="sft")
  summary = common.train_summary(result, data={k: r.as_dict() for k, r in reports.items()})
  if eval_fn is not None:
    summary["final_eval"] = eval_fn(result.state, int(config.train.steps))
  common.write_summary(workdir, "sft", summary)
  return summary
