"""Losses shared by every method. Each has the train-step signature
`(model, batch, rng, extra) -> (loss, weight, metrics)`; `make_*_loss(cfg)`
binds a config section's hyper-parameters.

Pair batches (`pit.data.pair_batching.collate_pairs`) hold chosen (index 0)
and rejected (index 1) rows side by side: `inputs/targets/loss_mask/mask/
positions` are [B, 2, L]; `margin` and `weight` are [B]; DPO with a
precomputed reference adds `ref_logps` [B, 2]. Both rows of a pair run in one
forward pass on a [2B, L] view (a local reshape: a device's pairs stay on it).

Formulas (s = summed log-prob of the response tokens incl. eos, w/l = chosen/
rejected, pi/ref = policy/reference, h = (s_pi_w - s_ref_w) - (s_pi_l - s_ref_l)):
  reward (Bradley-Terry):  -log sigmoid(r_w - r_l - m * margin_scale)
                           + center_coef * (r_w + r_l)^2      (reward centring)
  gap reward (PIT r_gap, [B, 4, L] batches of pit.data.gap_batching): see
                           `gap_reward_losses`
  dpo sigmoid:  -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
                (eps = label_smoothing; eps > 0 is conservative DPO, cDPO)
  dpo ipo:      (h - 1/(2 beta))^2                 (Azar et al. 2023, summed log-probs)
  dpo hinge:    max(0, 1 - beta h)                 (SLiC-style, as in TRL)
  dpo robust:   (-(1-eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)
                (Chowdhury et al. 2024, unbiased under label-flip rate eps < 1/2; TRL's form)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from pit import sharding as shd
from pit.model import gather_last


def target_logits(logits_BLV, targets_BL):
  """logits_BLV[..., targets_BL] (fp32) as a masked sum over the vocabulary, not a gather:
  its gradient is an elementwise select that fuses with the softmax's, where a gather's is a
  scatter into the [B, L, V] gradient (serial on XLA:CPU)."""
  V = logits_BLV.shape[-1]
  hit_BLV = jnp.arange(V, dtype=jnp.int32) == targets_BL[..., None].astype(jnp.int32)
  return jnp.sum(jnp.where(hit_BLV, logits_BLV.astype(jnp.float32), 0.0), axis=-1)


def token_logprobs(logits_BLV, targets_BL):
  """log p(target) per position, in fp32: logit[target] - logsumexp(logits) [B, L]."""
  lse_BL = jax.nn.logsumexp(logits_BLV.astype(jnp.float32), axis=-1)
  return target_logits(logits_BLV, targets_BL) - lse_BL


def sft_loss(model, batch, rng, extra):
  """Mean NLL over target (response) tokens only. Metric `token_accuracy`: the share of
  target tokens whose logit is the row's maximum (argmax == target; a tie for the maximum
  counts as a hit), computed from the max the log-sum-exp already takes."""
  del rng, extra
  logits_BLV, _ = model(batch["inputs"], batch["positions"], batch["mask"])
  logits_BLV = logits_BLV.astype(jnp.float32)
  target_BL = target_logits(logits_BLV, batch["targets"])
  max_BL = jax.lax.stop_gradient(jnp.max(logits_BLV, axis=-1))
  logp_BL = target_BL - jax.nn.logsumexp(logits_BLV, axis=-1)
  w_BL = batch["loss_mask"].astype(jnp.float32)
  n = jnp.sum(w_BL)
  loss = -jnp.sum(logp_BL * w_BL) / jnp.maximum(n, 1.0)
  correct = (jax.lax.stop_gradient(target_BL) >= max_BL).astype(jnp.float32)
  acc = jnp.sum(correct * w_BL) / jnp.maximum(n, 1.0)
  return loss, n, {"nll": loss, "token_accuracy": acc}


# ----------------------------------------------------------------- pair helpers

def flatten_pairs(x_B2):
  """[B, 2, ...] -> [2B, ...] with rows (pair0 chosen, pair0 rejected, pair1 ...)."""
  y = x_B2.reshape((-1,) + x_B2.shape[2:])
  return shd.constrain(y, ("activation_batch",) + (None,) * (y.ndim - 1))


def pair_weights(batch):
  """Per-pair weight [B] (0 for batch padding); ones when the batch has none."""
  if "weight" in batch:
    return batch["weight"].astype(jnp.float32)
  return jnp.ones(batch["inputs"].shape[:1], jnp.float32)


def _wmean(x_B, w_B):
  return jnp.sum(x_B * w_B) / jnp.maximum(jnp.sum(w_B), 1e-12)


def pair_logprobs(model, batch, *, with_logits: bool = False):
  """Summed log-probs of each row's target tokens: [B, 2] (and the [2B, L, V] logits)."""
  B = batch["inputs"].shape[0]
  logits_NLV, _ = model(flatten_pairs(batch["inputs"]), flatten_pairs(batch["positions"]),
                        flatten_pairs(batch["mask"]))
  logp_NL = token_logprobs(logits_NLV, flatten_pairs(batch["targets"]))
  w_NL = flatten_pairs(batch["loss_mask"]).astype(jnp.float32)
  seq_B2 = jnp.sum(logp_NL * w_NL, axis=-1).reshape(B, 2)
  return (seq_B2, logits_NLV) if with_logits else seq_B2


# ------------------------------------------------------------------ reward model

def full_sequences(inputs_BL, targets_BL, mask_BL, pad_id: int = 0):
  """Next-token rows -> the whole token row [bos prompt response eos] and its mask.

  Row t of `inputs` holds tokens[:-1], `targets` tokens[1:]; the last token
  (eos) is the target at the last real input position and goes one slot right.
  Needs one free slot per row (pair batching buckets on the full length).
  """
  last_target_BL = jnp.where(mask_BL, targets_BL, pad_id)
  shifted_BL = jnp.pad(last_target_BL, ((0, 0), (1, 0)), constant_values=pad_id)[:, :-1]
  shifted_mask_BL = jnp.pad(mask_BL, ((0, 0), (1, 0)))[:, :-1]
  tokens_BL = jnp.where(mask_BL, inputs_BL, shifted_BL)
  return tokens_BL, mask_BL | shifted_mask_BL


def score_sequences(model, tokens_BL, mask_BL, positions_BL=None):
  """Scalar-head value at each row's last real token: [B]. For a scored
  response that is the eos of [bos prompt response eos]."""
  if positions_BL is None:
    positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
  values_BL, _ = model(tokens_BL, positions_BL, mask_BL)
  return gather_last(values_BL, mask_BL)


def pair_rewards(model, batch):
  """Rewards [B, 2] of chosen and rejected, read at their final (eos) token."""
  B = batch["inputs"].shape[0]
  tokens_NL, mask_NL = full_sequences(flatten_pairs(batch["inputs"]),
                                      flatten_pairs(batch["targets"]),
                                      flatten_pairs(batch["mask"]))
  return score_sequences(model, tokens_NL, mask_NL).reshape(B, 2)


def bradley_terry_losses(r_w_B, r_l_B, offset_B=0.0):
  """-log sigmoid(r_w - r_l - offset) per pair."""
  return -jax.nn.log_sigmoid(r_w_B - r_l_B - offset_B)


def reward_loss(model, batch, rng, extra, *, margin_scale: float = 0.0, center_coef: float = 0.0):
  """Bradley-Terry pairwise loss with optional margin and reward centring.

  loss_i = -log sigmoid(r_w - r_l - margin_scale * margin_i) + center_coef * (r_w + r_l)^2,
  averaged over pairs (weighted by `weight`); weight = number of pairs.
  """
  del rng, extra
  r_B2 = pair_rewards(model, batch)
  r_w, r_l = r_B2[:, 0], r_B2[:, 1]
  w_B = pair_weights(batch)
  bt_B = bradley_terry_losses(r_w, r_l, margin_scale * batch["margin"].astype(jnp.float32))
  center_B = (r_w + r_l) ** 2
  loss = _wmean(bt_B + center_coef * center_B, w_B)
  n = jnp.sum(w_B)
  mean = (_wmean(r_w, w_B) + _wmean(r_l, w_B)) / 2
  var = (_wmean((r_w - mean) ** 2, w_B) + _wmean((r_l - mean) ** 2, w_B)) / 2
  metrics = {"bt_loss": _wmean(bt_B, w_B), "center_loss": _wmean(center_B, w_B),
             "accuracy": _wmean((r_w > r_l).astype(jnp.float32), w_B),
             "margin": _wmean(r_w - r_l, w_B), "reward_mean": mean,
             "reward_std": jnp.sqrt(var), "reward_chosen": _wmean(r_w, w_B),
             "reward_rejected": _wmean(r_l, w_B)}
  return loss, n, metrics


def make_reward_loss(cfg):
  """cfg: the config's `reward` section (margin_scale, center_coef)."""
  return functools.partial(reward_loss, margin_scale=float(cfg.margin_scale),
                           center_coef=float(cfg.center_coef))


# -------------------------------------------------------- PIT gap reward model

def gap_reward_losses(r_wl_B, r_ww_B, r_ll_B, r_lw_B, *, tie_coef: float = 0.0,
                      center_coef: float = 0.0):
  """Per-pair loss of PIT's gap reward model r_gap(x, y, y_ref) (Wang et al. 2023).

  PIT trains r_gap so that  r(x,y_w,y_l) >= r(x,y_w,y_w) ~ r(x,y_l,y_l) >= r(x,y_l,y_w):
  "y_w improves on y_l" scores highest, "y_l improves on y_w" lowest, and a
  response compared with itself (no gap) sits in between. Each '>=' becomes a
  Bradley-Terry (pairwise logistic) term, both self-comparisons on each side:

    loss = -[log s(r_wl - r_ww) + log s(r_wl - r_ll) + log s(r_ww - r_lw) + log s(r_ll - r_lw)]
           + tie_coef * (r_ww - r_ll)^2 + center_coef * (r_ww^2 + r_ll^2) / 2

  (s = sigmoid). The squared term ties the two no-gap scores ('~'), so "no
  improvement" means one value whatever the response; the optional centring
  term pins that value near 0, making r_gap > 0 read as "better than the
  reference" (the logistic terms alone leave a shift of all four free).
  """
  ls = jax.nn.log_sigmoid
  order_B = -(ls(r_wl_B - r_ww_B) + ls(r_wl_B - r_ll_B) + ls(r_ww_B - r_lw_B)
              + ls(r_ll_B - r_lw_B))
  return order_B + tie_coef * (r_ww_B - r_ll_B) ** 2 + center_coef * (r_ww_B ** 2 + r_ll_B ** 2) / 2


def gap_rewards(model, batch):
  """r_gap of the four rows of each pair, [B, 4] in pit.data.gap_batching.GAP_ROWS
  order (wl, ww, ll, lw), read at each row's final (eos) token."""
  B, K = batch["inputs"].shape[:2]
  tokens_NL, mask_NL = full_sequences(flatten_pairs(batch["inputs"]),
                                      flatten_pairs(batch["targets"]),
                                      flatten_pairs(batch["mask"]))
  return score_sequences(model, tokens_NL, mask_NL).reshape(B, K)


def gap_reward_metrics(r_B4, w_B):
  """Ordering accuracy (mean of the 4 strict inequalities), gap accuracy
  P(r_wl > r_lw), all-orderings accuracy, mean |r_ww - r_ll|, reward mean/std."""
  wl, ww, ll, lw = (r_B4[:, k] for k in range(4))
  holds_B4 = jnp.stack([wl > ww, wl > ll, ww > lw, ll > lw], axis=1).astype(jnp.float32)
  mean = _wmean(r_B4.mean(axis=1), w_B)
  var = _wmean(((r_B4 - mean) ** 2).mean(axis=1), w_B)
  return {"ordering_accuracy": _wmean(holds_B4.mean(axis=1), w_B),
          "gap_accuracy": _wmean((wl > lw).astype(jnp.float32), w_B),
          "all_orderings_accuracy": _wmean(holds_B4.min(axis=1), w_B),
          "self_gap": _wmean(jnp.abs(ww - ll), w_B), "gap_margin": _wmean(wl - lw, w_B),
          "reward_mean": mean, "reward_std": jnp.sqrt(var),
          "reward_wl": _wmean(wl, w_B), "reward_ww": _wmean(ww, w_B),
          "reward_ll": _wmean(ll, w_B), "reward_lw": _wmean(lw, w_B)}


def gap_reward_loss(model, batch, rng, extra, *, tie_coef: float = 0.0, center_coef: float = 0.0):
  """`gap_reward_losses` on a pit.data.gap_batching batch ([B, 4, L] rows wl,
  ww, ll, lw), averaged over pairs weighted by `weight`; weight = number of pairs.
  The 4B rows run in one forward pass on a [4B, L] view."""
  del rng, extra
  r_B4 = gap_rewards(model, batch)
  if r_B4.shape[1] != 4:
    raise ValueError(f"gap_reward_loss: expected 4 rows per pair, got {r_B4.shape[1]}")
  w_B = pair_weights(batch)
  per_B = gap_reward_losses(r_B4[:, 0], r_B4[:, 1], r_B4[:, 2], r_B4[:, 3],
                            tie_coef=tie_coef, center_coef=center_coef)
  metrics = gap_reward_metrics(r_B4, w_B)
  metrics["order_loss"] = _wmean(gap_reward_losses(r_B4[:, 0], r_B4[:, 1], r_B4[:, 2],
                                                   r_B4[:, 3]), w_B)
  return _wmean(per_B, w_B), jnp.sum(w_B), metrics


def make_gap_reward_loss(cfg):
  """cfg: the config's `gap_reward` section (tie_coef, center_coef)."""
  tie, center = float(cfg.tie_coef), float(cfg.center_coef)
  if tie < 0 or center < 0:
    raise ValueError(f"gap_reward.tie_coef ({tie}) and gap_reward.center_coef ({center}) "
                     "must be >= 0")
  return functools.partial(gap_reward_loss, tie_coef=tie, center_coef=center)


# ------------------------------------------------------------------- DPO family

DPO_KINDS = ("sigmoid", "ipo", "hinge", "robust")


def dpo_pair_losses(kind: str, pi_w_B, pi_l_B, ref_w_B, ref_l_B, *, beta: float,
                    label_smoothing: float = 0.0):
  """Per-pair loss of the DPO variant `kind` from summed sequence log-probs."""
  h_B = (pi_w_B - ref_w_B) - (pi_l_B - ref_l_B)
  eps = label_smoothing
  if kind == "sigmoid":
    return -(1 - eps) * jax.nn.log_sigmoid(beta * h_B) - eps * jax.nn.log_sigmoid(-beta * h_B)
  if kind == "ipo":
    return (h_B - 1.0 / (2.0 * beta)) ** 2
  if kind == "hinge":
    return jax.nn.relu(1.0 - beta * h_B)
  if kind == "robust":
    return (-(1 - eps) * jax.nn.log_sigmoid(beta * h_B)
            + eps * jax.nn.log_sigmoid(-beta * h_B)) / (1 - 2 * eps)
  raise ValueError(f"dpo.loss: unknown DPO loss {kind!r} (known: {', '.join(DPO_KINDS)})")


def _token_kl(logits_NLV, ref_logits_NLV, w_NL):
  """Exact KL(pi || ref) of the next-token distributions, summed over target
  positions: [N]."""
  logp = jax.nn.log_softmax(logits_NLV.astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(ref_logits_NLV.astype(jnp.float32), axis=-1)
  kl_NL = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  return jnp.sum(kl_NL * w_NL, axis=-1)


def dpo_loss(model, batch, rng, extra, *, kind: str = "sigmoid", beta: float = 0.1,
             label_smoothing: float = 0.0, nll_coef: float = 0.0):
  """DPO-family loss on summed response log-probs.

  `nll_coef` > 0 adds nll_coef * (-log pi(y_w|x) / |y_w|), the chosen response's
  per-token NLL (RPO / iterative RPO, Pang et al., 2024), which keeps DPO from
  pushing the chosen likelihood down with the rejected one. Metric `nll_chosen`.

  The reference log-probs come from `batch['ref_logps']` [B, 2] (precomputed)
  or, when the batch has none, from a live frozen reference:
  `extra['ref_params']` (same architecture as the policy; no gradient).

  Metrics: implicit rewards beta*(s_pi - s_ref) of chosen / rejected, their
  margin and accuracy (chosen > rejected); `kl_logratio`: the mean of
  s_pi - s_ref over the chosen and rejected responses, i.e. the single-sample
  estimate log pi(y)/ref(y) of KL(pi || ref) with y the pair's responses (exact
  in expectation only for y ~ pi; on off-policy pairs it measures drift and can
  be negative). With a live reference also `kl_tokens`: the exact per-position
  KL(pi(.|prefix) || ref(.|prefix)) summed over the response positions of the
  pair's responses, averaged over responses (always >= 0).
  """
  del rng
  live = "ref_logps" not in batch
  if live and (not extra or "ref_params" not in extra):
    raise ValueError("dpo_loss: the batch has no 'ref_logps' and extra has no 'ref_params'")
  pi_B2, logits_NLV = pair_logprobs(model, batch, with_logits=True)
  metrics = {}
  if live:
    ref_model = nnx.merge(nnx.graphdef(model), extra["ref_params"])
    ref_B2, ref_logits_NLV = pair_logprobs(ref_model, batch, with_logits=True)
    ref_B2 = jax.lax.stop_gradient(ref_B2)
    w_NL = flatten_pairs(batch["loss_mask"]).astype(jnp.float32)
    kl_B2 = _token_kl(jax.lax.stop_gradient(logits_NLV), jax.lax.stop_gradient(ref_logits_NLV),
                      w_NL).reshape(-1, 2)
  else:
    ref_B2 = batch["ref_logps"].astype(jnp.float32)
  w_B = pair_weights(batch)
  losses_B = dpo_pair_losses(kind, pi_B2[:, 0], pi_B2[:, 1], ref_B2[:, 0], ref_B2[:, 1],
                             beta=beta, label_smoothing=label_smoothing)
  ratio_B2 = jax.lax.stop_gradient(pi_B2 - ref_B2)
  rw_B, rl_B = beta * ratio_B2[:, 0], beta * ratio_B2[:, 1]
  n_chosen_B = jnp.maximum(batch["loss_mask"][:, 0].astype(jnp.float32).sum(-1), 1.0)
  nll_chosen = _wmean(-pi_B2[:, 0] / n_chosen_B, w_B)
  loss = _wmean(losses_B, w_B)
  if nll_coef:
    loss = loss + nll_coef * nll_chosen
  metrics.update({"nll_chosen": nll_chosen,
      "reward_chosen": _wmean(rw_B, w_B), "reward_rejected": _wmean(rl_B, w_B),
      "reward_margin": _wmean(rw_B - rl_B, w_B),
      "reward_accuracy": _wmean((rw_B > rl_B).astype(jnp.float32), w_B),
      "logps_chosen": _wmean(pi_B2[:, 0], w_B), "logps_rejected": _wmean(pi_B2[:, 1], w_B),
      "kl_logratio": _wmean(ratio_B2.mean(axis=1), w_B)})
  if live:
    metrics["kl_tokens"] = _wmean(kl_B2.mean(axis=1), w_B)
  return loss, jnp.sum(w_B), metrics


def make_dpo_loss(cfg):
  """cfg: the config's `dpo` section (loss, beta, label_smoothing[, nll_coef])."""
  kind, beta, eps = str(cfg.loss), float(cfg.beta), float(cfg.label_smoothing)
  nll_coef = float(getattr(cfg, "nll_coef", 0.0))
  if nll_coef < 0:
    raise ValueError(f"dpo.nll_coef must be >= 0, got {nll_coef}")
  if kind not in DPO_KINDS:
    raise ValueError(f"dpo.loss: unknown DPO loss {kind!r} (known: {', '.join(DPO_KINDS)})")
  if beta <= 0:
    raise ValueError(f"dpo.beta must be > 0, got {beta}")
  if not 0.0 <= eps < 0.5:
    raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {eps}")
  return functools.partial(dpo_loss, kind=kind, beta=beta, label_smoothing=eps, nll_coef=nll_coef)
