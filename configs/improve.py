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
import ml_collections

from pit.config_base import base_config


def improve_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      method="pit",                # pit | self_refine
      input_path="",               # JSONL {"prompt","response"} or AlpacaEval .json[.gz]
      initial_checkpoint_dir="",   # else: generate initial answers from this policy workdir
      split="eval",                # prompts for initial_checkpoint_dir (pit.data.sources.load_prompts)
      max_prompts=0,               # 0: all
      pit_checkpoint_dir="",       # M_PIT workdir (or its checkpoints/)
      gap_rm_dir="",               # optional gap reward model workdir (model.head='scalar')
      gap_max_len=0,               # 0: the gap model's max_seq_len
      min_gain=0.0,                # stop when r_gap(x,y_{t+1},y_t) - r_gap(x,y_t,y_t) <= min_gain
      template="plain",            # pit_format template: plain | chat | literal
      max_iters=3,
      base_checkpoint_dir="",      # self_refine model; default initial_checkpoint_dir
      feedback_template="",        # '' -> default for the template; 'judge' | 'judge_compact' | text
      refine_template="",          # '' -> default; text with {prompt} {response} {feedback}
      stop_phrase="auto",          # 'auto' -> default for the template; '' disables
      stop_score=5.0,              # judge feedback templates: stop at score >= stop_score
      max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0, seed=0, batch_size=32,
      max_prompt_len=0,            # 0: no truncation; else keep bos + the prompt's last tokens
      prompt_buckets=(),
      generator=""))               # AlpacaEval generator name; '' -> "<method>_iter<max_iters>"


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
