"""Reward model: Bradley-Terry pairwise loss on preference pairs (`pipeline=reward`).

Presets: `tiny` (default; the synthetic sort task's pairs, a d_model-128
2-layer scalar-head byte model trained from scratch, CPU minutes; the held-out
pairwise accuracy is in WORKDIR/reward_summary.json), `large` (HH-RLHF via the
TFDS builder, a ~350M-parameter model, GPU/TPU; start it from an SFT run of the
same shape with `--config.reward.init_checkpoint=<sft workdir>`).
Loss options: `reward.margin_scale` (subtract scale * pair margin inside the
sigmoid), `reward.center_coef` (auxiliary coef * (r_w + r_l)^2).
"""
from pit.config_base import base_config, reward_defaults


def get_config(preset: str = "tiny"):
  c = base_config()
  c.pipeline = "reward"
  c.reward = reward_defaults()
  c.model.head = "scalar"
  if preset == "tiny":
    c.data.update(source="synthetic", synthetic_train_size=4000, synthetic_eval_size=400,
                  max_len=64, max_response_len=33, buckets=(64,))
    c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_ff=384, max_seq_len=128)
    c.train.update(steps=400, batch_size=32, log_every=20, eval_every=200)
    c.optim.update(learning_rate=1e-3, warmup_steps=20, decay_steps=400, weight_decay=0.0)
    c.checkpoint.update(every=200, keep=2)
  elif preset == "large":
    c.data.update(source="tfds", tfds_name="hh_rlhf", max_len=1024, max_response_len=256,
                  buckets=(256, 512, 1024))
    c.model.update(vocab_size=384, d_model=1024, num_layers=24, num_heads=16, num_kv_heads=16,
                   d_ff=2816, max_seq_len=1024, dtype="bfloat16", remat="full")
    c.mesh.shape = (1, -1, 1)
    c.train.update(steps=2000, batch_size=64, log_every=10, eval_every=500)
    c.optim.update(learning_rate=1e-5, warmup_steps=100, decay_steps=2000, weight_decay=0.0)
    c.checkpoint.update(every=500, keep=2)
  else:
    raise ValueError(f"unknown preset {preset!r} (tiny, large)")
  return c
