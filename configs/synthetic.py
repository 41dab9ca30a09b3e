"""The synthetic sort task (`pit.data.synthetic`): a ground-truth oracle scores
every response, so self-improvement methods are measured, not just run.

Presets: `sft` (default): the `sft` pipeline on the task's IFT data
(`data/synthetic/ift.jsonl`, 10k prompt -> sorted-list examples; regenerate
with `python -m pit.data.synthetic --out_dir data/synthetic --files ift,prompts_eval`),
a d_model 128, 2-layer byte-level model, a few minutes on 2 CPU cores.

Measure: `--config.pipeline=generate` samples the held-out prompts
(`data/synthetic/prompts_eval.jsonl`) into WORKDIR/generations.jsonl; then
`python -m pit.data.synthetic score --generations WORKDIR/generations.jsonl`.
"""
import os

from pit.config_base import base_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(_REPO, "data", "synthetic")


def get_config(preset: str = "sft"):
  c = base_config()
  c.data.train_path = os.path.join(DATA_DIR, "ift.jsonl")
  c.data.max_len = 64            # bos + prompt (<= 28 bytes) + response (<= 32) + eos
  c.data.max_response_len = 33   # response bytes + eos
  c.data.buckets = (64,)
  c.generate.prompts_path = os.path.join(DATA_DIR, "prompts_eval.jsonl")
  c.generate.max_new_tokens = 33
  c.generate.batch_size = 64
  c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 d_ff=384, max_seq_len=128)
  if preset == "sft":
    c.pipeline = "sft"
    c.train.update(steps=1500, batch_size=32, log_every=50, eval_every=500)
    c.optim.update(learning_rate=3e-3, warmup_steps=50, decay_steps=1500)
    c.checkpoint.update(every=500, keep=2)
  else:
    raise ValueError(f"unknown preset {preset!r} (sft)")
  return c
