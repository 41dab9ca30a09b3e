"""PPO with a learned (or oracle) reward: the numerics and the loss.

Per-token rewards are `-kl_coef * kl_t` plus the scalar score at the last
response token; advantages come from GAE (reverse `lax.scan`), optionally
whitened over the rollout; the loss is the clipped policy objective plus a
clipped value loss (Schulman et al. 2017; Ziegler et al. 2019 for the KL
penalty and its adaptive coefficient).

Policy and value are trained as ONE params pytree `{"policy": ..., "value": ...}`
through the generic train step: `ActorCriticDef` is the small composite the
step merges into an `ActorCritic` (two Transformers: an LM and a scalar head).

Shapes: B batch, N response length, T prompt bucket + N, V vocab.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pit.losses import token_logprobs
from pit.params import ModelDef

KL_ESTIMATORS = ("k1", "k3")


# ----------------------------------------------------------------------------- numerics

def masked_mean(x, mask, axis=None):
  """sum(x * mask) / max(sum(mask), 1) over `axis` (all axes when None): the mean over the
  positions the mask keeps, 0 when it keeps none."""
  m = mask.astype(jnp.float32)
  return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def masked_whiten(x, mask, eps: float = 1e-8):
  """(x - mean) / sqrt(var + eps) with the masked mean and (biased) masked variance;
  0 at masked positions."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  return (x - mean) * jax.lax.rsqrt(var + eps) * mask.astype(x.dtype)


def kl_penalty(logp_BN, ref_logp_BN, estimator: str):
  """Per-token estimate of KL(pi || ref) from tokens sampled from pi.

  k1 = log pi - log ref; k3 = (r - 1) - log r with r = ref / pi (Schulman 2020).
  """
  log_r = ref_logp_BN - logp_BN
  if estimator == "k1":
    return -log_r
  if estimator == "k3":
    return jnp.expm1(log_r) - log_r
  raise ValueError(f"ppo.kl_estimator: {estimator!r} not in {KL_ESTIMATORS}")


def token_rewards(scores_B, kl_BN, mask_BN, kl_coef):
  """-kl_coef * kl_t on every response token, + score at the last response token."""
  m = mask_BN.astype(jnp.float32)
  N = mask_BN.shape[1]
  last_B = jnp.maximum(jnp.sum(m, axis=1).astype(jnp.int32) - 1, 0)
  at_last_BN = (jnp.arange(N)[None] == last_B[:, None]) & (jnp.sum(m, axis=1) > 0)[:, None]
  return (-kl_coef * kl_BN + jnp.where(at_last_BN, scores_B[:, None], 0.0)) * m


def gae(rewards_BN, values_BN, mask_BN, gamma: float, lam: float):
  """Generalised advantage estimation over response tokens (mask is a prefix).

  delta_t = r_t + gamma * V_{t+1} m_{t+1} - V_t;  A_t = delta_t + gamma*lam*m_{t+1}*A_{t+1}.
  Returns (advantages_BN, returns_BN = A + V), both 0 where masked.
  """
  m = mask_BN.astype(jnp.float32)
  r, v = rewards_BN * m, values_BN * m
  next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
  next_m = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
  delta = r + gamma * next_v - v

  def body(next_adv_B, xs):
    delta_B, next_m_B, m_B = xs
    adv_B = (delta_B + gamma * lam * next_m_B * next_adv_B) * m_B
    return adv_B, adv_B

  _, adv_NB = jax.lax.scan(body, jnp.zeros_like(r[:, 0]), (delta.T, next_m.T, m.T), reverse=True)
  adv = adv_NB.T
  return adv, (adv + v) * m


def policy_loss(logp_BN, old_logp_BN, adv_BN, mask_BN, clip: float):
  """Clipped surrogate: mean of max(-A r, -A clip(r, 1-eps, 1+eps)); and the clip fraction."""
  ratio = jnp.exp(logp_BN - old_logp_BN)
  l1 = -adv_BN * ratio
  l2 = -adv_BN * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
  return masked_mean(jnp.maximum(l1, l2), mask_BN), masked_mean((l2 > l1).astype(jnp.float32), mask_BN)


def value_loss(values_BN, old_values_BN, returns_BN, mask_BN, clip: float):
  """0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2); and its clip fraction."""
  v_clipped = old_values_BN + jnp.clip(values_BN - old_values_BN, -clip, clip)
  e1, e2 = jnp.square(values_BN - returns_BN), jnp.square(v_clipped - returns_BN)
  return 0.5 * masked_mean(jnp.maximum(e1, e2), mask_BN), masked_mean((e2 > e1).astype(jnp.float32), mask_BN)


def entropy(logits_BNV):
  """Entropy of softmax(logits) per position, fp32."""
  logp = jax.nn.log_softmax(logits_BNV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def approx_kl(logp_BN, old_logp_BN, mask_BN):
  """0.5 * mean (log pi - log pi_old)^2: how far an update moved the policy."""
  return 0.5 * masked_mean(jnp.square(logp_BN - old_logp_BN), mask_BN)


class KLController:
  """Fixed or adaptive KL coefficient (Ziegler et al. 2019):
  e = clip(KL / target - 1, -0.2, 0.2);  coef *= 1 + e * n_samples / horizon."""

  def __init__(self, init: float, *, adaptive: bool, target: float, horizon: float):
    if init < 0:
      raise ValueError(f"ppo.kl_coef must be >= 0, got {init}")
    if adaptive and (target <= 0 or horizon <= 0):
      raise ValueError(f"ppo.target_kl and ppo.kl_horizon must be > 0 (got {target}, {horizon})")
    self.value, self.adaptive, self.target, self.horizon = float(init), adaptive, target, horizon

  def update(self, current_kl: float, n_samples: int) -> float:
    """Adapts the coefficient to the rollout's `current_kl` (nats per sequence, summed
    over response tokens) over `n_samples` sequences when adaptive (Ziegler et al. 2019);
    returns the coefficient for the next rollout."""
    if self.adaptive:
      err = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
      self.value *= 1.0 + err * n_samples / self.horizon
    return self.value


# ----------------------------------------------------------------------------- models

@dataclasses.dataclass
class ActorCritic:
  """The merged models of one PPO params pytree: the policy (LM head) and the value model
  (scalar head)."""
  policy: Any  # Transformer, head='lm'
  value: Any   # Transformer, head='scalar'


@dataclasses.dataclass(frozen=True)
class ActorCriticDef:
  """Composite model definition: params {"policy": ..., "value": ...}.

  Has what the train step and the loop use of a `ModelDef` (merge, shardings,
  abstract_params, cfg)."""
  policy: ModelDef
  value: ModelDef

  @property
  def cfg(self):
    """The policy's ModelConfig."""
    return self.policy.cfg

  @property
  def abstract_params(self):
    """{"policy": ..., "value": ...} of ShapeDtypeStructs."""
    return {"policy": self.policy.abstract_params, "value": self.value.abstract_params}

  def merge(self, params) -> ActorCritic:
    """The ActorCritic with `params` ({"policy", "value"}) in place; call it inside jit."""
    return ActorCritic(self.policy.merge(params["policy"]), self.value.merge(params["value"]))

  def shardings(self, mesh: Mesh, rules):
    """{"policy": ..., "value": ...} NamedShardings of every parameter on `mesh`."""
    return {"policy": self.policy.shardings(mesh, rules), "value": self.value.shardings(mesh, rules)}


def response_slice(x_BT, N: int):
  """Positions whose output predicts / values response token j: T-N-1+j (j < N)."""
  T = x_BT.shape[1]
  return x_BT[:, T - N - 1:T - 1]


def sequence_outputs(policy, value, batch):
  """Response-token log-probs, logits and values from one forward of each model.

  batch: tokens/mask/positions [B, T] (left-padded prompt bucket then N response
  slots), response_mask [B, N]. Returns (logp_BN, logits_BNV, values_BN or None).
  """
  N = batch["response_mask"].shape[1]
  tokens, positions, mask = batch["tokens"], batch["positions"], batch["mask"]
  logits_BTV, _ = policy(tokens, positions, mask)
  logits_BNV = response_slice(logits_BTV, N)
  logp_BN = token_logprobs(logits_BNV, tokens[:, -N:])
  values_BN = None
  if value is not None:
    values_BT, _ = value(tokens, positions, mask)
    values_BN = response_slice(values_BT, N)
  return logp_BN, logits_BNV, values_BN


def make_ppo_loss(*, clip_ratio: float, value_clip: float, vf_coef: float, ent_coef: float = 0.0):
  """PPO loss for the generic train step: `(ActorCritic, batch, rng, extra)`.

  batch: tokens, mask, positions [B, T]; response_mask, old_logprobs,
  old_values, advantages, returns [B, N]. The loss is a mean over response
  tokens; its weight is their count (exact under gradient accumulation).
  """
  def loss_fn(model: ActorCritic, batch, rng, extra):
    del rng, extra
    m = batch["response_mask"]
    logp, logits, values = sequence_outputs(model.policy, model.value, batch)
    pg, clipfrac = policy_loss(logp, batch["old_logprobs"], batch["advantages"], m, clip_ratio)
    vf, vclipfrac = value_loss(values, batch["old_values"], batch["returns"], m, value_clip)
    ent = masked_mean(entropy(logits), m)
    loss = pg + vf_coef * vf - ent_coef * ent
    n = jnp.sum(m.astype(jnp.float32))
    metrics = {"policy_loss": pg, "value_loss": vf, "clip_fraction": clipfrac,
               "value_clip_fraction": vclipfrac, "entropy": ent,
               "approx_kl": approx_kl(logp, batch["old_logprobs"], m),
               "value_mean": masked_mean(values, m)}
    return loss, n, metrics
  return loss_fn
