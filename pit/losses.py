"""Losses shared by every method. Each has the train-step signature
`(model, batch, rng, extra) -> (loss, weight, metrics)`."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_BLV, targets_BL):
  """log p(target) per position, in fp32."""
  logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_BLV, targets_BL[..., None], axis=-1)[..., 0]


def sft_loss(model, batch, rng, extra):
  """Mean NLL over target (response) tokens only."""
  del rng, extra
  logits_BLV, _ = model(batch["inputs"], batch["positions"], batch["mask"])
  logp_BL = token_logprobs(logits_BLV, batch["targets"])
  w_BL = batch["loss_mask"].astype(jnp.float32)
  n = jnp.sum(w_BL)
  loss = -jnp.sum(logp_BL * w_BL) / jnp.maximum(n, 1.0)
  correct = (jnp.argmax(logits_BLV, -1) == batch["targets"]).astype(jnp.float32)
  acc = jnp.sum(correct * w_BL) / jnp.maximum(n, 1.0)
  return loss, n, {"nll": loss, "token_accuracy": acc}
