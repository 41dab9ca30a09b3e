"""`pipeline=ppo`: PPO from an SFT checkpoint against a scalar scorer.

The policy starts from `ppo.init_checkpoint_dir` (params only), the frozen KL
reference from `ppo.reference_checkpoint_dir` (default: the same); the value
model is a scalar-head Transformer of the same shape whose trunk starts from the
init checkpoint (`ppo.value_init='policy'`) or at random ('random').
Scorer: `ppo.scorer='oracle'` (the synthetic task's oracle), 'reward_model'
(`ppo.reward_model_dir`, input text from `ppo.reward_format`) or
'gap_reward_model' (PIT's r_gap(x, y, y_ref)). With `ppo.policy_template` (a
`pit_format` template) the policy is PIT's reference-conditioned M_PIT: prompts
come with references (`data.train_path` JSONL of {"prompt", "reference"}) and
its input is `policy_prompt(x, y_ref)`. `train_ppo` is the same loop for callers
that bring their own prompts, references and scorer (the `pit` pipeline). Training is the
one loop (`pit.trainer.train`) with `Rollouts` as its batch source; checkpoints
fall on rollout boundaries, so a killed run resumes to identical parameters.
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp

from pit import pit_format, ppo, pretrained, roles
from pit.checkpoint import Checkpointer
from pit.data import records
from pit.params import init_params, model_def
from pit.pipelines import common
from pit.rl import scorers
from pit.rl.rollouts import Rollouts
from pit.sampler import Sampler
from pit.trainer import train


def load_prompts(config, split: str = "train") -> list[str]:
  """The prompts of `split` for RL (`pit.data.sources.load_prompts` of config.data)."""
  try:
    from pit.data.sources import load_prompts as _load
  except ImportError:  # pragma: no cover - before pit.data.sources existed
    from pit.data import records
    return [r["prompt"] for r in records.read_jsonl(config.data.train_path, ("prompt",))]
  return _load(config.data, split)


def make_scorer(config, rt):
  """The reward of `ppo.scorer`: the synthetic oracle, a reward model
  (`ppo.reward_model_dir`, input from `ppo.reward_format`) or PIT's gap reward model
  r_gap(x, y, y_ref). Raises ValueError on an unknown scorer."""
  pcfg = config.ppo
  if pcfg.scorer == "oracle":
    return scorers.OracleScorer()
  if pcfg.scorer == "gap_reward_model":  # PIT's r_gap(x, y, y_ref): needs references
    from pit.rl.gap_scorer import gap_reward_scorer_from_dir
    return gap_reward_scorer_from_dir(pcfg.reward_model_dir, rt.tokenizer, rt.mesh, rt.rules,
                                      template=pcfg.policy_template or "plain",
                                      prompt_format=config.data.prompt_format,
                                      max_len=int(pcfg.reward_max_len),
                                      batch_size=int(pcfg.rollout_batch_size))
  if pcfg.scorer == "reward_model":
    fmt = scorers.template_format(pcfg.reward_format, config.data.prompt_format)
    return scorers.reward_model_scorer(pcfg.reward_model_dir, rt.tokenizer, rt.mesh, rt.rules,
                                       format_fn=fmt, max_len=int(pcfg.reward_max_len),
                                       batch_size=int(pcfg.rollout_batch_size))
  raise ValueError(f"ppo.scorer: {pcfg.scorer!r} not in ('oracle', 'reward_model', "
                   "'gap_reward_model')")


def _check(config, updates_per_rollout: int):
  pcfg = config.ppo
  if not pcfg.init_checkpoint_dir and not config.model.get("init_from", ""):
    raise ValueError("ppo.init_checkpoint_dir: give the SFT checkpoint directory to start from "
                     "(or model.init_from)")
  k = updates_per_rollout
  if int(config.train.steps) % k:
    raise ValueError(f"train.steps={config.train.steps} must be a multiple of the updates per "
                     f"rollout ({k} = ppo.epochs * ppo.rollout_batch_size / train.batch_size)")
  if int(config.checkpoint.every) % k:
    raise ValueError(f"checkpoint.every={config.checkpoint.every} must be a multiple of the "
                     f"updates per rollout ({k}): PPO checkpoints fall on rollout boundaries")
  if pcfg.value_init == "random" and int(config.train.get("lora", {}).get("rank", 0) or 0):
    raise ValueError("ppo.value_init='random' with train.lora: the value model's trunk would be "
                     "a frozen random network; use value_init='policy'")
  if pcfg.value_init not in ("policy", "random"):
    raise ValueError(f"ppo.value_init: {pcfg.value_init!r} not in ('policy', 'random')")


def export_policy(params, step: int, workdir: str, abstract_params=None):
  """Writes the policy alone to WORKDIR/policy/checkpoints (params only), so `generate`
  (`generate.checkpoint_dir`) and later stages (`ppo.init_checkpoint_dir`) load it. An
  export already there for `step` is kept if it verifies (`abstract_params` given),
  else moved aside and written again."""
  ckpt = Checkpointer(os.path.join(workdir, "policy", "checkpoints"), save_every=1, keep=1,
                      async_save=False)
  if (ckpt.latest_step() == step and abstract_params is not None
      and not ckpt.is_intact(abstract_params, step)):
    ckpt.quarantine(step)
  if ckpt.latest_step() != step:
    ckpt.save(step, {"params": params}, {"source": "ppo"}, force=True)
  ckpt.close()


def load_prompts_and_references(config):
  """Prompts (and, with `ppo.policy_template`, the reference response of each) for RL."""
  pcfg = config.ppo
  if not pcfg.policy_template:
    return load_prompts(config), None
  pit_format.template(pcfg.policy_template)
  path = config.data.train_path
  if not path:
    raise ValueError("ppo.policy_template needs data.train_path: JSONL of {\"prompt\", \"reference\"}")
  rows = list(records.read_jsonl(path, ("prompt", "reference"), on_error=config.data.on_error))
  return [r["prompt"] for r in rows], [r["reference"] for r in rows]


def run(config, workdir: str):
  """`pipeline=ppo` (see the module docstring): loads the prompts (and references with
  ppo.policy_template) and the scorer, then `train_ppo`; returns its summary."""
  rt = common.setup(config)
  prompts, references = load_prompts_and_references(config)
  tmpl = config.ppo.policy_template
  text_fn = None
  if tmpl:
    fmt = config.data.prompt_format
    text_fn = lambda x, ref: pit_format.policy_prompt(fmt.format(prompt=x), ref, tmpl)
  return train_ppo(config, workdir, rt, prompts=prompts, references=references,
                   scorer=make_scorer(config, rt), policy_text_fn=text_fn)


def train_ppo(config, workdir: str, rt, *, prompts, references=None, scorer, policy_text_fn=None,
              monitors=None):
  """PPO of the policy in `ppo.init_checkpoint_dir` against `scorer`, with the KL to
  `ppo.reference_checkpoint_dir` (default: the init policy). `policy_text_fn(prompt,
  reference)` renders the policy's input (default: data.prompt_format of the prompt);
  the scorer sees (prompt, response, reference). `monitors` (name -> scorer) are
  logged on every rollout as `<name>_score`, outside the reward."""
  pcfg = config.ppo
  if rt.mdef.cfg.head != "lm":
    raise ValueError("ppo: model.head must be 'lm' (the policy); the value model is derived")
  acdef = ppo.ActorCriticDef(rt.mdef, model_def(rt.mdef.cfg.replace(head="scalar")))
  pretrained_init = None if pcfg.init_checkpoint_dir else pretrained.init_fn(rt, config)
  init_dir = (roles.checkpoint_dir(pcfg.init_checkpoint_dir, "ppo.init_checkpoint_dir")
              if pcfg.init_checkpoint_dir else config.model.init_from)
  ref_dir = (roles.checkpoint_dir(pcfg.reference_checkpoint_dir, "ppo.reference_checkpoint_dir")
             if pcfg.reference_checkpoint_dir else init_dir)
  load_policy = pretrained_init or (lambda: roles.restore_params(rt.mdef, init_dir, rt.mesh,
                                                                  rt.rules)[0])
  seed = int(config.train.seed)
  sampler = Sampler(rt.mdef, rt.mesh, rt.rules, pad_id=rt.tokenizer.pad_id,
                    eos_id=rt.tokenizer.eos_id, prompt_buckets=tuple(pcfg.prompt_buckets) or None)
  data = Rollouts(acdef, None, mesh=rt.mesh, rules=rt.rules, tokenizer=rt.tokenizer,
                  sampler=sampler, scorer=scorer, prompts=prompts, references=references,
                  pcfg=pcfg, minibatch_size=int(config.train.batch_size),
                  prompt_format=config.data.prompt_format, policy_text_fn=policy_text_fn,
                  seed=seed, process_index=jax.process_index(), process_count=jax.process_count(),
                  monitors=monitors)
  _check(config, data.updates_per_rollout)
  if ref_dir is init_dir and pretrained_init is not None:
    data.ref_params, ref_step = pretrained_init(), 0
  else:
    data.ref_params, ref_step = roles.restore_params(rt.mdef, ref_dir, rt.mesh, rt.rules)
  logging.info("ppo: policy from %s, KL reference %s step %d; %d updates per rollout", init_dir,
               ref_dir, ref_step, data.updates_per_rollout)

  def init_fn():
    policy = load_policy()
    value = init_params(acdef.value, rt.mesh, rt.rules, seed + 1)
    if pcfg.value_init == "policy":  # trunk from the SFT policy (own buffers), zero scalar
      value = {k: (jax.tree.map(jnp.copy, policy[k]) if k in policy  # head: V = 0 at first,
                   else jax.tree.map(jnp.zeros_like, v))              # advantages = returns
               for k, v in value.items()}
    return {"policy": policy, "value": value}

  loss_fn = ppo.make_ppo_loss(clip_ratio=float(pcfg.clip_ratio), value_clip=float(pcfg.value_clip),
                              vf_coef=float(pcfg.vf_coef), ent_coef=float(pcfg.ent_coef))
  result = train(config, workdir, acdef, loss_fn, data, mesh=rt.mesh, rules=rt.rules,
                 init_params_fn=init_fn, name="ppo")
  export_policy(result.state.params["policy"], int(config.train.steps), workdir,
                abstract_params=rt.mdef.sharded_abstract(rt.mesh, rt.rules))
  summary = common.train_summary(result, rollouts=data.rollout, final_kl_coef=data.kl.value)
  common.write_summary(workdir, "ppo", summary)
  return summary
