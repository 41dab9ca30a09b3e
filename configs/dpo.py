"""DPO-family preference optimisation (`pipeline=dpo`).

Presets: `tiny` (default; the synthetic sort task, CPU minutes; start from an
SFT run of configs/synthetic.py:sft with
`--config.dpo.init_checkpoint=<sft workdir>`; reports the held-out preference
margin and the oracle score of greedy / sampled responses before and after),
`large` (HH-RLHF via the TFDS builder, ~350M parameters, GPU/TPU, live
reference), `onpolicy` (the synthetic task's on-policy pairs: N samples of the SFT
model per prompt, the oracle's best vs worst; `launch/synthetic_dpo.sh WORKDIR`
runs SFT -> sampling -> pairs -> this preset). Iterative DPO: point
`dpo.init_checkpoint` and `dpo.reference_checkpoint` at the previous iteration's
workdir.
"""
from pit.config_base import base_config, dpo_defaults


def get_config(preset: str = "tiny"):
  c = base_config()
  c.pipeline = "dpo"
  c.dpo = dpo_defaults()
  if preset == "tiny":
    c.data.update(source="synthetic", synthetic_train_size=4000, synthetic_eval_size=200,
                  max_len=64, max_response_len=33, buckets=(64,))
    c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_ff=384, max_seq_len=128)
    c.dpo.update(beta=0.1, oracle_eval_prompts=128)
    c.generate.update(max_new_tokens=33, seed=0)
    c.train.update(steps=200, batch_size=32, log_every=10, eval_every=100)
    c.optim.update(learning_rate=3e-4, warmup_steps=10, decay_steps=200, end_lr_ratio=1.0,
                   weight_decay=0.0)
    c.checkpoint.update(every=100, keep=2)
  elif preset == "onpolicy":
    c.data.update(source="jsonl", max_len=64, max_response_len=33, buckets=(64,))
    c.model.update(vocab_size=384, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
                   d_ff=384, max_seq_len=128)   # = configs/synthetic.py:sft
    c.dpo.update(beta=0.1, nll_coef=1.0, oracle_eval_prompts=500)
    c.generate.update(max_new_tokens=33, seed=0)
    c.train.update(steps=200, batch_size=32, log_every=10, eval_every=100)
    c.optim.update(learning_rate=1e-5, warmup_steps=10, decay_steps=200, end_lr_ratio=1.0,
                   weight_decay=0.0)
    c.checkpoint.update(every=100, keep=2)
  elif preset == "large":
    c.data.update(source="tfds", tfds_name="hh_rlhf", max_len=1024, max_response_len=256,
                  buckets=(256, 512, 1024))
    c.model.update(vocab_size=384, d_model=1024, num_layers=24, num_heads=16, num_kv_heads=16,
                   d_ff=2816, max_seq_len=1024, dtype="bfloat16", remat="full")
    c.mesh.shape = (1, -1, 1)
    c.dpo.update(beta=0.1, reference="live")
    c.train.update(steps=2000, batch_size=64, log_every=10, eval_every=500)
    c.optim.update(learning_rate=5e-7, warmup_steps=100, decay_steps=2000, end_lr_ratio=1.0,
                   weight_decay=0.0)
    c.checkpoint.update(every=500, keep=2)
  else:
    raise ValueError(f"unknown preset {preset!r} (tiny, onpolicy, large)")
  return c
