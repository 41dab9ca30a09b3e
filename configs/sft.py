"""Supervised fine-tuning (loss on response tokens only) and sampling.

Presets: `configs/sft.py:tiny` (default; CPU, ~1 minute), `:small` (CPU/GPU,
~20M params), `:llama7b` (Llama-2-7B shape, FSDP over a TPU pod / GPU node).
Sample from the result: `--config.pipeline=generate`.
"""
from pit import paths
from pit.config_base import base_config


def get_config(preset: str = "tiny"):
  c = base_config()
  c.pipeline = "sft"
  c.data.train_path = paths.asset_or_missing("toy_sft.jsonl")
  c.data.max_len = 64
  c.data.max_response_len = 32
  c.data.buckets = (32, 64)
  c.generate.prompts = ("reverse: hello\n", "add: 12+7\n", "upper: pit works\n", "sort: 3 1 2\n")
  c.generate.max_new_tokens = 24
  if preset == "tiny":
    c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_ff=384, max_seq_len=128)
    c.train.update(steps=300, batch_size=32, log_every=10, eval_every=100)
    c.optim.update(learning_rate=3e-3, warmup_steps=20, decay_steps=300)
    c.checkpoint.update(every=100, keep=2)
  elif preset == "small":
    c.model.update(vocab_size=384, d_model=512, num_layers=6, num_heads=8, num_kv_heads=8,
                   d_ff=1408, max_seq_len=512)
    c.train.update(steps=2000, batch_size=64, log_every=20, eval_every=500)
    c.optim.update(learning_rate=1e-3, warmup_steps=100, decay_steps=2000)
    c.checkpoint.update(every=500, keep=2)
  elif preset == "llama7b":
    c.model.update(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                   d_ff=11008, max_seq_len=4096, norm_eps=1e-5, dtype="bfloat16", remat="full",
                   scan_layers=True)
    c.data.max_len, c.data.max_response_len, c.data.buckets = 2048, 1024, (512, 1024, 2048)
    c.mesh.shape = (1, -1, 1)  # pure FSDP; e.g. (1, -1, 8) for FSDP+TP on 8-GPU hosts
    c.train.update(steps=1000, batch_size=256, accum_steps=4, log_every=10)
    c.optim.update(learning_rate=2e-5, warmup_steps=30, decay_steps=1000, weight_decay=0.0)
    c.checkpoint.update(every=200, keep=2)
  else:
    raise ValueError(f"unknown preset {preset!r} (tiny, small, llama7b)")
  return c
