"""PPO rollouts as a resumable batch source for the one training loop.

`pit.trainer.train` calls `prepare(state, step)` before every `next()`. When its
buffer is empty, `Rollouts` samples responses with the current policy (the one
`Sampler`), scores them, runs ONE jitted forward of policy, value model and the
frozen reference over prompt+response (fixed bucketed shapes) for old
log-probs, reference log-probs and values, builds KL-penalised per-token rewards,
GAE advantages and returns, then serves `epochs x (rollout / minibatch)`
shuffled minibatches. Its state ({rollout, kl_coef, seed}) is saved in each
checkpoint; checkpoints fall on rollout boundaries, so the rollout regenerated
after a restore is identical (prompt order, sampling key and minibatch order are
functions of (seed, rollout index)).
"""
from __future__ import annotations

import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pit import ppo
from pit import sharding as shd
from pit.data import encoding
from pit.data.batching import bucket_length, default_buckets


class Rollouts:
  """PPO rollouts as the trainer's batch source (see the module docstring): `prepare`
  samples and scores a rollout of `ppo.rollout_batch_size` prompts when the buffer is
  empty; `next` yields minibatches of tokens / mask / positions [B, T] and response_mask,
  old_logprobs, old_values, advantages, returns [B, N] (B = this process's share of
  `minibatch_size`, N = ppo.max_new_tokens). Raises ValueError on no prompts, an unknown
  kl_estimator or score_norm, or a rollout size that is not a multiple of the minibatch."""
  def __init__(self, acdef: ppo.ActorCriticDef, ref_params, *, mesh, rules, tokenizer, sampler,
               scorer, prompts: Sequence[str], references: Sequence[str] | None = None, pcfg,
               minibatch_size: int, prompt_format: str = "{prompt}", policy_text_fn=None,
               seed: int = 0, process_index: int = 0, process_count: int = 1,
               monitors: dict | None = None):
    """`monitors`: name -> scorer, applied to every rollout and logged as
    `<name>_score` (e.g. the synthetic oracle while training against a learned
    reward, to see reward hacking); they never enter the reward."""
    if not prompts:
      raise ValueError("ppo: no prompts")
    self.acdef, self.ref_params, self.mesh, self.rules = acdef, ref_params, mesh, tuple(rules)
    self.tok, self.sampler, self.scorer = tokenizer, sampler, scorer
    self.monitors = dict(monitors or {})
    self.prompts, self.references = list(prompts), (list(references) if references else None)
    # The policy's input text for (prompt, reference): by default the prompt alone; PIT's
    # reference-conditioned policy reads pit_format.policy_prompt(prompt, reference).
    self.policy_text = policy_text_fn or (lambda x, ref: prompt_format.format(prompt=x))
    self.seed = int(seed)
    self.rollout_size, self.minibatch = int(pcfg.rollout_batch_size), int(minibatch_size)
    self.epochs, self.max_new = int(pcfg.epochs), int(pcfg.max_new_tokens)
    self.temperature = float(pcfg.temperature)
    self.gamma, self.lam = float(pcfg.gamma), float(pcfg.lam)
    self.estimator, self.whiten = str(pcfg.kl_estimator), bool(pcfg.whiten_advantages)
    self.max_prompt_len = int(pcfg.max_prompt_len)
    self.score_norm = str(pcfg.get("score_norm", "none"))
    if self.score_norm not in ("none", "initial"):
      raise ValueError(f"ppo.score_norm: {self.score_norm!r} not in ('none', 'initial')")
    self.score_stats: tuple[float, float] | None = None  # (mean, std) of the first rollout
    self.prompt_buckets = tuple(pcfg.prompt_buckets) or default_buckets(self.max_prompt_len, 16)
    if self.estimator not in ppo.KL_ESTIMATORS:
      raise ValueError(f"ppo.kl_estimator: {self.estimator!r} not in {ppo.KL_ESTIMATORS}")
    if self.rollout_size % self.minibatch:
      raise ValueError(f"ppo.rollout_batch_size={self.rollout_size} is not a multiple of "
                       f"train.batch_size={self.minibatch}")
    self.kl = ppo.KLController(float(pcfg.kl_coef), adaptive=bool(pcfg.adaptive_kl),
                               target=float(pcfg.target_kl), horizon=float(pcfg.kl_horizon))
    self.process_index, self.process_count = process_index, process_count
    self.rollout = 0            # index of the next rollout to generate
    self._queue: list[np.ndarray] = []
    self._buffer: dict[str, np.ndarray] = {}
    self._metrics: dict[str, float] = {}
    self._forward = jax.jit(self._forward_impl)
    self._advantages = jax.jit(self._advantages_impl)

  @property
  def updates_per_rollout(self) -> int:
    """Minibatch updates served per rollout: epochs * rollout_batch_size // minibatch."""
    return self.epochs * self.rollout_size // self.minibatch

  # -- state -----------------------------------------------------------------
  def get_state(self) -> dict:
    """The position saved with checkpoints: next rollout index, KL coefficient, seed,
    minibatches still queued and the score normalisation (mean, std) when set."""
    return {"rollout": self.rollout, "kl_coef": self.kl.value, "seed": self.seed,
            "pending_minibatches": len(self._queue),
            "score_stats": list(self.score_stats) if self.score_stats else None}

  def set_state(self, state: dict):
    """Resumes at a `get_state` position (the buffer is emptied, so the next `prepare`
    regenerates the rollout). Raises ValueError when the seed changed or the state was saved
    with minibatches pending (mid-rollout)."""
    if int(state.get("seed", self.seed)) != self.seed:
      raise ValueError(f"train.seed changed since the checkpoint ({state['seed']} -> {self.seed})")
    if int(state.get("pending_minibatches", 0)):
      raise ValueError("checkpoint was taken in the middle of a rollout; PPO resumes only "
                       "from rollout boundaries (checkpoint.every must be a multiple of the "
                       "updates per rollout)")
    self.rollout, self.kl.value = int(state["rollout"]), float(state["kl_coef"])
    stats = state.get("score_stats")
    self.score_stats = (float(stats[0]), float(stats[1])) if stats else None
    self._queue, self._buffer = [], {}

  def checkpointable(self) -> bool:
    """True at rollout boundaries, the only points a restore can reproduce exactly."""
    return not self._queue

  def metrics(self) -> dict:
    """The last rollout's metrics: score mean and std, normalised score mean, reward, KL
    estimates k1 / k3 and the penalty (nats per sequence), KL coefficient, response length
    (tokens), eos fraction, entropy (nats per token), the sampler vs forward log-prob gap, the
    rollout index and any `<monitor>_score`."""
    return dict(self._metrics)

  # -- batches ---------------------------------------------------------------
  def prepare(self, state, step: int):
    """Generates the next rollout with `state.params` when no minibatch is left (the
    trainer calls it before every `next`)."""
    if not self._queue:
      self._generate(state.params)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if not self._queue:
      raise RuntimeError("Rollouts: call prepare(state, step) before next()")
    idx = self._queue.pop(0)
    local = len(idx) // self.process_count
    idx = idx[self.process_index * local:(self.process_index + 1) * local]
    return {k: v[idx] for k, v in self._buffer.items()}

  # -- rollout -----------------------------------------------------------------
  def _prompt_indices(self, r: int) -> list[int]:
    n = len(self.prompts)
    out = []
    for s in range(r * self.rollout_size, (r + 1) * self.rollout_size):
      order = np.random.default_rng([self.seed, s // n]).permutation(n)
      out.append(int(order[s % n]))
    return out

  def _encode_prompt(self, prompt: str, reference: str | None) -> list[int]:
    # keeps the prefix and the end (where the response starts) when too long
    return encoding.prompt_ids(self.tok, self.policy_text(prompt, reference), self.max_prompt_len)

  def _forward_impl(self, params, ref_params, batch):
    with shd.axis_rules(self.mesh, self.rules):
      model = self.acdef.merge(params)
      logp, logits, values = ppo.sequence_outputs(model.policy, model.value, batch)
      ref_logp, _, _ = ppo.sequence_outputs(self.acdef.policy.merge(ref_params), None, batch)
      ent = ppo.masked_mean(ppo.entropy(logits), batch["response_mask"])
    return logp, ref_logp, values, ent

  def _advantages_impl(self, logp, ref_logp, values, scores, mask, kl_coef):
    kl_BN = ppo.kl_penalty(logp, ref_logp, self.estimator) * mask
    rewards = ppo.token_rewards(scores, kl_BN, mask, kl_coef)
    adv, returns = ppo.gae(rewards, values, mask, self.gamma, self.lam)
    if self.whiten:
      adv = ppo.masked_whiten(adv, mask)
    k1 = ppo.kl_penalty(logp, ref_logp, "k1") * mask
    k3 = ppo.kl_penalty(logp, ref_logp, "k3") * mask
    return adv, returns, {"kl": jnp.mean(jnp.sum(k1, 1)), "kl_k3": jnp.mean(jnp.sum(k3, 1)),
                          "kl_penalty": jnp.mean(jnp.sum(kl_BN, 1)),
                          "reward": jnp.mean(jnp.sum(rewards, 1))}

  def _generate(self, params):
    r = self.rollout
    idx = self._prompt_indices(r)
    prompts = [self.prompts[i] for i in idx]
    refs = [self.references[i] for i in idx] if self.references else None
    ids = [self._encode_prompt(p, refs[i] if refs else None) for i, p in enumerate(prompts)]
    key_seed = int(np.random.default_rng([self.seed, r, 7]).integers(2 ** 31))
    out = self.sampler.generate(params["policy"], ids, max_new_tokens=self.max_new,
                                temperature=self.temperature, seed=key_seed)
    B, N = len(ids), self.max_new
    P = bucket_length(max(len(x) for x in ids), self.prompt_buckets)
    tokens = np.full((B, P + N), self.tok.pad_id, np.int32)
    mask = np.zeros((B, P + N), bool)
    for i, x in enumerate(ids):
      tokens[i, P - len(x):P], mask[i, P - len(x):P] = x, True
    rmask = np.arange(N)[None] < out.lengths[:, None]
    tokens[:, P:] = np.where(rmask, out.tokens, self.tok.pad_id)
    mask[:, P:] = rmask
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    batch = dict(tokens=tokens, mask=mask, positions=positions, response_mask=rmask)
    logp, ref_logp, values, ent = self._forward(
        params, self.ref_params, shd.put_global(batch, self.mesh, self.rules))
    responses = [self.tok.decode(t[:n]) for t, n in zip(out.tokens, out.lengths)]
    scores = np.asarray(self.scorer(prompts, responses, refs), np.float32)
    if self.score_norm == "initial" and self.score_stats is None:
      # Ziegler et al. 2019: scale the reward to mean 0, std 1 under the initial policy.
      self.score_stats = (float(scores.mean()), float(scores.std()) + 1e-6)
    if self.score_stats is not None:
      norm_scores = (scores - self.score_stats[0]) / self.score_stats[1]
    else:
      norm_scores = scores
    rmask_f = rmask.astype(np.float32)
    kl_coef = self.kl.value
    adv, returns, stats = self._advantages(logp, ref_logp, values, jnp.asarray(norm_scores),
                                           jnp.asarray(rmask_f), jnp.float32(kl_coef))
    logp, values, adv, returns, stats = shd.to_host((logp, values, adv, returns, stats))
    gap = float(np.max(np.abs(np.asarray(logp) - out.logprobs) * rmask_f))
    self._buffer = dict(batch, response_mask=rmask_f, old_logprobs=np.asarray(logp),
                        old_values=np.asarray(values), advantages=np.asarray(adv),
                        returns=np.asarray(returns))
    order_rng = np.random.default_rng([self.seed, r, 11])
    mb = self.minibatch
    self._queue = [perm[i:i + mb] for perm in (order_rng.permutation(B) for _ in range(self.epochs))
                   for i in range(0, B, mb)]
    kl = float(stats["kl"])
    self._metrics = {
        "score": float(scores.mean()), "score_std": float(scores.std()),
        "score_normalized": float(norm_scores.mean()),
        "reward": float(stats["reward"]), "kl": kl, "kl_k3": float(stats["kl_k3"]),
        "kl_penalty": float(stats["kl_penalty"]), "kl_coef": kl_coef,
        "response_length": float(out.lengths.mean()),
        "eos_fraction": float(np.mean(out.lengths < N) if N else 0.0),
        "rollout_entropy": float(ent), "sampler_logprob_gap": gap, "rollout": r}
    for name, monitor in self.monitors.items():
      self._metrics[f"{name}_score"] = float(np.mean(monitor(prompts, responses, refs)))
    self.kl.update(kl, B)
    self.rollout = r + 1
    logging.info("rollout %d: score %.4f kl %.4f kl_coef %.4f len %.1f", r, scores.mean(), kl,
                 kl_coef, out.lengths.mean())
