"""`pipeline=reward`: a scalar-head reward model trained with the Bradley-Terry
pairwise loss (`pit.losses.reward_loss`: optional per-pair margin, optional
reward centring) on preference pairs from `pit.data.sources.load_pairs`.

The score of (prompt, response) is the value at the eos of
[bos prompt_format(prompt) response eos]. The model starts at random or, with
`reward.init_checkpoint` (an SFT workdir or its checkpoints/ directory), from
an LM checkpoint's trunk (embeddings, blocks, final norm) with a fresh head, or
with `reward.init_reward_model` (a reward-model workdir) from that whole model,
head included (SER's loops continue their RM this way).
Held-out pairwise accuracy is evaluated every `train.eval_every` steps and at
the end; WORKDIR/reward_summary.json has the final figures.
"""
from __future__ import annotations


import jax

from pit import losses, pretrained, roles
from pit import sharding as shd
from pit.data import pair_batching, sharded, sources
from pit.model import ModelConfig
from pit.pipelines import common
from pit.trainer import train


def load_raw_pair_splits(config):
  """(train PreferencePairs, eval PreferencePairs, DataReport). Without an eval split
  (jsonl with no data.eval_path) a data.eval_fraction of train is held out."""
  report = sources.DataReport()
  train_pairs = sources.load_pairs(config.data, "train", report=report)
  if sources.source_name(config.data) == "jsonl" and not config.data.get("eval_path", ""):
    train_pairs, eval_pairs = common.split_eval(train_pairs, float(config.data.eval_fraction),
                                                int(config.data.seed))
  else:
    eval_pairs = sources.load_pairs(config.data, "eval", report=report)
  return train_pairs, eval_pairs, report


def load_pair_splits(config, tokenizer):
  """(train PairExamples, eval PairExamples, DataReport), see `load_raw_pair_splits`; each
  a `pit.data.sharded.ShardedExamples` of which this process holds its share."""
  train_pairs, eval_pairs, report = load_raw_pair_splits(config)
  encode = pair_batching.pair_encoder(tokenizer, config.data)
  tok = lambda ps, what: sharded.encode_shared(ps, encode, pair_batching.pair_length,
                                               stats=report.truncation, what=what)
  train_ex, eval_ex = tok(train_pairs, "train pairs"), tok(eval_pairs, "eval pairs")
  report.log("preference pairs")
  return train_ex, eval_ex, report


def pair_iterator(rt, examples, config):
  """The resumable training iterator of pair batches (`pair_batching.pair_iterator`) with
  the config's batch size, buckets and data seed, this process's share of each batch."""
  return pair_batching.pair_iterator(
      examples, batch_size=int(config.train.batch_size), buckets=common.buckets(config),
      pad_id=rt.tokenizer.pad_id, seed=int(config.data.seed), **common.process_share(),
      group_by_length=bool(config.data.get("group_by_length", False)))


def make_pair_eval_fn(rt, examples, config, loss_fn, extra=None, prefix=""):
  """Every held-out pair once, in fixed-shape batches (weight 0 on padding);
  returns the pair-weighted mean of the loss and of each metric."""
  if not examples:
    return None
  batches = [b for b, _ in pair_batching.fixed_batches(   # this process's slice of each
      examples, batch_size=int(config.train.batch_size), buckets=common.buckets(config),
      pad_id=rt.tokenizer.pad_id, **common.process_share())]

  @jax.jit
  def run(params, batch, extra):
    with shd.axis_rules(rt.mesh, rt.rules):
      loss, w, metrics = loss_fn(rt.mdef.merge(params), batch, None, extra)
    return w, {"loss": loss, **metrics}

  def eval_fn(state, step):
    del step
    tot, wsum = {}, 0.0
    for b in batches:
      w, m = jax.device_get(run(state.params, shd.put_batch(b, rt.mesh, rt.rules), extra))
      wsum += float(w)
      for k, v in m.items():
        tot[k] = tot.get(k, 0.0) + float(v) * float(w)
    out = {prefix + k: v / max(wsum, 1e-12) for k, v in tot.items()}
    out[prefix + "pairs"] = wsum
    return out
  return eval_fn


def run(config, workdir: str):
  """`pipeline=reward` (see the module docstring): trains the Bradley-Terry reward model and
  returns the summary written to WORKDIR/reward_summary.json. Raises ValueError when
  model.head is not 'scalar'."""
  if config.model.head != "scalar":
    raise ValueError("pipeline=reward needs model.head='scalar'")
  rt = common.setup(config)
  train_ex, eval_ex, report = load_pair_splits(config, rt.tokenizer)
  loss_fn = losses.make_reward_loss(config.reward)
  eval_fn = make_pair_eval_fn(rt, eval_ex, config, loss_fn)
  init_fn = pretrained.init_fn(rt, config)
  if config.reward.get("init_reward_model", ""):   # continue a reward model, head included
    if config.reward.init_checkpoint:
      raise ValueError("reward.init_reward_model and reward.init_checkpoint are exclusive "
                       "(a whole reward model vs an LM's trunk with a fresh head)")
    rm_dir = config.reward.init_reward_model

    def continue_rm():
      saved = roles.saved_config(rm_dir, "scalar")
      if saved is None:
        raise FileNotFoundError(f"reward.init_reward_model={rm_dir}: no config_*.json with "
                                "model.head='scalar' (not a reward-model workdir)")
      differ = rt.mdef.cfg.weight_differences(ModelConfig.from_config(saved["model"]))
      if differ:
        raise ValueError(f"reward.init_reward_model={rm_dir}: its model differs from this "
                         f"run's model section in {', '.join('model.' + f for f in differ)}")
      # compute-only fields (scan_layers, remat, dtype, ...) may differ: the run's own apply
      return roles.restore_params(rt.mdef, rm_dir, rt.mesh, rt.rules,
                                  "reward.init_reward_model")[0]
    init_fn = continue_rm
  elif config.reward.init_checkpoint:
    ckpt_dir = roles.checkpoint_dir(config.reward.init_checkpoint, "reward.init_checkpoint")
    init_fn = lambda: pretrained.trunk_from_lm_checkpoint(rt.mdef, rt.mesh, rt.rules, ckpt_dir,
                                                          int(config.train.seed))
  result = train(config, workdir, rt.mdef, loss_fn, pair_iterator(rt, train_ex, config),
                 mesh=rt.mesh, rules=rt.rules, eval_fn=eval_fn, init_params_fn=init_fn,
                 name="reward")
  summary = common.train_summary(result, train_pairs=len(train_ex), eval_pairs=len(eval_ex),
                                 data=report.as_dict())
  if eval_fn is not None:
    summary["final_eval"] = eval_fn(result.state, int(config.train.steps))
  common.write_summary(workdir, "reward", summary)
  return summary
