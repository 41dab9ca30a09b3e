"""`pipeline=gap_reward`: train PIT's gap reward model r_gap(x, y, y_ref).

A scalar-head Transformer (`model.head='scalar'`) reads
`pit_format.gap_input(x, y, y_ref, gap_reward.template)` and is trained on
preference pairs (`data.source`: jsonl / tfds / synthetic) with
`losses.gap_reward_loss` so that r(x,y_w,y_l) >= r(x,y_w,y_w) ~ r(x,y_l,y_l) >=
r(x,y_l,y_w). Held-out pairs (data.eval_path, the source's eval split, or a
data.eval_fraction split of a single jsonl file) are scored every
train.eval_every steps and at the end: ordering / gap / all-orderings accuracy,
self-gap. Writes WORKDIR/gap_reward_summary.json. The trained model plugs into
PPO as a scorer via `pit.rl.scorers.gap_reward_scorer`.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from pit import losses, pit_format, pretrained, roles
from pit import sharding as shd
from pit.data import gap_batching, sharded
from pit.pipelines import common, reward
from pit.trainer import train


def make_eval_fn(rt, examples, config):
  """Held-out gap metrics (`losses.gap_reward_metrics`) over every eval pair once."""
  if not examples:
    return None
  batches = gap_batching.fixed_gap_batches(examples, batch_size=int(config.train.batch_size),
                                           buckets=common.buckets(config),
                                           pad_id=rt.tokenizer.pad_id, **common.process_share())

  @jax.jit
  def rewards(params, batch):
    with shd.axis_rules(rt.mesh, rt.rules):
      return losses.gap_rewards(rt.mdef.merge(params), batch)

  def eval_fn(state, step):
    del step
    r = np.zeros((len(examples), 4), np.float32)
    for b, idx in batches:
      out = shd.to_host(rewards(state.params, shd.put_batch(b, rt.mesh, rt.rules)))
      r[idx] = out[:len(idx)]
    m = losses.gap_reward_metrics(jnp.asarray(r), jnp.ones(len(examples), jnp.float32))
    return {**{k: float(v) for k, v in m.items()}, **accuracy_standard_errors(r)}
  return eval_fn


def accuracy_standard_errors(r_N4) -> dict:
  """Standard errors of the held-out accuracies of `losses.gap_reward_metrics`, the pair
  as the unit: for each pair its ordering accuracy (share of the 4 inequalities that hold,
  in {0, 1/4, ..., 1}), gap (r_wl > r_lw) and all-orderings indicators; s.e. = sample
  standard deviation (ddof 1) / sqrt(n). r_N4: [n, 4] rewards in GAP_ROWS order (wl, ww,
  ll, lw). Returns {ordering,gap,all_orderings}_accuracy_se and eval_pairs (n); s.e. NaN
  for n < 2."""
  r = np.asarray(r_N4, np.float64)
  wl, ww, ll, lw = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
  holds = np.stack([wl > ww, wl > ll, ww > lw, ll > lw], axis=1).astype(np.float64)
  per_pair = {"ordering_accuracy": holds.mean(axis=1), "gap_accuracy": (wl > lw).astype(np.float64),
              "all_orderings_accuracy": holds.min(axis=1)}
  n = len(r)
  out = {f"{k}_se": float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
         for k, v in per_pair.items()}
  out["eval_pairs"] = n
  return out


def run(config, workdir: str):
  """`pipeline=gap_reward` (see the module docstring): trains r_gap and returns the summary
  written to WORKDIR/gap_reward_summary.json. Raises ValueError when model.head is not
  'scalar' or gap_reward.template is bad."""
  rt = common.setup(config)
  gcfg = config.gap_reward
  if rt.mdef.cfg.head != "scalar":
    raise ValueError(f"gap_reward: model.head must be 'scalar', got {rt.mdef.cfg.head!r}")
  template = str(gcfg.template)
  pit_format.template(template)
  loss_fn = losses.make_gap_reward_loss(gcfg)
  train_pairs, eval_pairs, report = reward.load_raw_pair_splits(config)
  encode = gap_batching.gap_encoder(rt.tokenizer, config.data, template)
  tok = lambda ps, what: sharded.encode_shared(ps, encode, gap_batching.gap_length,
                                               stats=report.truncation, what=what)
  train_ex, eval_ex = tok(train_pairs, "train gap pairs"), tok(eval_pairs, "eval gap pairs")
  report.log("gap_reward pairs")
  data = gap_batching.gap_iterator(
      train_ex, batch_size=int(config.train.batch_size), buckets=common.buckets(config),
      pad_id=rt.tokenizer.pad_id, seed=int(config.data.seed), **common.process_share(),
      group_by_length=bool(config.data.get("group_by_length", False)))
  eval_fn = make_eval_fn(rt, eval_ex, config)
  init_fn = pretrained.init_fn(rt, config)
  if gcfg.init_checkpoint:  # trunk of an LM (M_PIT reads the same prefix), fresh scalar head
    ckpt_dir = roles.checkpoint_dir(gcfg.init_checkpoint, "gap_reward.init_checkpoint")
    init_fn = lambda: pretrained.trunk_from_lm_checkpoint(rt.mdef, rt.mesh, rt.rules, ckpt_dir,
                                                          int(config.train.seed))
  result = train(config, workdir, rt.mdef, loss_fn, data, mesh=rt.mesh, rules=rt.rules,
                 init_params_fn=init_fn,
                 eval_fn=eval_fn, name="gap_reward")
  summary = common.train_summary(result, template=template, train_pairs=len(train_ex),
                                 eval_pairs=len(eval_ex), data=report.as_dict())
  if eval_fn is not None:
    summary["final_eval"] = eval_fn(result.state, int(config.train.steps))
  common.write_summary(workdir, "gap_reward", summary)
  return summary
