"""PIT on Anthropic HH-RLHF (`pipeline=pit`), the project's main job:

    python -m pit.main --config=configs/hh_rlhf.py --workdir=runs/hh

Data: the `hh_rlhf` TFDS builder (config `harmless-base` by default). When the
shared copy `../shared/data/hh-rlhf` (the first 1800 test pairs) sits beside the
repo it is the manual_dir and its `test` split is held out 95/5 for training and
evaluation; otherwise the official train/test files are downloaded. Any other
copy: `--config.data.manual_dir=DIR` (files `harmless-base-test*.jsonl.gz` or
`harmless-base/{train,test}.jsonl.gz`).

Presets:
  tiny (default): from-scratch byte-level models (d_model 128, 2 layers) through every
    stage on 2 CPU cores in about 20 minutes; the models are far too small for good
    dialogue, the point is a complete, measured run and its report.
  smoke: every stage, a few steps each (CI).
  llama7b: Llama-2-7B-shaped policy and reward models (bf16 compute, fp32 master weights,
    full remat) sharded FSDP over a TPU pod slice (mesh (1, -1, 1); on 8-GPU hosts use
    `--config.mesh.shape='(1,-1,8)'` for FSDP+TP). Runs from random init until checkpoint
    import lands; give a Llama tokenizer with `--config.tokenizer.kind=hf
    --config.tokenizer.path=DIR` (the byte tokenizer is the default so the preset runs
    anywhere).
"""
from pit import paths
from pit.config_base import (base_config, gap_reward_defaults, improve_defaults,
                             llama7b_pit, pit_defaults, pit_smoke_stages, ppo_defaults,
                             reward_defaults, tiny_pit_stages)



def get_config(preset: str = "tiny"):
  if preset not in ("tiny", "smoke", "llama7b"):
    raise ValueError(f"unknown preset {preset!r} (tiny, smoke, llama7b)")
  c = base_config()
  c.pipeline = "pit"
  c.reward, c.gap_reward = reward_defaults(), gap_reward_defaults()
  c.ppo, c.improve = ppo_defaults(), improve_defaults()
  c.pit = pit_defaults()
  shared_hh = paths.shared_dir("data", "hh-rlhf")
  shared = shared_hh is not None
  c.data.update(source="tfds", tfds_name="hh_rlhf", tfds_config="harmless-base",
                manual_dir=shared_hh or "", download=not shared, eval_fraction=0.05,
                on_error="skip")  # HH has a few empty replies: skipped, counted, reported
  c.pit.update(dataset_name="Anthropic/HH-RLHF (harmless-base)", template="chat",
               train_split="test" if shared else "train", eval_split="" if shared else "test",
               rl_rounds=("data", "policy"))
  c.improve.update(template="chat", max_iters=3, temperature=0.0)
  c.ppo.update(scorer="gap_reward_model", policy_template="chat", epochs=2, kl_coef=0.05,
               adaptive_kl=True, target_kl=4.0)
  c.checkpoint.keep = 1
  if preset in ("tiny", "smoke"):
    tiny(c, smoke=preset == "smoke")
  else:
    llama7b(c)
  return c


def tiny(c, smoke: bool):
  # Bytes: a policy sees the end of the dialogue (<= 256 bytes with its response); M_PIT and
  # r_gap also read a reference reply and the request for a better one (<= 384 bytes).
  policy_data = dict(max_len=256, max_response_len=96, buckets=(128, 256))
  pit_data = dict(max_len=384, max_response_len=96, buckets=(256, 384))
  c.data.update(**policy_data)
  c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 d_ff=384, max_seq_len=512)
  c.improve.update(max_new_tokens=64, batch_size=32, max_prompt_len=320, prompt_buckets=(128, 320))
  c.ppo.update(rollout_batch_size=32, max_new_tokens=64, max_prompt_len=320,
               prompt_buckets=(320,), reward_max_len=384)
  c.pit.max_eval_prompts = 64
  c.pit.max_rl_prompts = 512
  if smoke:
    c.data.eval_fraction = 0.02
    c.model.update(d_model=32, num_heads=2, num_kv_heads=1, d_ff=64)
    pit_smoke_stages(c, pit_data)
    return
  tiny_pit_stages(c, pit_data, sft_steps=300, rm_steps=150)


def llama7b(c):
  policy_data = dict(max_len=1024, max_response_len=256, buckets=(256, 512, 1024))
  pit_data = dict(max_len=2048, max_response_len=256, buckets=(512, 1024, 2048))
  c.data.update(**policy_data)
  llama7b_pit(c, pit_data)  # model, FSDP mesh, stage steps / learning rates
  c.improve.update(max_new_tokens=256, batch_size=64, max_prompt_len=1792,
                   prompt_buckets=(512, 1024, 1792))
  c.ppo.update(rollout_batch_size=512, max_new_tokens=256, max_prompt_len=1792,
               prompt_buckets=(512, 1024, 1792), reward_max_len=2048)
  c.pit.max_eval_prompts = 0
