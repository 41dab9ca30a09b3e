"""PIT on OpenAI's TL;DR summary comparisons (Stiennon et al., 2020), `pipeline=pit`:

    python -m pit.main --config=configs/tldr.py --workdir=runs/tldr \\
        --config.data.manual_dir=DIR

Data: the `summarize_from_feedback` TFDS builder (config `comparisons`). DIR holds the
official `comparisons/*.json` files (JSON lines; `comparisons/<file>` or `<file>`, names in
`pit.data.builders.summarize_from_feedback.COMPARISON_FILES`); without a manual_dir the
official files are downloaded (`data.download=True`, the default here; set it False to fail
fast instead). The dataset is built once into `data.data_dir` (default $TFDS_DATA_DIR or
~/tensorflow_datasets): delete `<data_dir>/summarize_from_feedback` to rebuild from other
files. Training pairs are the `train` split, held-out pairs the `validation` split ("valid1"
+ "valid2"); per the HF copy of the data 92,858 and 86,086 comparisons (not counted here).

Prompts (`pit.data.builders.summarize_prompt`): Reddit records read
"SUBREDDIT: r/<sub>\\n\\nTITLE: <title>\\n\\nPOST: <post>\\n\\nTL;DR:"; summaries are used as
stored (no space is added; the template expects the leading space of the official texts).
`load_pairs` cannot restrict to Reddit: the CNN/DM comparisons (batch0_cnndm, cnndm0,
cnndm2; ~2.3k, all in `validation`) come through as
"TITLE: <title>\\n\\nARTICLE: <article>\\n\\nTL;DR:". They follow the Reddit batches in source
order, so the first `pit.max_eval_prompts` evaluation prompts are Reddit, but the held-out
NLL / reward accuracies of the training stages include them. Leave the three cnndm files out
of DIR for Reddit-only data. Many comparisons share a post, so prompts repeat (in the
evaluation set too).

Lengths: posts are long (often 1-3 kB). Every stage keeps the *end* of a prompt that does
not fit (the `pit.data.batching` truncation policy, counted in each stage's summary): the
post's last part, "TL;DR:" and, for M_PIT / r_gap, the reference summary and the request
survive; the subreddit, title and the post's opening are cut first.

M_PIT / r_gap template (`TEMPLATE`): the reference sits where the policy's own TL;DR would,
then a new field asks for a better one: "<prompt> <reference>\\n\\nBETTER TL;DR:" + response.
Self-Refine (the baseline) asks M_P for a CRITIQUE of its TL;DR, then a REVISED TL;DR.

Presets:
  tiny (default): from-scratch byte-level models (d_model 128, 2 layers; 384-byte policy
    inputs, 512-byte M_PIT / r_gap inputs) through every stage on 2 CPU cores, sized like
    hh_rlhf's tiny (about as many training tokens): roughly 20 minutes on an idle machine,
    ~30 under load (extrapolated from a 10k-comparison stand-in; the full-data TFDS build
    adds a few minutes once). Evaluating ~86k validation pairs in every stage would take
    hours on CPU, so tiny holds out 0.5 % of the *training* pairs instead (~460 pairs; they
    share posts with training pairs, so this measures fit, not new posts); use
    `--config.pit.eval_split=validation` for the real held-out split.
  smoke: every stage, 2 steps each, 1-layer d_model-32 models, on the validation split (CI:
    tests/test_tldr_config.py runs it on a small comparisons fixture in about 80 s).
  llama7b: Llama-2-7B-shaped policy and reward models (bf16 compute, fp32 master weights,
    full remat) sharded FSDP over a TPU pod slice (mesh (1, -1, 1); on 8-GPU hosts use
    `--config.mesh.shape='(1,-1,8)'`); lengths in Llama tokens (header + post <= ~600,
    summaries <= 128). Every stage evaluates on all ~86k validation pairs. Runs from random
    init until checkpoint import lands; give a Llama tokenizer with
    `--config.tokenizer.kind=hf --config.tokenizer.path=DIR` (with the byte default these
    lengths cut posts hard).
"""
from pit.config_base import (base_config, gap_reward_defaults, improve_defaults,
                             llama7b_pit, pit_defaults, pit_smoke_stages, ppo_defaults,
                             reward_defaults, tiny_pit_stages)

TEMPLATE = "{prompt} {reference}\n\nBETTER TL;DR:"
# Self-Refine (the baseline): a critique of the TL;DR, then a revision given it.
FEEDBACK_TEMPLATE = "{prompt}{response}\n\nCRITIQUE (or \"no changes needed\"):"
REFINE_TEMPLATE = "{prompt}{response}\n\nCRITIQUE:{feedback}\n\nREVISED TL;DR:"
PRESETS = ("tiny", "smoke", "llama7b")


def get_config(preset: str = "tiny"):
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r} ({', '.join(PRESETS)})")
  c = base_config()
  c.pipeline = "pit"
  c.reward, c.gap_reward = reward_defaults(), gap_reward_defaults()
  c.ppo, c.improve = ppo_defaults(), improve_defaults()
  c.pit = pit_defaults()
  c.data.update(source="tfds", tfds_name="summarize_from_feedback", tfds_config="comparisons",
                manual_dir="", download=True,  # a manual_dir, when given, is used first
                on_error="skip")  # empty summaries are skipped, counted and reported
  c.pit.update(dataset_name="OpenAI/Summary (TL;DR)", template=TEMPLATE, train_split="train",
               eval_split="validation", rl_rounds=("data", "policy"))
  c.improve.update(template=TEMPLATE, max_iters=3, temperature=0.0,
                   feedback_template=FEEDBACK_TEMPLATE, refine_template=REFINE_TEMPLATE,
                   stop_phrase="no changes needed")
  c.ppo.update(scorer="gap_reward_model", policy_template=TEMPLATE, epochs=2, kl_coef=0.05,
               adaptive_kl=True, target_kl=4.0)
  c.checkpoint.keep = 1
  if preset in ("tiny", "smoke"):
    tiny(c, smoke=preset == "smoke")
  else:
    llama7b(c)
  return c


def tiny(c, smoke: bool):
  # Bytes: a policy reads the post's tail + "TL;DR:" and writes <= 159 bytes (most TL;DRs
  # whole; <= 384 in all); M_PIT and r_gap also read the reference summary and the request
  # (<= 512). Sampled prompts keep their last 352 bytes (512 - 160), answers <= 128 bytes.
  policy_data = dict(max_len=384, max_response_len=160, buckets=(256, 384))
  pit_data = dict(max_len=512, max_response_len=160, buckets=(384, 512))
  c.data.update(**policy_data)
  c.model.update(vocab_size=384, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 d_ff=384, max_seq_len=512)
  c.improve.update(max_new_tokens=128, batch_size=32, max_prompt_len=352, prompt_buckets=(256, 352))
  c.ppo.update(rollout_batch_size=32, max_new_tokens=128, max_prompt_len=352,
               prompt_buckets=(352,), reward_max_len=512)
  c.pit.max_eval_prompts = 64
  c.pit.max_rl_prompts = 512
  if smoke:  # the validation split (a fixture's in CI); every stage, a few steps
    c.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, d_ff=64)  # compile time
    pit_smoke_stages(c, pit_data)
    return
  c.pit.eval_split = ""        # held out from the training pairs (see the docstring)
  c.data.eval_fraction = 0.005
  tiny_pit_stages(c, pit_data, sft_steps=200, rm_steps=100)


def llama7b(c):
  # Llama tokens: header + title + post <= ~600, summaries <= 128 (the filtered TL;DRs have
  # 24-48 GPT-2 tokens); M_PIT / r_gap add the reference and the request.
  policy_data = dict(max_len=768, max_response_len=128, buckets=(256, 512, 768))
  pit_data = dict(max_len=1024, max_response_len=128, buckets=(512, 768, 1024))
  c.data.update(**policy_data)
  llama7b_pit(c, pit_data)  # model, FSDP mesh, stage steps / learning rates
  c.improve.update(max_new_tokens=128, batch_size=64, max_prompt_len=896,
                   prompt_buckets=(256, 512, 896))
  c.ppo.update(rollout_batch_size=512, max_new_tokens=128, max_prompt_len=896,
               prompt_buckets=(512, 896), reward_max_len=1024)
  c.pit.max_eval_prompts = 2000  # the first 2000 validation comparisons (Reddit; posts repeat)
