"""Defaults every config starts from (`configs/*.py` call `base_config()`)."""
from __future__ import annotations

import ml_collections

from pit.sharding import DEFAULT_AXIS_NAMES, DEFAULT_RULES


def model_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      vocab_size=384, d_model=64, num_layers=2, num_heads=4, num_kv_heads=0, head_dim=0,
      d_ff=256, max_seq_len=512, norm="rmsnorm", norm_eps=1e-6, position="rope",
      rope_theta=10000.0, rotary_fraction=1.0, mlp="swiglu", gelu_approximate=True,
      qkv_bias=False, out_bias=False, mlp_bias=False, lm_head_bias=False,
      tie_embeddings=False, parallel_residual=False, shared_parallel_norm=False, head="lm",
      dtype="float32", param_dtype="float32", remat="none", init_std=0.02))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.pipeline = "sft"
  c.progress = True
  c.model = model_defaults()
  c.mesh = ml_collections.ConfigDict(dict(
      shape=(1, -1, 1), axis_names=DEFAULT_AXIS_NAMES,
      rules=tuple((k, v) for k, v in DEFAULT_RULES)))
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=-1, process_id=-1))
  c.tokenizer = ml_collections.ConfigDict(dict(kind="byte", path=""))  # pit.data.tokenizer
  c.data = ml_collections.ConfigDict(dict(
      train_path="", eval_path="", prompt_format="{prompt}", max_len=256,
      max_response_len=128, buckets=(), on_error="raise", eval_fraction=0.05, seed=0,
      # where records come from (pit.data.sources): 'jsonl' | 'tfds' | 'synthetic'
      source="jsonl", tfds_name="", tfds_config="", data_dir="", manual_dir="",
      synthetic_train_size=2000, synthetic_eval_size=200))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=3e-4, warmup_steps=20, decay_steps=1000, end_lr_ratio=0.1,
      grad_clip_norm=1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, accum_steps=1, log_every=10, eval_every=0, seed=0))
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True))
  c.generate = ml_collections.ConfigDict(dict(
      checkpoint_dir="", prompts=(), prompts_path="", max_new_tokens=64, temperature=0.0,
      top_k=0, top_p=1.0, seed=0, batch_size=32, output="generations.jsonl"))
  return c
