"""PIT's gap reward model r_gap(x, y, y_ref) (`pipeline=gap_reward`).

Presets: `tiny` (default): the synthetic sort task's preference pairs
(data.source='synthetic', held-out eval pairs on held-out prompts), byte
tokenizer, template 'plain', a d_model 64 2-layer scalar-head model; a few
minutes on 2 CPU cores. `hh`: HH-RLHF pairs via the TFDS builder
(data.source='tfds', data.manual_dir / data.data_dir as for configs/reward.py),
template 'chat'; the model size is the base default, set --config.model.* for
a real run (accelerator).

Run: python -m pit.main --config=configs/gap_reward.py:tiny --workdir=/tmp/gap_rm
-> WORKDIR/gap_reward_summary.json (final_eval: ordering_accuracy, gap_accuracy,
all_orderings_accuracy, self_gap).
"""

from pit.config_base import base_config, gap_reward_defaults


def get_config(preset: str = "tiny"):
  c = base_config()
  c.pipeline = "gap_reward"
  c.gap_reward = gap_reward_defaults()
  if preset == "tiny":
    c.data.update(source="synthetic", synthetic_train_size=4000, synthetic_eval_size=400,
                  max_len=128, max_response_len=40, buckets=(96, 128))
    c.model.update(vocab_size=384, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_ff=256, max_seq_len=128, head="scalar")
    c.train.update(steps=1000, batch_size=16, log_every=50, eval_every=200)
    c.optim.update(learning_rate=2e-3, warmup_steps=50, decay_steps=1000, weight_decay=0.0)
    c.checkpoint.update(every=200, keep=2)
  elif preset == "hh":
    c.gap_reward.template = "chat"
    c.data.update(source="tfds", tfds_name="hh_rlhf", max_len=1024, max_response_len=256,
                  buckets=(256, 512, 1024))
    c.model.update(head="scalar", max_seq_len=1024)
    c.train.update(steps=1000, batch_size=16, log_every=20, eval_every=250)
    c.checkpoint.update(every=250, keep=2)
  else:
    raise ValueError(f"unknown preset {preset!r} (tiny, hh)")
  return c
