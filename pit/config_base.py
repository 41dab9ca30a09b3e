"""Defaults every config starts from (`configs/*.py` call `base_config()`)."""
from __future__ import annotations

import ml_collections

from pit.sharding import DEFAULT_AXIS_NAMES, DEFAULT_RULES


def model_defaults() -> ml_collections.ConfigDict:
  """The `model` section: a small byte-vocabulary decoder (the fields of
  `pit.model.ModelConfig`)."""
  return ml_collections.ConfigDict(dict(
      vocab_size=384, d_model=64, num_layers=2, num_heads=4, num_kv_heads=0, head_dim=0,
      d_ff=256, max_seq_len=512, norm="rmsnorm", norm_eps=1e-6, position="rope",
      rope_theta=10000.0, rotary_fraction=1.0, rope_scaling="none", rope_scaling_factor=1.0,
      rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=8192,
      qk_norm=False, embed_scale=False, attn_scale=0.0, attn_softcap=0.0, final_softcap=0.0,
      sliding_window=0, sliding_window_pattern=1, post_norms=False, family="",
      mlp="swiglu", gelu_approximate=True,
      qkv_bias=False, out_bias=False, mlp_bias=False, lm_head_bias=False,
      tie_embeddings=False, parallel_residual=False, shared_parallel_norm=False, head="lm",
      dtype="float32", param_dtype="float32", remat="none", init_std=0.02,
      # how it runs: attention 'plain' | 'dot_product' (jax.nn.dot_product_attention);
      # scan_layers: the blocks stacked and applied by lax.scan (compile time flat in depth)
      attention="plain", scan_layers=False,
      # where the weights start: '' (random) | hf:DIR | gguf:FILE | checkpoint:DIR
      # (pit.pretrained); the shape, tokenizer and chat template then come from there
      init_from=""))


def base_config() -> ml_collections.ConfigDict:
  """The root config every preset starts from: pipeline, model, mesh, distributed,
  tokenizer, data, optim, train, checkpoint, eval and generate sections. Method sections
  (`ppo`, `reward`, `dpo`, `pit`, ...) are added by the presets that need them."""
  c = ml_collections.ConfigDict()
  c.pipeline = "sft"
  c.progress = True
  c.rerun_from = ""   # multi-stage pipelines (pit): rerun this stage and every later one
  c.model = model_defaults()
  c.mesh = ml_collections.ConfigDict(dict(
      shape=(1, -1, 1), axis_names=DEFAULT_AXIS_NAMES,
      rules=tuple((k, v) for k, v in DEFAULT_RULES)))
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=-1, process_id=-1))
  # pit.data.tokenizer; chat_template: HF / GGUF tokenizers render prompts through theirs
  c.tokenizer = ml_collections.ConfigDict(dict(kind="byte", path="", chat_template=True))
  c.data = ml_collections.ConfigDict(dict(
      train_path="", eval_path="", prompt_format="{prompt}", max_len=256,
      max_response_len=128, buckets=(), on_error="raise", eval_fraction=0.05, seed=0,
      group_by_length=False,         # training batches of one length bucket (pit.data.batching)
      # where records come from (pit.data.sources): 'jsonl' | 'tfds' | 'synthetic'
      source="jsonl", tfds_name="", tfds_config="", data_dir="", manual_dir="",
      synthetic_train_size=2000, synthetic_eval_size=200,
      synthetic_task="sort",         # pit.data.synthetic.TASKS: 'sort' | 'sort_long'
      download=False))              # tfds: fetch the official files when no manual_dir has them
  # decay_steps: the cosine's length; 0 = the run's train.steps (stage_overrides' sections)
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=3e-4, warmup_steps=20, decay_steps=1000, end_lr_ratio=0.1,
      grad_clip_norm=1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, accum_steps=1, log_every=10, eval_every=0, seed=0,
      init_checkpoint="",  # sft: start from this LM workdir / checkpoints dir (params only)
      # LoRA (pit.lora): rank 0 = full fine-tuning; else only these adapters (and a scalar
      # head) train, the optimizer state and checkpoints hold only them, merged at the end
      lora=ml_collections.ConfigDict(dict(
          rank=0, alpha=16.0, dropout=0.0,
          targets=("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")))))
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True))
  c.eval = eval_defaults()
  c.generate = ml_collections.ConfigDict(dict(
      checkpoint_dir="", prompts=(), prompts_path="", max_new_tokens=64, temperature=0.0,
      top_k=0, top_p=1.0, seed=0, batch_size=32, output="generations.jsonl",
      num_samples=1))              # responses per prompt (rows carry "sample" 0..n-1)
  return c


def eval_defaults() -> ml_collections.ConfigDict:
  """Evaluation declared in config (`pit.eval.evaluator`): every system is decoded at each of
  `temperatures`; each comparison (a, b) is judged at every decoding by every judge, never
  across decodings. Systems of `pipeline=pit`: original (M_P), pit, pit_no_stop, pit_sft,
  self_refine, y_w (the held-out chosen responses)."""
  return ml_collections.ConfigDict(dict(
      temperatures=(0.0, 1.0),
      comparisons=(("original", "y_w"), ("pit", "original"), ("self_refine", "original"),
                   ("pit", "self_refine"), ("pit_sft", "original"), ("pit", "pit_sft"),
                   ("pit", "pit_no_stop")),
      judges=("oracle", "reward_model", "llm_judge"),  # those a run has (oracle: synthetic data)
      confidence=0.95, bootstrap=10000, seed=0))


def ppo_defaults() -> ml_collections.ConfigDict:
  """The `ppo` section (`pipeline=ppo` and PIT's RL rounds): scorer, rollout,
  PPO / GAE and KL-penalty settings; lengths in tokens."""
  return ml_collections.ConfigDict(dict(
      init_checkpoint_dir="",      # SFT workdir or its checkpoints/ (params only)
      scorer="oracle",             # oracle | reward_model | gap_reward_model (needs references)
      reward_model_dir="",         # workdir with config_*.json (model.head='scalar') + checkpoints/
      reward_format="{prompt}{response}",  # {prompt} {response} [{reference}]
      reward_max_len=0,            # 0 -> the data.max_len the reward model was trained with
      rollout_batch_size=64, max_new_tokens=32, temperature=1.0,
      max_prompt_len=64, prompt_buckets=(),
      epochs=2, gamma=1.0, lam=0.95, clip_ratio=0.2, value_clip=0.2, vf_coef=0.1, ent_coef=0.0,
      whiten_advantages=True,
      score_norm="initial",        # initial: scores scaled to mean 0, std 1 on the first rollout | none
      kl_estimator="k1",           # k1 (log-ratio) | k3 ((r-1) - log r)
      kl_coef=0.1, adaptive_kl=True, target_kl=2.0, kl_horizon=10000.0,
      reference_checkpoint_dir="",  # KL reference; '' -> the init policy
      policy_template="",           # pit_format template: PIT's M_PIT(y | x, y_ref) as the policy
      value_init="policy"))        # policy (SFT trunk + fresh head) | random


def gap_reward_defaults() -> ml_collections.ConfigDict:
  """The `gap_reward` section: PIT's gap reward model r_gap(x, y, y_ref) (template
  and loss coefficients; `pit.losses`)."""
  return ml_collections.ConfigDict(dict(
      template="plain",   # pit.pit_format template: plain | chat | a literal template
      tie_coef=0.1,       # weight of (r_ww - r_ll)^2
      center_coef=0.01,   # weight of (r_ww^2 + r_ll^2) / 2
      init_checkpoint=""))  # LM workdir / checkpoints dir to take the trunk from ('' -> random)


def improve_defaults() -> ml_collections.ConfigDict:
  """The `improve` section (`pipeline=improve`): PIT iterative improvement or
  Self-Refine, its inputs, stopping rule and decoding settings."""
  return ml_collections.ConfigDict(dict(
      method="pit",                # pit | self_refine
      input_path="",               # JSONL {"prompt","response"} or AlpacaEval .json[.gz]
      initial_checkpoint_dir="",   # else: generate initial answers from this policy workdir
      split="eval",                # prompts for initial_checkpoint_dir (pit.data.sources.load_prompts)
      max_prompts=0,               # 0: all
      pit_checkpoint_dir="",       # M_PIT workdir (or its checkpoints/)
      gap_rm_dir="",               # optional gap reward model workdir (model.head='scalar')
      gap_max_len=0,               # 0: the data.max_len the gap model was trained with
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


def reward_defaults() -> ml_collections.ConfigDict:
  """The `reward` section: Bradley-Terry reward model loss settings (margin, reward
  centring) and the trunk to start from."""
  return ml_collections.ConfigDict(dict(
      margin_scale=0.0,       # loss -log sigmoid(r_w - r_l - margin_scale * margin)
      center_coef=0.0,        # + center_coef * (r_w + r_l)^2
      init_checkpoint="",     # LM workdir / checkpoints dir to take the trunk from
      init_reward_model=""))  # or a reward-model workdir to continue (head included)


def dpo_defaults() -> ml_collections.ConfigDict:
  """The `dpo` section (`pipeline=dpo`): loss variant, beta, label smoothing, NLL
  term, init / reference checkpoints and how reference log-probs are obtained."""
  return ml_collections.ConfigDict(dict(
      loss="sigmoid",            # sigmoid (cDPO with label_smoothing > 0) | ipo | hinge | robust
      beta=0.1,
      label_smoothing=0.0,       # sigmoid: cDPO eps; robust: label-flip rate; in [0, 0.5)
      nll_coef=0.0,              # + nll_coef * per-token NLL of the chosen response (RPO)
      init_checkpoint="",        # SFT workdir or checkpoints dir (params only); '' -> random
      reference_checkpoint="",   # '' -> the init model
      reference="precompute",    # precompute (log-probs once at start) | live (frozen model)
      oracle_eval_prompts=0))    # > 0: oracle score of responses to that many held-out prompts


def stage_overrides(*, steps: int, batch_size: int, learning_rate: float, warmup_steps: int = 0,
                    eval_every: int = 0, checkpoint_every: int = 0, weight_decay: float = 0.1,
                    end_lr_ratio: float = 0.1, log_every: int = 10, **sections) -> ml_collections.ConfigDict:
  """A `pit.<stage>` override section: train/optim/checkpoint settings plus any other
  root sections given as dicts (e.g. model=dict(head='scalar'), data=dict(max_len=128)). The
  learning rate decays over the stage's train.steps (optim.decay_steps = 0), whatever they are
  set to later (`--config.<method>.<stage>.train.steps=N` moves the schedule too)."""
  c = ml_collections.ConfigDict()
  c.train = ml_collections.ConfigDict(dict(steps=steps, batch_size=batch_size, eval_every=eval_every,
                                            log_every=log_every))
  c.optim = ml_collections.ConfigDict(dict(learning_rate=learning_rate, warmup_steps=warmup_steps,
                                           decay_steps=0, weight_decay=weight_decay,
                                           end_lr_ratio=end_lr_ratio))
  c.checkpoint = ml_collections.ConfigDict(dict(every=checkpoint_every or steps))
  for name, values in sections.items():
    c[name] = ml_collections.ConfigDict(values)
  return c


def pit_defaults() -> ml_collections.ConfigDict:
  """`pipeline=pit` (pit/pipelines/pit.py). The stage sections (`policy_sft`, `pit_sft`,
  `reward`, `gap_reward`, `rl`, `inference`) are merged over the root config for that
  stage; presets fill them with `stage_overrides`."""
  return ml_collections.ConfigDict(dict(
      dataset_name="",              # shown in the report
      template="plain",             # pit_format template of M_PIT and r_gap: plain | chat | literal
      train_split="train",          # data split of the training pairs
      eval_split="eval",            # held-out pairs; '' -> data.eval_fraction of the training pairs
      max_eval_prompts=200,         # held-out prompts evaluated (0: all)
      rl_rounds=("data", "policy"),  # y_ref per RL round: data ({y_l, y_w}) | policy (M_P's samples)
      reference_temperature=1.0,    # sampling temperature of M_P's references for 'policy' rounds
      max_rl_prompts=0,             # RL prompts taken from the training pairs (0: all)
      reward_init_from_policies=True,  # RM trunk from M_P, gap RM trunk from M_PIT^SFT
      pit_sft_init_from_policy=False,  # M_PIT^SFT starts from M_P (our stand-in for a pretrained LM)
      llm_judge_dir="",             # HF directory of an LLM judge for the evaluation ('' -> none)
      require_pretrained=False,     # refuse to run without model.init_from (the 8B presets)
  ))


SCALAR = dict(head="scalar")   # the reward stages' model override


def pit_smoke_stages(c, pit_data: dict):
  """The `smoke` presets of the PIT configs: every stage, a few steps each (CI)."""
  c.pit.max_rl_prompts = 16
  c.pit.max_eval_prompts = 4
  c.improve.update(max_iters=2, max_new_tokens=8, batch_size=4)
  c.ppo.update(rollout_batch_size=4, max_new_tokens=8)
  steps = dict(steps=2, batch_size=4, learning_rate=1e-3, log_every=1)
  c.pit.policy_sft = stage_overrides(**steps)
  c.pit.pit_sft = stage_overrides(**steps, data=pit_data)
  c.pit.reward = stage_overrides(**steps, model=SCALAR)
  c.pit.gap_reward = stage_overrides(**steps, model=SCALAR, data=pit_data)
  c.pit.rl = stage_overrides(steps=2, batch_size=4, learning_rate=1e-4, log_every=1,
                             end_lr_ratio=1.0, weight_decay=0.0)


def tiny_pit_stages(c, pit_data: dict, *, sft_steps: int, rm_steps: int):
  """The `tiny` presets of the PIT configs (byte models from scratch on CPU): both SFT
  stages `sft_steps`, both reward stages `rm_steps`, evaluated and checkpointed every
  `rm_steps`; two short RL rounds."""
  c.pit.policy_sft = stage_overrides(steps=sft_steps, batch_size=16, learning_rate=3e-3,
                                     warmup_steps=20, eval_every=rm_steps,
                                     checkpoint_every=rm_steps, log_every=10)
  c.pit.pit_sft = stage_overrides(steps=sft_steps, batch_size=16, learning_rate=3e-3,
                                  warmup_steps=20, eval_every=rm_steps, checkpoint_every=rm_steps,
                                  log_every=10, data=pit_data)
  c.pit.reward = stage_overrides(steps=rm_steps, batch_size=16, learning_rate=1e-3, warmup_steps=10,
                                 eval_every=rm_steps, weight_decay=0.0, log_every=10, model=SCALAR)
  c.pit.gap_reward = stage_overrides(steps=rm_steps, batch_size=8, learning_rate=1e-3,
                                     warmup_steps=10, eval_every=rm_steps, weight_decay=0.0,
                                     log_every=10, model=SCALAR, data=pit_data)
  # 32 rollouts / 16 per minibatch x 2 epochs = 4 updates per rollout; 6 rollouts a round.
  c.pit.rl = stage_overrides(steps=24, batch_size=16, learning_rate=5e-5, checkpoint_every=12,
                             end_lr_ratio=1.0, weight_decay=0.0, log_every=4)


def llama7b_pit(c, pit_data: dict):
  """Llama-2-7B-shaped policy and reward models (bf16 compute, fp32 master weights, full
  remat), FSDP over every chip of a pod slice, and the PIT stages' steps / learning rates;
  the caller sets the lengths (data, improve, ppo)."""
  c.model.update(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                 d_ff=11008, max_seq_len=4096, norm_eps=1e-5, dtype="bfloat16",
                 param_dtype="float32", remat="full", scan_layers=True)
  c.mesh.shape = (1, -1, 1)
  c.train.accum_steps = 4
  c.pit.policy_sft = stage_overrides(steps=2000, batch_size=128, learning_rate=2e-5,
                                     warmup_steps=50, eval_every=500, checkpoint_every=250,
                                     weight_decay=0.0)
  c.pit.pit_sft = stage_overrides(steps=2000, batch_size=128, learning_rate=2e-5, warmup_steps=50,
                                  eval_every=500, checkpoint_every=250, weight_decay=0.0,
                                  data=pit_data)
  c.pit.reward = stage_overrides(steps=1000, batch_size=128, learning_rate=9e-6, warmup_steps=50,
                                 eval_every=250, checkpoint_every=250, weight_decay=0.0,
                                 model=SCALAR)
  c.pit.gap_reward = stage_overrides(steps=1000, batch_size=64, learning_rate=9e-6, warmup_steps=50,
                                     eval_every=250, checkpoint_every=250, weight_decay=0.0,
                                     model=SCALAR, data=pit_data)
  # 512 rollouts / 128 per minibatch x 2 epochs = 8 updates per rollout.
  c.pit.rl = stage_overrides(steps=800, batch_size=128, learning_rate=1e-6, checkpoint_every=80,
                             end_lr_ratio=1.0, weight_decay=0.0)


def self_rewarding_defaults() -> ml_collections.ConfigDict:
  """`pipeline=self_rewarding` (pit/pipelines/self_rewarding.py): Self-Rewarding LMs (Yuan et
  al. 2024) with the teacher variants. Decoding defaults are the paper's (prompts T=0.6, top-p
  0.9; candidates N=4, T=0.7, top-p 0.9; 3 judgements per candidate). `sft` and `dpo` are
  override sections merged over the root config for M1 / the SFT baseline and for every DPO
  iteration; presets fill them with `stage_overrides`."""
  return ml_collections.ConfigDict(dict(
      dataset_name="",
      iterations=2,                 # DPO iterations: M2, M3, ...
      train_split="train", eval_split="",   # preference-pair / OASST1 sources ('' -> a fraction)
      # seed data
      max_ift=0,                    # IFT rows (0: all)
      eft_source="auto",            # auto (oracle on the synthetic task, else model) | oracle | model | none
      eft_judge="base",             # who writes model EFT judgements: base (M0) | sft_baseline (the paper)
      eft_samples=1, eft_temperature=0.0,   # judgements per EFT candidate (first readable kept)
      eft_balance=True,             # down-sample the over-represented score
      max_eft_groups=0, max_eft_rows=0,     # ranked groups judged / oracle EFT rows (0: all / train size)
      judge_prompt="full",          # full (the paper's prompt) | compact (short-context models)
      worked_judgements=False,      # oracle EFT judgements work the check out number by number
                                    # before the criteria (synthetic.worked_check)
      ict_rows=0,                   # instruction-creation SFT rows (models trained from scratch)
      sft_baseline=False,           # also train SFT on IFT only (a comparison system)
      # self-instruction creation
      prompt_source="self",         # self (M_i writes them) | seed (the IFT prompts, no creation)
      prompt_attempts=2000, new_prompts=1000, shots=8, fewshot_layout="tags",
      prompt_temperature=0.6, prompt_top_p=0.9, prompt_max_new_tokens=128,
      min_prompt_chars=8, max_prompt_chars=2000,
      # candidates and judging
      num_candidates=4, candidate_temperature=0.7, candidate_top_p=0.9, max_new_tokens=256,
      judge_samples=3, judge_temperature=0.7, judge_top_p=0.9, judge_max_new_tokens=256,
      variant="self",               # self | teacher_reward | teacher_demo
      teacher="",                   # hf:DIR | gguf:FILE | checkpoint:DIR | a PIT workdir
      teacher_temperature=0.0,      # teacher demonstrations: greedy by default
      dpo_epochs=0.0,               # DPO length in epochs of the iteration's pairs (at most the
                                    # dpo section's steps; 0: those steps whatever the pairs)
      min_pairs=1,                  # fewer training pairs: no DPO, M_{i+1} = M_i (reported)
      dpo_eval_fraction=0.05,       # AIFT pairs held out for the DPO's held-out margin
      # evaluation
      eval_prompts=200, judge_eval_groups=200, judge_eval_candidates=4, eval_top_p=1.0,
      comparisons=(),               # () -> each M_i vs M_{i-1}, last vs M1, vs the SFT baseline
      reward_model_dir="",          # evaluation judge: a PIT reward-model workdir
      llm_judge="",                 # evaluation judge (A or B?): hf:DIR | gguf:FILE | a PIT workdir
      alpaca_eval_path="",          # an AlpacaEval outputs file: its instructions are answered
      alpaca_eval_max=0, alpaca_max_new_tokens=512,
      # generation batching (every stage), and the resumable chunk (items per saved part)
      generation=ml_collections.ConfigDict(dict(batch_size=32, max_prompt_len=0,
                                                prompt_buckets=(), seed=0)),
      chunk=256,
      sft=ml_collections.ConfigDict(), dpo=ml_collections.ConfigDict(),
  ))


def ser_defaults() -> ml_collections.ConfigDict:
  """`pipeline=ser` (pit/pipelines/ser.py): Self-Evolved Reward Learning
  (`../shared/seeds/003`). Thresholds are the released code's (tau_high 0.55, tau_low 0.45,
  delta 0.3). `policy_sft`, `seed_rm`, `full_rm`, `loop`, `ppo` are override sections merged
  over the root config for those stages; presets fill them with `stage_overrides`."""
  return ml_collections.ConfigDict(dict(
      dataset_name="",
      train_split="train", eval_split="",   # '' -> data.eval_fraction of the training pairs
      max_pairs=0,                  # training pairs used (0: all)
      sft_fraction=0.3,             # the SFT share of the paper's split (SFT:RM:PPO =
                                    # 0.3:0.65:0.05), whole prompts: its chosen answers train
                                    # the policy (every RM's trunk), no RM trains on its pairs
                                    # (0: the policy learns the seed training pairs' answers)
      seed_fraction=0.15,           # share of the RM training pairs whose labels are used
      seed_val_fraction=0.2,        # of the seed pairs: the validation set the driver decides on
      label_noise=0.0,              # annotators' error rate: each training pair's label (SFT,
                                    # seed, validation, full-label) swapped with this
                                    # probability; held-out test pairs keep the data's labels
      unlabelled_source="pairs",    # pairs (the rest, labels hidden) | policy (2 samples / prompt)
      pool_samples=2, pool_temperature=1.0, pool_top_p=1.0, max_pool_prompts=0,
      tau_high=0.55, tau_low=0.45,  # status 1: one p > tau_high, the other < tau_low
      delta=0.3,                    # status 2: |p_a - p_b| > delta
      min_gain=0.005,               # status 1 -> 2 when validation accuracy rose by less, or
      switch_z=1.0,                 # by no more than switch_z standard errors (paired)
      max_loops=6,
      max_kept_per_loop=0,          # keep at most this many passing pairs a loop, the most
                                    # confident (largest |p_a - p_b|) first (0: all)
      rm_epochs=2.0,                # every RM trains ceil(epochs * rows / batch) steps (the
                                    # paper's 2 epochs), at most its section's train.steps
      retrain="continue",           # a loop's RM: continue (the current RM goes on with the
                                    # loop's kept pairs + the seed pairs) | fresh (a new RM,
                                    # started as the seed RM, on the seed pairs + every pair
                                    # kept so far, this loop's and the earlier loops')
      margin=1.0,                   # m of -log sigmoid(r_w - r_l - m)
      center_coef=0.01,             # + c (r_w + r_l)^2: rewards near 0, so p = sigmoid(r) means
                                    # the same in every loop (the thresholds are absolute)
      reward_init_from_policy=True,  # RMs' trunk from the SFT policy
      final_rm="best_val",          # best_val (validation on the seed labels) | last
      require_pretrained=False,     # refuse to run without model.init_from (the hf preset)
      max_rl_prompts=0,             # PPO prompts (0: every training prompt)
      max_eval_prompts=200,
      max_new_tokens=64, eval_top_p=1.0, chunk=256,
      generation=ml_collections.ConfigDict(dict(batch_size=64, max_prompt_len=0,
                                                prompt_buckets=())),
  ))
