"""`pipeline=ser`: Self-Evolved Reward Learning (SER, `../shared/seeds/003`), then PPO.

A seed reward model learns from a small share of the labelled preference pairs; it labels the
rest itself, keeps the pairs it is confident about under its current learning status, and is
retrained on them (with the seed pairs, pairwise loss with a margin) until no new pair passes;
the evolved RM then drives PPO. Stages (each a `pit.stages` stage in WORKDIR/<stage>/, skipped
once done, resumed from its own checkpoints):

  data        the labelled pairs split into the SFT split and the RM data. The SFT split
              (`ser.sft_fraction`, the SFT share of the paper's SFT:RM:PPO = 0.3:0.65:0.05;
              whole prompts, `sft_split`): its chosen answers are the policy's SFT rows and no
              RM trains on its pairs, though every RM starts from that policy with
              `reward_init_from_policy` (with 0 the policy learns the seed training pairs'
              chosen answers instead). The RM data: the seed share (`ser.seed_fraction`,
              default 15 %) -- of which `seed_val_fraction` is the validation set the driver
              decides on --, the unlabelled rest (answers in random a/b order; the hidden label
              kept apart in unlabelled_truth.jsonl, read only to report how right the
              self-labels are). Also the held-out test pairs (reported, never decided on) and
              the evaluation prompts. `ser.label_noise` > 0: every training label (SFT answers,
              seed, validation, full-label) is an annotator's, wrong with that probability
              (`annotator_labels`); the test pairs and the pool's hidden labels stay the data's
  policy_sft  the SFT policy (PPO's start and KL reference; the RMs' trunk with
              `reward_init_from_policy`)
  pool        the unlabelled pairs: the data's (`unlabelled_source='pairs'`) or two answers per
              prompt sampled from the SFT policy ('policy'; hidden label: the oracle's, on the
              synthetic task)
  seed_rm     the seed RM on the seed pairs
  full_rm     the baseline on 100 % of the RM data's labels (every RM training pair)
  loop_<k>    one SER loop (`ser.max_loops` stages; see `select_pairs` / `next_status`):
              the current RM scores both answers of every pair still in the pool, p = sigmoid(r);
              status 1 keeps pairs with one p > tau_high and the other < tau_low, status 2 pairs
              with |p_a - p_b| > delta; label: the higher p wins; the kept pairs leave the pool;
              the RM continues training on them plus the seed pairs (margin loss; with
              `ser.retrain='fresh'` a new RM, started as the seed RM was, trains on the seed
              pairs and every pair kept so far instead). A loop whose status finds nothing
              (status 1 finds nothing -> it tries status 2 at once) or whose pool is empty stops
              the run's loops: it and every later loop train nothing
  ppo         PPO of the SFT policy against the final RM (the seed or loop RM with the best
              validation accuracy on the seed labels, `final_rm='best_val'`; or the last)
  evaluate    held-out accuracy ± s.e. of the seed RM, every loop, the final RM and the full-
              label RM; PPO vs SFT head to head at matched decoding with intervals (oracle on the
              synthetic task, else the full-label RM as the judge); WORKDIR/report.md with plots

The driver's switching rule (`next_status`): start in status 1; after a status-1 loop whose
validation accuracy (seed labels) rose by less than `ser.min_gain`, switch to status 2; a
status-1 loop that keeps no pair switches to status 2 within the loop; stop when status 2 keeps
no pair, the pool is empty, or `max_loops` loops have run.

Loss (`pit.losses.reward_loss` with every pair's margin 1 and `reward.margin_scale = ser.margin`):
-log sigmoid(r_w - r_l - m), the pairwise loss with a margin m of SER's step 3.
"""
from __future__ import annotations

import json
import logging
import math
import os

import jax
import ml_collections
import numpy as np

from pit import generation, jsonio, resumable, stages
from pit.data import records
from pit.data.pairs import PreferencePair, read_pairs_jsonl, write_pairs_jsonl
from pit.eval import alpaca_eval, evaluator, report
from pit.eval import judges as judges_lib
from pit.pipelines import common
from pit.pipelines import ppo as ppo_pipeline
from pit.pipelines import reward as reward_pipeline
from pit.pipelines import sft as sft_pipeline
from pit.rl import scorers

DATA, POLICY, POOL, SEED_RM, FULL_RM, PPO, EVAL = (
    "data", "policy_sft", "pool", "seed_rm", "full_rm", "ppo", "evaluate")
UNLABELLED_SOURCES = ("pairs", "policy")
FINAL_RM = ("best_val", "last")
RETRAIN = ("continue", "fresh")   # ser.retrain: how a loop's RM starts (loop_stage)
SYSTEMS = ("policy_sft", "ppo")
DISPLAY = {"policy_sft": "SFT policy", "ppo": "PPO (evolved RM)"}


def loop_name(k: int) -> str:
  """The stage of SER loop k (1-based): loop_1, loop_2, ..."""
  return f"loop_{k}"


def derive(config, pipeline: str, section: str | None, keep=()) -> ml_collections.ConfigDict:
  """A stage's config: the root config with `ser.<section>` merged in and `ser` reduced to
  the fields in `keep` (`pit.stages.derive`)."""
  return stages.derive(config, pipeline, section, method="ser", keep=keep)


def _check(config):
  s = config.ser
  if s.unlabelled_source not in UNLABELLED_SOURCES:
    raise ValueError(f"ser.unlabelled_source: {s.unlabelled_source!r} not in "
                     f"{UNLABELLED_SOURCES}")
  if s.final_rm not in FINAL_RM:
    raise ValueError(f"ser.final_rm: {s.final_rm!r} not in {FINAL_RM}")
  if s.retrain not in RETRAIN:
    raise ValueError(f"ser.retrain: {s.retrain!r} not in {RETRAIN}")
  for field in ("seed_fraction", "seed_val_fraction"):
    if not 0.0 < float(s[field]) < 1.0:
      raise ValueError(f"ser.{field} must be in (0, 1), got {s[field]}")
  if not 0.0 <= float(s.sft_fraction) < 1.0:
    raise ValueError(f"ser.sft_fraction must be in [0, 1), got {s.sft_fraction}")
  if not 0.0 < float(s.tau_low) <= float(s.tau_high) < 1.0:
    raise ValueError(f"ser.tau_low={s.tau_low} / ser.tau_high={s.tau_high}: need "
                     "0 < tau_low <= tau_high < 1 (p = sigmoid(r) is never 0 or 1)")
  if not 0.0 <= float(s.label_noise) < 0.5:
    raise ValueError(f"ser.label_noise must be in [0, 0.5), got {s.label_noise}")
  if not 0.0 <= float(s.delta) < 1.0:
    raise ValueError(f"ser.delta must be in [0, 1), got {s.delta}")
  for field, low in (("max_loops", 1), ("max_kept_per_loop", 0), ("max_pairs", 0),
                     ("max_rl_prompts", 0), ("max_eval_prompts", 0), ("max_pool_prompts", 0),
                     ("chunk", 1)):
    if int(s[field]) < low:
      raise ValueError(f"ser.{field} must be >= {low}, got {s[field]}")
  for field in ("rm_epochs",):
    if not float(s[field]) > 0:
      raise ValueError(f"ser.{field} must be > 0, got {s[field]}")
  for field in ("margin", "min_gain", "switch_z", "center_coef"):
    if not float(s[field]) >= 0:
      raise ValueError(f"ser.{field} must be >= 0, got {s[field]}")
  if config.model.head != "lm":
    raise ValueError(f"ser: model.head={config.model.head!r}, but the root model is the "
                     "policy's ('lm'); the reward stages set 'scalar' in ser.seed_rm / "
                     "ser.full_rm / ser.loop")
  if s.require_pretrained and not config.model.get("init_from", ""):
    raise ValueError("ser: this preset starts from a pretrained model: give "
                     "--config.model.init_from=hf:DIR (or gguf:FILE / checkpoint:DIR)")
  if s.unlabelled_source == "policy":
    if int(s.pool_samples) != 2:
      raise ValueError("ser.pool_samples: two answers per prompt make a pair (got "
                       f"{s.pool_samples})")
    if not float(s.pool_temperature) > 0:
      raise ValueError(f"ser.pool_temperature={s.pool_temperature}: two samples of a prompt "
                       "need temperature > 0 (greedy decoding gives one answer twice)")


# ------------------------------------------------------------------------------ the rules


def probabilities(rewards) -> np.ndarray:
  """p = sigmoid(r) per answer (SER step 1: the RM's reward as the probability that the answer
  is good); float64 [n], stable for large |r|."""
  from scipy.special import expit
  return expit(np.asarray(rewards, np.float64))


def select_pairs(status: int, p_a, p_b, *, tau_high: float, tau_low: float, delta: float):
  """(keep [n] bool, a_wins [n] bool) of SER step 2 (Eq. 3 of `../shared/seeds/003`) for the
  answers' probabilities p_a, p_b:
    status 1: one answer p > tau_high and the other p < tau_low (a clear good / bad pair);
    status 2: status 1's pairs and those with |p_a - p_b| > delta (pairs of similar quality the
      RM still ranks with a clear gap; the released code's status-2 filter, which keeps the
      status-1 pairs too).
  The self-label: the answer with the higher p wins. Inequalities are strict. ValueError on
  another status or different lengths."""
  p_a, p_b = np.asarray(p_a, np.float64), np.asarray(p_b, np.float64)
  if p_a.shape != p_b.shape:
    raise ValueError(f"p_a and p_b differ in shape: {p_a.shape} vs {p_b.shape}")
  if status not in (1, 2):
    raise ValueError(f"learning status must be 1 or 2, got {status}")
  keep = ((p_a > tau_high) & (p_b < tau_low)) | ((p_b > tau_high) & (p_a < tau_low))
  if status == 2:
    keep |= np.abs(p_a - p_b) > delta
  return keep, p_a > p_b


def most_confident(keep, p_a, p_b, cap: int) -> np.ndarray:
  """`keep` reduced to its `cap` pairs with the largest |p_a - p_b| (ties: the earlier);
  cap 0: unchanged."""
  keep = np.asarray(keep, bool)
  if not cap or keep.sum() <= cap:
    return keep
  idx = np.flatnonzero(keep)
  gap = np.abs(np.asarray(p_a, np.float64) - np.asarray(p_b, np.float64))[idx]
  out = np.zeros_like(keep)
  out[idx[np.argsort(-gap, kind="stable")[:cap]]] = True
  return out


def next_status(status: int, kept: int, val_gain: float, val_gain_se: float, *,
                min_gain: float, z: float) -> int:
  """The status of the loop after one that ran in `status`, kept `kept` pairs and moved the
  validation accuracy (seed labels) by `val_gain` ± `val_gain_se` (paired, fractions). Status 1
  helped when it kept pairs and its gain is at least `min_gain` and above `z` standard errors
  (not validation noise); otherwise the driver moves to status 2, and never back (it stops
  when status 2 keeps nothing)."""
  if status == 1 and not (kept > 0 and val_gain >= min_gain and val_gain > z * val_gain_se):
    return 2
  return status


def planned_status(previous: list[dict], *, min_gain: float, z: float) -> int:
  """The status the next loop starts in, from the summaries of the loops before it (status,
  kept, val_gain, val_gain_se), in order: 1 for the first loop."""
  status = 1
  for p in previous:
    status = next_status(int(p["status"]), int(p["kept"]), float(p["val_gain"]),
                         float(p["val_gain_se"]), min_gain=min_gain, z=z)
  return status


def sft_split(pairs: list, fraction: float) -> tuple[list, list]:
  """(SFT split, RM data) of `pairs` (already shuffled): whole prompts, in order of first
  appearance, go to the SFT split until it holds round(fraction x N) pairs or more, so no
  prompt of the SFT split is in the RM data (data with several pairs per prompt: TL;DR,
  HH-RLHF); with one pair per prompt it is the first round(fraction x N) pairs. Order kept."""
  target = int(round(float(fraction) * len(pairs)))
  counts: dict[str, int] = {}
  for p in pairs:
    counts[p.prompt] = counts.get(p.prompt, 0) + 1
  chosen, n = set(), 0
  for prompt, k in counts.items():
    if n >= target:
      break
    chosen.add(prompt)
    n += k
  return ([p for p in pairs if p.prompt in chosen], [p for p in pairs if p.prompt not in chosen])


def annotator_labels(pairs: list, rate: float, rng: np.random.Generator) -> list:
  """The labels annotators give: each pair's label is wrong (chosen and rejected swapped) with
  probability `rate`, independently; the swapped pairs carry meta["label_flipped"] = True
  (read only to report how right the annotators were, never to decide). One uniform draw a
  pair, in order, so a seed gives the same flips. rate 0 returns the pairs as they are.

  Why: human preference labels are noisy -- two annotators agree on ~63-66 % of HH-RLHF /
  AlpacaFarm pairs (Bai et al. 2022; Dubois et al. 2023), which independent errors at
  rate e give as (1 - e)^2 + e^2 (0.625 at e = 0.25) -- while the synthetic task's oracle labels
  are exact. ValueError unless 0 <= rate < 0.5."""
  if not 0.0 <= float(rate) < 0.5:
    raise ValueError(f"ser.label_noise must be in [0, 0.5), got {rate}")
  if not rate:
    return list(pairs)
  flips = rng.random(len(pairs)) < float(rate)
  return [PreferencePair(p.prompt, p.rejected, p.chosen, p.margin,
                         {**p.meta, "label_flipped": True}) if f else p
          for p, f in zip(pairs, flips)]


def paired_difference(a, b) -> dict:
  """mean(a - b) over paired per-pair credits with its s.e. (ddof 1) and 95 % t-interval."""
  from scipy.stats import t as student_t
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  n = int(d.size)
  if n < 2:
    return {"mean": float(d.mean()) if n else float("nan"), "se": float("nan"),
            "low": float("nan"), "high": float("nan"), "n": n}
  se = float(d.std(ddof=1) / math.sqrt(n))
  half = float(student_t.ppf(0.975, n - 1) * se)
  return {"mean": float(d.mean()), "se": se, "low": float(d.mean()) - half,
          "high": float(d.mean()) + half, "n": n}


def accuracy_se(correct) -> dict:
  """Pairwise accuracy of [n] per-pair credits (1 right, 0 wrong, 0.5 a tie) with its standard
  error sqrt(var / n) (the pair as the unit, ddof 0 = the binomial s.e. without ties)."""
  x = np.asarray(correct, np.float64)
  n = int(x.size)
  if n == 0:
    return {"accuracy": float("nan"), "se": float("nan"), "n": 0}
  return {"accuracy": float(x.mean()), "se": float(x.std() / math.sqrt(n)), "n": n}


def pair_credit(r_chosen, r_rejected) -> np.ndarray:
  """1 where the chosen answer's reward is higher, 0.5 on a tie, 0 otherwise."""
  rw, rl = np.asarray(r_chosen, np.float64), np.asarray(r_rejected, np.float64)
  return np.where(rw > rl, 1.0, np.where(rw == rl, 0.5, 0.0))


# ------------------------------------------------------------------------------ data


def _margin_pairs(pairs):
  """The pairs with margin 1 each: the loss's margin is ser.margin (reward.margin_scale)."""
  return [PreferencePair(p.prompt, p.chosen, p.rejected, 1.0, {}) for p in pairs]


def data_stage(config):
  """Labelled pairs -> seed / validation / unlabelled / test files (module docstring). Raises
  ValueError when the seed share leaves fewer than 2 training or 1 validation pair."""
  noise = float(config.ser.label_noise)
  # label_noise joins the data's settings only when it is set: workdirs made before the option
  # keep their data stage (and so every later stage)
  c = derive(config, "data", None, keep=("train_split", "eval_split", "sft_fraction",
                                         "seed_fraction", "seed_val_fraction",
                                         "max_eval_prompts", "max_pairs",
                                         *(("label_noise",) if noise else ())))

  def run(ctx):
    dcfg, s, d = c.data, c.ser, ctx.dir
    train, evals, reports = common.pair_splits(dcfg, s.train_split, s.eval_split, "ser")
    train = common.render_pairs(train, dcfg.prompt_format)
    evals = common.render_pairs(evals, dcfg.prompt_format)
    rng = np.random.default_rng([int(dcfg.seed), 31])
    train = [train[int(i)] for i in rng.permutation(len(train))]
    if int(s.max_pairs):
      train = train[:int(s.max_pairs)]
    # every label a model or the driver sees is an annotator's (label_noise); the held-out test
    # pairs keep the data's own labels (the oracle's on the synthetic task)
    train = annotator_labels(train, noise, np.random.default_rng([int(dcfg.seed), 37]))
    # the SFT share of the paper's split (its SFT:RM:PPO = 0.3:0.65:0.05): its chosen answers
    # train the policy and no RM trains on its pairs; the rest is the RM data, of which
    # seed_fraction is labelled
    sft_pairs, train = sft_split(train, float(s.sft_fraction))
    n_sft = len(sft_pairs)
    if float(s.sft_fraction) > 0 and not n_sft:
      raise ValueError(f"ser.sft_fraction={s.sft_fraction} of {len(train)} training pairs gives "
                       "no SFT pair (set 0 to train the policy on the seed pairs instead)")
    n_seed = int(round(float(s.seed_fraction) * len(train)))
    n_val = int(round(float(s.seed_val_fraction) * n_seed))
    if n_val < 1 or n_seed - n_val < 2:
      raise ValueError(f"ser.seed_fraction={s.seed_fraction} of {len(train)} RM training pairs "
                       f"(after ser.sft_fraction={s.sft_fraction} of the pairs went to SFT) "
                       f"gives {n_seed} seed pairs ({n_val} for validation): need at least 2 "
                       "to train on and 1 to validate on")
    seed, rest = train[:n_seed], train[n_seed:]
    seed_val, seed_train = seed[:n_val], seed[n_val:]
    sft_source = sft_pairs if n_sft else seed_train
    flips = rng.random(len(rest)) < 0.5
    unlabelled, truth = [], []
    for i, (p, flip) in enumerate(zip(rest, flips)):
      a, b = (p.rejected, p.chosen) if flip else (p.chosen, p.rejected)
      unlabelled.append({"id": str(i), "prompt": p.prompt, "a": a, "b": b})
      annotator = "b" if flip else "a"   # the answer p's label calls better
      row = {"id": str(i), "better": annotator}
      if noise:   # the hidden label is the data's own; the annotator's is kept beside it
        if p.meta.get("label_flipped"):
          row["better"] = "a" if flip else "b"
        row["annotator"] = annotator
      truth.append(row)
    prompts = list(dict.fromkeys(p.prompt for p in evals))[:int(s.max_eval_prompts) or None]
    counts = {
        "sft_pairs": n_sft, "train_pairs": len(train),
        "annotator_wrong": {"sft": sum(bool(p.meta.get("label_flipped")) for p in sft_pairs),
                            "rm_data": sum(bool(p.meta.get("label_flipped")) for p in train)},
        "seed_train": write_pairs_jsonl(
            os.path.join(d, "seed_train.jsonl"), _margin_pairs(seed_train)),
        # with annotator noise the validation pairs' meta (the data's scores, which answer was
        # swapped) would tell the truth: written without it, as the training files are
        "seed_val": write_pairs_jsonl(os.path.join(d, "seed_val.jsonl"),
                                      _margin_pairs(seed_val) if noise else seed_val),
        "full_train": write_pairs_jsonl(os.path.join(d, "full_train.jsonl"), _margin_pairs(train)),
        "pairs_eval": write_pairs_jsonl(os.path.join(d, "pairs_eval.jsonl"), evals),
        "unlabelled": jsonio.write_jsonl_atomic(os.path.join(d, "unlabelled.jsonl"), unlabelled),
        "unlabelled_truth": jsonio.write_jsonl_atomic(os.path.join(d, "unlabelled_truth.jsonl"),
                                                      truth),
        "policy_sft_train": jsonio.write_jsonl_atomic(
            os.path.join(d, "policy_sft_train.jsonl"),
            [{"prompt": p.prompt, "response": p.chosen} for p in sft_source]),
        "policy_sft_eval": jsonio.write_jsonl_atomic(
            os.path.join(d, "policy_sft_eval.jsonl"),
            [{"prompt": p.prompt, "response": p.chosen} for p in evals]),
        "rl_prompts": jsonio.write_jsonl_atomic(
            os.path.join(d, "rl_prompts.jsonl"),
            [{"prompt": x} for x in dict.fromkeys(p.prompt for p in train + sft_pairs)]),
        "eval_prompts": jsonio.write_jsonl_atomic(os.path.join(d, "eval_prompts.jsonl"),
                                                  [{"prompt": x} for x in prompts])}
    for split, rep in reports.items():
      rep.log(f"ser data ({split})")
    return {"counts": counts, "data": {k: r.as_dict() for k, r in reports.items()}}
  return stages.Stage(DATA, run, settings=c, inputs=())


def _jsonl(c, train_path: str, eval_path: str):
  """A copy of `c` reading JSONL files (paths filled at run time, so a stage's fingerprint does
  not depend on where the workdir is)."""
  c = ml_collections.ConfigDict(c.to_dict())
  c.data.update(source="jsonl", prompt_format="{prompt}", train_path=train_path,
                eval_path=eval_path)
  return c


def policy_stage(config):
  """The SFT policy on the SFT split's chosen answers, or the seed pairs' with
  `ser.sft_fraction=0` (`pipeline=sft`)."""
  c = derive(config, "sft", "policy_sft")

  def run(ctx):
    rc = _jsonl(c, ctx.input_path(DATA, "policy_sft_train.jsonl"),
                ctx.input_path(DATA, "policy_sft_eval.jsonl"))
    common.save_config(rc, ctx.dir)
    return sft_pipeline.run(rc, ctx.dir)
  return stages.Stage(POLICY, run, settings=c, inputs=(DATA,))


def pool_stage(config):
  """The unlabelled pool: the data's pairs, or two answers per training prompt sampled from the
  SFT policy (hidden label: the oracle's on the synthetic task, none elsewhere; ties and
  identical answers are left out and counted)."""
  c = derive(config, "generate", None, keep=("unlabelled_source", "pool_samples",
                                             "pool_temperature", "pool_top_p", "max_new_tokens",
                                             "generation", "chunk", "max_pool_prompts"))
  from_policy = config.ser.unlabelled_source == "policy"

  def run(ctx):
    s = c.ser
    pool = _read_pool(ctx.input_path(DATA, "unlabelled.jsonl"))
    truth = list(records.read_jsonl(ctx.input_path(DATA, "unlabelled_truth.jsonl"), ("id",)))
    counts = {"source": s.unlabelled_source}
    if from_policy:
      rt = common.setup(c)
      prompts = list(dict.fromkeys(r["prompt"] for r in pool))[:int(s.max_pool_prompts) or None]
      g = s.generation
      settings = generation.Settings(
          max_new_tokens=int(s.max_new_tokens), temperature=float(s.pool_temperature),
          top_p=float(s.pool_top_p), seed=int(c.data.seed) + 7000,
          batch_size=int(g.batch_size), max_prompt_len=int(g.max_prompt_len),
          prompt_buckets=tuple(g.prompt_buckets))
      gen = None

      def fn(batch, ci):
        nonlocal gen
        if gen is None:
          gen = generation.from_checkpoint(rt, ctx.input_dir(POLICY), settings, field="policy")
        return [[x.text for x in draws] for draws in gen.sample(batch, 2, ci)]
      answers = resumable.map_chunks(ctx.dir, "samples", prompts, fn, int(s.chunk))
      oracle = c.data.source == "synthetic"
      pool, truth = [], []
      counts.update(prompts=len(prompts), identical=0, oracle_ties=0)
      for p, (a, b) in zip(prompts, answers):
        if a.strip() == b.strip():
          counts["identical"] += 1
          continue
        better = None
        if oracle:
          from pit.data import synthetic
          sa, sb = synthetic.oracle_score(p, a), synthetic.oracle_score(p, b)
          better = "a" if sa > sb else "b" if sb > sa else None
          counts["oracle_ties"] += better is None
        pool.append({"id": str(len(pool)), "prompt": p, "a": a, "b": b})
        truth.append({"id": str(len(truth)), "better": better})
    counts["pairs"] = len(pool)
    if not pool:
      raise ValueError(f"pool: no unlabelled pair ({counts}): every policy sample pair was "
                       "identical or there were no prompts")
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "unlabelled.jsonl"), pool)
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "unlabelled_truth.jsonl"), truth)
    return counts
  return stages.Stage(POOL, run, settings=c, inputs=(DATA, POLICY) if from_policy else (DATA,))


def _read_pool(path: str) -> list[dict]:
  """The unlabelled pairs {"id", "prompt", "a", "b"} of `path` (answers may be empty strings);
  DataError naming the file and line on a record without them."""
  out = []
  for lineno, r in records.read_jsonl_numbered(path, ("id", "prompt")):
    if not isinstance(r.get("a"), str) or not isinstance(r.get("b"), str):
      raise records.DataError(f"{path}:{lineno}: fields 'a' and 'b' must be strings")
    out.append(r)
  return out


def _reward_config(config, section: str, keep=()):
  c = derive(config, "reward", section, keep=("margin", "center_coef", "rm_epochs",
                                              "reward_init_from_policy", *keep))
  if c.model.head != "scalar":
    raise ValueError(f"ser.{section}.model.head must be 'scalar', got {c.model.head!r}")
  c.reward.margin_scale = float(config.ser.margin)
  c.reward.center_coef = float(config.ser.center_coef)
  return c


def _scorer(rt, rm_dir: str, batch_size: int):
  return scorers.reward_model_scorer(rm_dir, rt.tokenizer, rt.mesh, rt.rules,
                                     format_fn=scorers.template_format("{prompt}{response}"),
                                     batch_size=batch_size)


def _credits(scorer, pairs) -> list[float]:
  """Per labelled pair: 1 if `scorer` ranks the chosen answer higher, 0.5 on a tie, else 0."""
  if not pairs:
    return []
  prompts = [p.prompt for p in pairs]
  rw = scorer(prompts, [p.chosen for p in pairs])
  rl = scorer(prompts, [p.rejected for p in pairs])
  return [float(x) for x in pair_credit(rw, rl)]


CREDITS = "credits.json"   # per-pair credits of a stage's RM on the validation and test pairs


def _evaluate_rm(ctx, rt, rm_dir: str, batch_size: int) -> dict:
  """Scores the seed validation pairs and the held-out test pairs with the RM in `rm_dir`;
  writes their per-pair credits to <stage>/credits.json and returns {"val", "test"} accuracies
  ± s.e. (`accuracy_se`)."""
  scorer = _scorer(rt, rm_dir, batch_size)
  credits = {"val": _credits(scorer, read_pairs_jsonl(ctx.input_path(DATA, "seed_val.jsonl"))),
             "test": _credits(scorer, read_pairs_jsonl(ctx.input_path(DATA, "pairs_eval.jsonl")))}
  if jax.process_index() == 0:
    stages.write_json_atomic(os.path.join(ctx.dir, CREDITS), credits)
  return {k: accuracy_se(v) for k, v in credits.items()}


def _read_credits(stage_dir: str) -> dict:
  with open(os.path.join(stage_dir, CREDITS)) as f:
    return json.load(f)


def _epoch_steps(rc, rows: int) -> dict:
  """Sets rc's training length to ceil(ser.rm_epochs x rows / batch) steps, at most the stage
  section's train.steps (a cap; the summary says when it cut), with the schedule and the
  checkpoint / eval intervals fitted to it. Returns {"steps", "epochs", "capped"}."""
  bs = int(rc.train.batch_size)
  want = max(1, math.ceil(float(rc.ser.rm_epochs) * rows / bs))
  steps = min(want, int(rc.train.steps))
  if steps < want:
    logging.warning("%d RM steps cap %.2f epochs of %d rows at %d steps (ser.rm_epochs=%s)",
                    int(rc.train.steps), float(rc.ser.rm_epochs), rows, want, rc.ser.rm_epochs)
  rc.train.steps = steps
  rc.optim.decay_steps = steps
  rc.checkpoint.every = max(1, min(int(rc.checkpoint.every), steps))
  if int(rc.train.eval_every) > steps:
    rc.train.eval_every = steps
  return {"steps": steps, "epochs": steps * bs / max(rows, 1), "capped": steps < want}


def rm_stage(config, name: str, train_file: str):
  """The seed RM (`seed_rm`: the seed pairs less the validation ones) or the full-label
  baseline (`full_rm`: every training pair), with the margin loss, `ser.rm_epochs` epochs;
  summary: held-out test and validation accuracy ± s.e., rows, steps, epochs."""
  c = _reward_config(config, name)
  init = config.ser.reward_init_from_policy

  def run(ctx):
    rc = _jsonl(c, ctx.input_path(DATA, train_file), ctx.input_path(DATA, "pairs_eval.jsonl"))
    if init:
      rc.reward.init_checkpoint = ctx.input_dir(POLICY)
    rows = len(read_pairs_jsonl(rc.data.train_path))
    length = _epoch_steps(rc, rows)
    common.save_config(rc, ctx.dir)
    summary = reward_pipeline.run(rc, ctx.dir)
    rt = common.setup(rc)
    return {**summary, **length, "train_rows": rows,
            "accuracy": _evaluate_rm(ctx, rt, ctx.dir, int(rc.train.batch_size))}
  return stages.Stage(name, run, settings=c, inputs=(DATA, POLICY) if init else (DATA,))


def best_rm(names: list[str], summaries: dict, rule: str) -> str:
  """Among RM stages `names` (in order; each summary with accuracy.val), the best validation
  accuracy on the seed labels (ties: the later) for rule 'best_val', the last for 'last'."""
  if rule == "last":
    return names[-1]
  val = lambda name: summaries[name]["accuracy"]["val"]["accuracy"]
  best = names[0]
  for n in names[1:]:
    if val(n) >= val(best):
      best = n
  return best


SELECTION = "selection.json"   # written last: the loop's self-labelling is done (reused on resume)


def loop_stage(config, k: int):
  """SER loop k (module docstring): self-label what is left of the pool with the current RM
  (the best on validation so far), keep pairs by status, continue training that RM on them plus
  the seed pairs (`retrain='fresh'`: train a new RM from where the seed RM started on the seed
  pairs and every pair kept by this and the earlier loops). Writes scores.jsonl (p of both
  answers of every pool pair), selected.jsonl (ids, self-labels), train.jsonl (the pairs
  trained on) and selection.json; a loop killed after its selection resumes with it (never
  re-scores). Summary: status, pool, passed, kept, self-label accuracy against the hidden
  labels, validation before -> after with the paired gain ± s.e., test accuracy, stopped (and
  why)."""
  fresh = config.ser.retrain == "fresh"
  # 'retrain' joins the loop's settings only when it is 'fresh': loops that continue keep the
  # fingerprints they had before the option existed, so their workdirs are reused, not rerun
  c = _reward_config(config, "loop", ("tau_high", "tau_low", "delta", "min_gain", "switch_z",
                                      "max_kept_per_loop", *(("retrain",) if fresh else ())))
  earlier = [loop_name(j) for j in range(1, k)]
  from_policy = fresh and bool(config.ser.reward_init_from_policy)

  def run(ctx):
    prev = [ctx.input_summary(n) for n in earlier]
    if prev and prev[-1].get("stopped"):
      return {"stopped": True, "trained": False, "reason": f"stopped at {earlier[-1]}",
              "status": prev[-1].get("status"), "kept": 0}
    rt = common.setup(c)
    bs = int(c.train.batch_size)
    summaries = {SEED_RM: ctx.input_summary(SEED_RM), **dict(zip(earlier, prev))}
    current = best_rm([SEED_RM] + [n for n in earlier if summaries[n].get("trained")],
                      summaries, "best_val")
    rm_dir = ctx.input_dir(current)
    selection_path = os.path.join(ctx.dir, SELECTION)
    if os.path.exists(selection_path):       # resumed after the self-labelling: reuse it
      with open(selection_path) as f:
        out = json.load(f)
    else:
      out = _self_label(ctx, rt, c, rm_dir, earlier, prev, bs, fresh)
      out["from"] = current
      if jax.process_index() == 0:
        stages.write_json_atomic(selection_path, out)
    if out.get("stopped"):
      return {**out, "trained": False}
    rc = _jsonl(c, os.path.join(ctx.dir, "train.jsonl"), ctx.input_path(DATA, "pairs_eval.jsonl"))
    length = _epoch_steps(rc, int(out["train_rows"]))
    if fresh:      # a new RM, started as the seed RM was, on every pair labelled so far
      rc.reward.init_reward_model = ""
      rc.reward.init_checkpoint = ctx.input_dir(POLICY) if from_policy else ""
    else:          # the current RM continues on this loop's pairs and the seed pairs
      rc.reward.init_reward_model = rm_dir
      rc.reward.init_checkpoint = ""
    common.save_config(rc, ctx.dir)
    summary = reward_pipeline.run(rc, ctx.dir)
    after = _evaluate_rm(ctx, rt, ctx.dir, bs)
    gain = paired_difference(_read_credits(ctx.dir)["val"], _read_credits(rm_dir)["val"])
    return {**summary, **out, **length, "trained": True, "accuracy": after,
            "retrain": "fresh" if fresh else "continue",
            "val_before": summaries[current]["accuracy"]["val"]["accuracy"],
            "val_gain": gain["mean"], "val_gain_se": gain["se"]}
  inputs = (DATA, POOL, SEED_RM, *((POLICY,) if from_policy else ()), *earlier)
  return stages.Stage(loop_name(k), run, settings=c, inputs=inputs)


def _labelled_pair(rec: dict, label: str) -> PreferencePair:
  """A pool record ({prompt, a, b}) as a training pair with `label` ('a' or 'b') chosen."""
  w, l = (rec["a"], rec["b"]) if label == "a" else (rec["b"], rec["a"])
  return PreferencePair(rec["prompt"], w, l, 1.0, {})


def _self_label(ctx, rt, c, rm_dir: str, earlier, prev, bs: int, fresh: bool) -> dict:
  """A loop's self-labelling (see `loop_stage`): the selection summary, and its files. The
  training rows: the kept pairs, with `fresh` every earlier loop's kept pairs (their
  self-labels, in loop order), then the seed pairs."""
  s = c.ser
  status = planned_status(prev, min_gain=float(s.min_gain), z=float(s.switch_z))
  taken = [(r["id"], r["label"]) for n in earlier for r in records.read_jsonl(
      ctx.input_path(n, "selected.jsonl"), ("id", "label"))]
  used = {i for i, _ in taken}
  everything = _read_pool(ctx.input_path(POOL, "unlabelled.jsonl"))
  pool = [r for r in everything if r["id"] not in used]
  out = {"pool": len(pool), "status_planned": status, "status": status, "kept": 0, "passed": 0}
  if not pool:
    return {**out, "stopped": True, "reason": "the pool is empty"}
  scorer = _scorer(rt, rm_dir, bs)
  prompts = [r["prompt"] for r in pool]
  p_a = probabilities(scorer(prompts, [r["a"] for r in pool]))
  p_b = probabilities(scorer(prompts, [r["b"] for r in pool]))
  out["mean_p"] = float(np.mean(np.concatenate([p_a, p_b])))
  rules = dict(tau_high=float(s.tau_high), tau_low=float(s.tau_low), delta=float(s.delta))
  keep, a_wins = select_pairs(status, p_a, p_b, **rules)
  if status == 1 and not keep.any():   # status 1 finds nothing: status 2 at once
    out["switched_in_loop"] = True
    status = 2
    keep, a_wins = select_pairs(status, p_a, p_b, **rules)
  out.update(status=status, passed=int(keep.sum()))
  keep = most_confident(keep, p_a, p_b, int(s.max_kept_per_loop))
  out["kept"] = int(keep.sum())
  if jax.process_index() == 0:
    jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "scores.jsonl"),
                              [{"id": r["id"], "p_a": float(a), "p_b": float(b)}
                               for r, a, b in zip(pool, p_a, p_b)])
  if not keep.any():
    return {**out, "stopped": True, "reason": f"no pair passes status {status}"}
  truth = {r["id"]: r for r in records.read_jsonl(
      ctx.input_path(POOL, "unlabelled_truth.jsonl"), ("id",))}
  chosen, selected, right, annotators = [], [], [], []
  for i in np.flatnonzero(keep):
    r, label = pool[int(i)], "a" if a_wins[i] else "b"
    chosen.append(_labelled_pair(r, label))
    selected.append({"id": r["id"], "label": label, "p_a": float(p_a[i]), "p_b": float(p_b[i])})
    # the hidden labels: read to report, never to decide
    hidden = truth.get(r["id"]) or {}
    if hidden.get("better") in ("a", "b"):
      right.append(float(hidden["better"] == label))
      if hidden.get("annotator") in ("a", "b"):   # how right the annotator was on this pair
        annotators.append(float(hidden["annotator"] == hidden["better"]))
  seed = read_pairs_jsonl(ctx.input_path(DATA, "seed_train.jsonl"))
  before = []
  if fresh:
    by_id = {r["id"]: r for r in everything}
    before = [_labelled_pair(by_id[i], label) for i, label in taken]
  if jax.process_index() == 0:
    jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "selected.jsonl"), selected)
    write_pairs_jsonl(os.path.join(ctx.dir, "train.jsonl"), chosen + before + seed)
  return {**out, "stopped": False, "train_rows": len(chosen) + len(before) + len(seed),
          "seed_rows": len(seed), "earlier_kept_rows": len(before),
          "self_label_accuracy": accuracy_se(right), "labelled_kept": len(right),
          **({"annotator_accuracy": accuracy_se(annotators)} if annotators else {})}


def final_rm(config, summaries: dict) -> str:
  """The stage whose RM drives PPO: among the seed RM and the loops that trained, the best
  validation accuracy on the seed labels (ties: the later) with `final_rm='best_val'`, or the
  last that trained (`'last'`)."""
  names = [SEED_RM] + [loop_name(k) for k in range(1, int(config.ser.max_loops) + 1)
                       if summaries.get(loop_name(k), {}).get("trained")]
  return best_rm(names, summaries, config.ser.final_rm)


def ppo_stage(config):
  """PPO of the SFT policy against the final RM (`final_rm`), KL to the SFT policy."""
  c = derive(config, "ppo", "ppo", keep=("max_rl_prompts", "final_rm", "max_loops"))
  c.ppo.scorer = "reward_model"
  c.ppo.reward_format = "{prompt}{response}"
  c.data.prompt_format = "{prompt}"
  loops = [loop_name(k) for k in range(1, int(config.ser.max_loops) + 1)]

  def run(ctx):
    summaries = {n: ctx.input_summary(n) for n in [SEED_RM] + loops}
    rm = final_rm(c, summaries)
    rc, rt = common.ppo_setup(c, ctx.dir, init=ctx.input_dir(POLICY),
                              reference=ctx.input_dir(POLICY), reward_model=ctx.input_dir(rm))
    prompts = [r["prompt"] for r in records.read_jsonl(ctx.input_path(DATA, "rl_prompts.jsonl"),
                                                       ("prompt",))]
    prompts = prompts[:int(c.ser.max_rl_prompts) or None]
    oracle = scorers.OracleScorer() if rc.data.source == "synthetic" else None
    summary = ppo_pipeline.train_ppo(rc, ctx.dir, rt, prompts=prompts,
                                     scorer=ppo_pipeline.make_scorer(rc, rt),
                                     monitors={"oracle": oracle} if oracle else None)
    return {**summary, "reward_model": rm, "num_prompts": len(prompts)}
  return stages.Stage(PPO, run, settings=c, inputs=(DATA, POLICY, SEED_RM, *loops))


# ------------------------------------------------------------------------------ evaluation


def evaluate_stage(config, before: list[str]):
  """The accuracy table (seed, loops, final, full; ± s.e.), PPO vs SFT at every decoding of
  `eval.temperatures` judged both ways round (oracle on the synthetic task, else the full-label
  RM) with intervals, and WORKDIR/report.md with plots of accuracy and pairs kept per loop."""
  c = derive(config, "generate", None, keep=("dataset_name", "max_new_tokens", "generation",
                                             "chunk", "final_rm", "max_loops", "eval_top_p",
                                             "rm_epochs", "sft_fraction",
                                             "reward_init_from_policy",
                                             *(("label_noise",) if float(
                                                 config.ser.label_noise) else ())))
  c.eval = config.eval.to_dict()
  loops = [loop_name(k) for k in range(1, int(config.ser.max_loops) + 1)]

  def run(ctx):
    s = c.ser
    summaries = {n: ctx.input_summary(n) for n in before}
    rt = common.setup(c)
    prompts = [r["prompt"] for r in records.read_jsonl(ctx.input_path(DATA, "eval_prompts.jsonl"),
                                                       ("prompt",))]
    decodings = {evaluator.decoding_name(t): float(t) for t in c.eval.temperatures}
    g = s.generation
    outputs = {name: {} for name in SYSTEMS}
    samplers: dict = {}
    for name in SYSTEMS:
      src = ctx.input_dir(PPO if name == "ppo" else POLICY)
      for dec, temp in decodings.items():
        settings = generation.Settings(
            max_new_tokens=int(s.max_new_tokens), temperature=temp,
            top_p=float(s.eval_top_p) if temp > 0 else 1.0, seed=int(c.eval.seed) + 9000,
            batch_size=int(g.batch_size), max_prompt_len=int(g.max_prompt_len),
            prompt_buckets=tuple(g.prompt_buckets))
        gen = None

        def fn(batch, ci, src=src, settings=settings):
          nonlocal gen
          if gen is None:
            gen = generation.from_checkpoint(rt, src, settings, field="policy", samplers=samplers)
          return gen(batch, ci)
        outputs[name][dec] = resumable.map_chunks(ctx.dir, f"outputs_{name}_{dec}", prompts, fn,
                                                  int(s.chunk))
    judges = judges_lib.from_config(tuple(c.eval.judges), rt=rt, data_source=c.data.source,
                                    reward_model_dir=ctx.input_dir(FULL_RM),
                                    batch_size=int(g.batch_size))
    if not judges:
      raise ValueError(f"evaluate: none of eval.judges={tuple(c.eval.judges)} is available "
                       "(the oracle judges only the synthetic task; 'reward_model' is the "
                       "full-label RM)")
    rows = evaluator.evaluate(prompts, outputs, [("ppo", "policy_sft")], judges,
                              confidence=float(c.eval.confidence),
                              resamples=int(c.eval.bootstrap), seed=int(c.eval.seed),
                              display=DISPLAY)
    final = final_rm(c, summaries)
    test = {n: _read_credits(ctx.input_dir(n))["test"] for n in (SEED_RM, FULL_RM, final)}
    diffs = {"final_vs_seed": paired_difference(test[final], test[SEED_RM]),
             "final_vs_full": paired_difference(test[final], test[FULL_RM])}
    if jax.process_index() == 0:
      for name in SYSTEMS:
        for dec in decodings:
          alpaca_eval.write_outputs(os.path.join(ctx.dir, f"outputs_{name}_{dec}.json"), prompts,
                                    outputs[name][dec], generator=f"ser_{name}_{dec}")
      _write_report(ctx.workdir, c, summaries, loops, final, diffs, rows, prompts, outputs,
                    decodings)
    return {"rows": [r.as_dict() for r in rows], "final_rm": final, "differences": diffs,
            "accuracy": accuracy_summary(summaries, loops, final),
            "report": os.path.join(ctx.workdir, "report.md")}
  return stages.Stage(EVAL, run, settings=c, inputs=tuple(before))


def accuracy_summary(summaries: dict, loops, final: str) -> dict:
  """{"seed", loop names that trained, "final", "full"} -> held-out test accuracy ± s.e."""
  out = {"seed": summaries[SEED_RM]["accuracy"]["test"]}
  for n in loops:
    if summaries.get(n, {}).get("trained"):
      out[n] = summaries[n]["accuracy"]["test"]
  out["final"] = summaries[final]["accuracy"]["test"]
  out["full"] = summaries[FULL_RM]["accuracy"]["test"]
  return out


def _pct(a: dict) -> str:
  if not a or not a.get("n"):
    return "-"
  return f"{100 * a['accuracy']:.1f} ± {100 * a['se']:.1f}"


def _sft_sentence(workdir: str, c) -> str:
  """What the SFT policy (PPO's start, every RM's trunk with reward_init_from_policy) learnt."""
  n_sft = stages.read_summary(workdir, DATA)["counts"].get("sft_pairs", 0)
  trunk = (" Every RM starts from that policy (`reward_init_from_policy`)."
           if c.ser.reward_init_from_policy else "")
  if n_sft:
    return (f"SFT policy: the chosen answers of the {n_sft} pairs of the SFT split "
            f"(`ser.sft_fraction` {c.ser.sft_fraction}), which no RM trains on.{trunk}")
  return f"SFT policy: the seed training pairs' chosen answers.{trunk}"


def _labels_sentence(workdir: str, c) -> str:
  """Whose labels the models saw: the data's, or annotators' with `ser.label_noise` errors."""
  if not float(c.ser.get("label_noise", 0.0)):
    return ""
  wrong = stages.read_summary(workdir, DATA)["counts"].get("annotator_wrong") or {}
  return (f" Every training label is an annotator's, wrong with probability "
          f"{c.ser.label_noise} (`ser.label_noise`; {wrong.get('rm_data', '?')} of the "
          f"full-label pairs' and {wrong.get('sft', '?')} of the SFT split's labels are wrong): "
          "the seed, validation and full-label pairs and the SFT answers (so the SFT policy, "
          "PPO's start, learnt from them too); the held-out test pairs and the hidden labels "
          "the self-labels are checked against are the data's own. Validation accuracy (and "
          "so the driver's decisions and the final RM's choice) is against the annotators' "
          "labels.")


def _trained_on(sm: dict) -> str:
  """A loop's training rows and start for the report's loop table."""
  if sm.get("retrain") == "fresh":
    return (f"{sm['train_rows']} ({sm['seed_rows']} seed, {sm['earlier_kept_rows']} kept by "
            f"earlier loops): a new RM; labelled by {sm['from']}")
  return f"{sm['train_rows']} ({sm['seed_rows']} seed) from {sm['from']}"


def _write_report(workdir, c, summaries, loops, final, diffs, rows, prompts, outputs,
                  decodings):
  acc = accuracy_summary(summaries, loops, final)
  val_labels = ("seed share, annotators' labels" if float(c.ser.get("label_noise", 0.0))
                else "seed labels")
  lines = ["## Reward-model accuracy on held-out labelled pairs (%, ± s.e., pair as the unit)\n",
           f"| reward model | held-out accuracy | validation ({val_labels}) | n |",
           "|---|---|---|---|"]
  named = [("seed RM (seed share of the labels)", SEED_RM)] + [
      (f"{n} (status {summaries[n].get('status')})", n) for n in loops
      if summaries.get(n, {}).get("trained")] + [("full-label RM", FULL_RM)]
  for label, n in named:
    a = summaries[n]["accuracy"]
    mark = " **(final: drives PPO)**" if n == final else ""
    mark += " (steps capped below the epochs asked)" if summaries[n].get("capped") else ""
    val = "- (trained on them)" if n == FULL_RM else _pct(a["val"])
    lines.append(f"| {label}{mark} | {_pct(a['test'])} | {val} | {a['test']['n']} |")
  fmt = lambda d: (f"{100 * d['mean']:+.1f} ± {100 * d['se']:.1f} points "
                   f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")
  lines += ["", f"Paired on the same {acc['final']['n']} held-out pairs (mean difference of "
                "per-pair credit ± s.e. [95 % t-interval]): SER's final RM vs the seed RM "
                f"{fmt(diffs['final_vs_seed'])}; vs the full-label RM "
                f"{fmt(diffs['final_vs_full'])}.", "",
            f"Seed RM: {summaries[SEED_RM].get('train_rows')} labelled pairs trained on (the seed "
            "share less its validation pairs, which the driver decides on); full-label RM: "
            f"{summaries[FULL_RM].get('train_rows')}; every RM {c.ser.rm_epochs} epochs of its "
            "rows. " + _sft_sentence(workdir, c) + _labels_sentence(workdir, c), "",
            "## Loops\n", "| loop | status | pool | passed / kept | self-label accuracy vs "
            f"hidden labels | validation ({val_labels}) before → after (paired gain ± s.e.) | "
            "trained on | steps | note |", "|---|---|---|---|---|---|---|---|---|"]
  for n in loops:
    sm = summaries.get(n) or {}
    if not sm.get("trained"):
      lines.append(f"| {n} | {sm.get('status', '-')} | {sm.get('pool', '-')} | "
                   f"{sm.get('passed', 0)} / {sm.get('kept', 0)} | - | - | - | - | "
                   f"stopped: {sm.get('reason', '')} |")
      if sm.get("stopped"):
        break
      continue
    sl = sm["self_label_accuracy"]
    switched = " (switched in loop)" if sm.get("switched_in_loop") else ""
    ann = sm.get("annotator_accuracy")
    ann = f"; the annotators' labels {_pct(ann)}" if ann else ""
    lines.append(
        f"| {n} | {sm['status']}{switched} | {sm['pool']} | {sm['passed']} / {sm['kept']} | "
        f"{_pct(sl)} (n={sl['n']}){ann} | {100 * sm['val_before']:.1f} → "
        f"{100 * sm['accuracy']['val']['accuracy']:.1f} ({100 * sm['val_gain']:+.1f} ± "
        f"{100 * sm['val_gain_se']:.1f}) | {_trained_on(sm)} | {sm['steps']} | "
        f"mean p {sm.get('mean_p', float('nan')):.3f} |")
  ppo_s = summaries.get(PPO) or {}
  ft = ppo_s.get("final_train") or {}
  lines += ["", f"PPO: reward model {ppo_s.get('reward_model')}, {ppo_s.get('num_prompts')} "
                "prompts; final " + ", ".join(f"{k} {ft[k]:.4g}" for k in
                                              ("score", "oracle_score", "kl", "kl_coef")
                                              if isinstance(ft.get(k), (int, float))), ""]
  trained = [n for n in loops if summaries.get(n, {}).get("trained")]
  xs = list(range(len(trained) + 1))
  ys = [summaries[SEED_RM]["accuracy"]["test"]["accuracy"]] + [
      summaries[n]["accuracy"]["test"]["accuracy"] for n in trained]
  plots = {
      "held-out RM accuracy per loop": {
          "SER (0 = seed RM)": (xs, ys),
          "seed RM": (xs, [ys[0]] * len(xs)),
          "full-label RM": (xs, [acc["full"]["accuracy"]] * len(xs))},
      "pairs kept per loop": {"kept": (list(range(1, len(trained) + 1)),
                                       [summaries[n]["kept"] for n in trained])}}
  report.write_report(
      workdir, title=f"SER run report: {c.ser.dataset_name}",
      table_md="\n".join(lines) + "\n## PPO vs SFT: win / lose / Δ (%), judged both ways round, "
               "both decoded the same way\n\n" + evaluator.table_markdown(rows),
      metrics=plots,
      notes="\n".join(report.examples_markdown(prompts, outputs, dec, display=DISPLAY)
                      for dec in decodings),
      xlabels={"held-out RM accuracy per loop": "loop", "pairs kept per loop": "loop"})


# ------------------------------------------------------------------------------ entry


def build_stages(config) -> list[stages.Stage]:
  """SER's stages in order, each with its resolved settings and declared inputs."""
  _check(config)
  out = [data_stage(config), policy_stage(config), pool_stage(config),
         rm_stage(config, SEED_RM, "seed_train.jsonl"),
         rm_stage(config, FULL_RM, "full_train.jsonl")]
  out += [loop_stage(config, k) for k in range(1, int(config.ser.max_loops) + 1)]
  out.append(ppo_stage(config))
  out.append(evaluate_stage(config, [s.name for s in out]))
  return out


def run(config, workdir: str):
  """SER end to end in `workdir` (module docstring); returns the stage names and the report's
  path. Raises what a stage raises."""
  return stages.run_recipe(config, workdir, build_stages(config), "ser")
