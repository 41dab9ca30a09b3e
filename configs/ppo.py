"""PPO with a learned reward model or the synthetic oracle (`pipeline=ppo`).

Presets: `tiny` (CPU, minutes; the synthetic task with its oracle as reward;
start from an SFT run: `--config.ppo.init_checkpoint_dir=<sft workdir>`),
`small`. `train.batch_size` is the PPO minibatch; one rollout of
`ppo.rollout_batch_size` samples gives `ppo.epochs * rollout / minibatch`
updates, and `train.steps` / `checkpoint.every` must be multiples of that.
"""

from pit.config_base import base_config, ppo_defaults


def get_config(preset: str = "tiny"):
  c = base_config()
  c.pipeline = "ppo"
  c.ppo = ppo_defaults()
  c.data.source = "synthetic"
  if preset == "tiny":
    c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_ff=384, max_seq_len=128)
    c.ppo.update(rollout_batch_size=128, max_new_tokens=32, max_prompt_len=64,
                 prompt_buckets=(32, 64), kl_horizon=512.0)
    c.train.update(steps=120, batch_size=64, log_every=4)
    c.optim.update(learning_rate=1e-4, warmup_steps=0, decay_steps=120, end_lr_ratio=1.0,
                   weight_decay=0.0)
    c.checkpoint.update(every=40, keep=2)
  elif preset == "small":
    c.model.update(vocab_size=384, d_model=512, num_layers=6, num_heads=8, num_kv_heads=8,
                   d_ff=1408, max_seq_len=512)
    c.ppo.update(rollout_batch_size=128, max_new_tokens=128, max_prompt_len=256,
                 prompt_buckets=(64, 128, 256))
    c.train.update(steps=400, batch_size=32, log_every=8)
    c.optim.update(learning_rate=1e-6, warmup_steps=0, decay_steps=400, end_lr_ratio=1.0,
                   weight_decay=0.0)
    c.checkpoint.update(every=40, keep=2)
  else:
    raise ValueError(f"unknown preset {preset!r} (tiny, small)")
  return c
