"""Iterative improvement at inference (`pipeline=improve`): PIT or Self-Refine.

Presets:
  synthetic (default): the synthetic sort task (data.source='synthetic', 'plain'
    PIT template, the model shape of configs/synthetic.py); the oracle score of
    the answers is reported per iteration.
  chat: HH-style conversational data ('chat' template), e.g. answers from an
    AlpacaEval file: --config.improve.input_path=outputs.json.
Give the PIT model with --config.improve.pit_checkpoint_dir=<workdir>, the answers
with improve.input_path or improve.initial_checkpoint_dir (a policy workdir), and
optionally a gap reward model (improve.gap_rm_dir) for the stopping rule.
"""

from pit.config_base import base_config, improve_defaults


def get_config(preset: str = "synthetic"):
  c = base_config()
  c.pipeline = "improve"
  c.improve = improve_defaults()
  if preset == "synthetic":
    c.data.source = "synthetic"
    c.data.max_len = 64
    c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_ff=384, max_seq_len=128)
    c.improve.update(template="plain", max_new_tokens=33, batch_size=64, max_prompts=200)
  elif preset == "chat":
    c.data.source = "jsonl"
    c.data.max_len = 512
    c.model.update(vocab_size=384, d_model=512, num_layers=6, num_heads=8, num_kv_heads=8,
                   d_ff=1408, max_seq_len=1024)
    c.improve.update(template="chat", max_new_tokens=128, batch_size=16, max_prompt_len=768)
  else:
    raise ValueError(f"unknown preset {preset!r} (synthetic, chat)")
  return c
