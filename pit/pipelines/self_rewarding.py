"""`pipeline=self_rewarding`: Self-Rewarding Language Models (Yuan et al. 2024) and the teacher
variants of the Self-Reward RLHF report (`../shared/seeds/002`), on the shared recipe layer.

Stages (each in WORKDIR/<stage>/, skipped once done, resumed when interrupted; `pit.stages`):

  data           seed data -> JSONL: IFT rows (instruction -> high-quality response), EFT rows
                 when an oracle writes them (synthetic task) or the ranked candidate groups
                 the seed model will judge, instruction-creation rows (models from scratch),
                 the seed instructions, held-out prompts and held-out ranked groups
  sft_baseline   (optional) SFT on IFT only: the paper's "SFT baseline" system, and the EFT
                 judge when `eft_judge='sft_baseline'` (the paper's choice)
  eft            (EFT from a model) the seed model judges every candidate of the ranked
                 groups; a group is kept when its scores order the candidates as the human
                 ranking does; the dominant score is down-sampled (`pit.data.eft`)
  m1             M1 = SFT of M0 on IFT + EFT (+ instruction creation)
  for i = 1..iterations, from M_i:
    prompts_i     self-instruction creation: few-shot from the seed instructions at T=0.6,
                  top-p 0.9, deduplicated, filtered (`pit.data.self_instruct`)
    candidates_i  N candidates per prompt (T=0.7, top-p 0.9)
    judgements_i  each candidate judged k times with the additive 5-point prompt by M_i
                  (`variant='self'`) or a teacher (`'teacher_reward'`); a judgement without a
                  readable score is dropped and counted (`pit.data.aift`)
    teacher_i     (`variant='teacher_demo'`) the teacher's answer to every prompt
    pairs_i       best vs worst mean score (ties and < 2 scores dropped, counted); or teacher
                  answer vs the student's
    m{i+1}        DPO on pairs_i from M_i with M_i as the reference (summed sequence log-probs;
                  `dpo.nll_coef` adds RPO's NLL term)
  judge_eval     every M_i judges the held-out ranked groups: pairwise accuracy, 5-best %,
                 exact match %, Spearman, Kendall tau (`pit.eval.rm_agreement`)
  evaluate       every system decoded at each of `eval.temperatures` on the held-out prompts;
                 head-to-head comparisons judged both ways round with intervals
                 (`pit.eval.evaluator`; oracle, reward model, LLM judge); AlpacaEval files;
                 WORKDIR/report.md with plots

Every generation runs in resumable chunks (`pit.resumable`): a run killed inside a stage
resumes at the chunk it was on, with the same samples an uninterrupted run draws.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import jax
import ml_collections
import numpy as np

from pit import generation, jsonio, pretrained, resumable, stages
from pit.data import aift, batching, eft, encoding, records, self_instruct, sources
from pit.data import judge as judge_prompts
from pit.data.pairs import read_pairs_jsonl, write_pairs_jsonl
from pit.eval import alpaca_eval, evaluator, report, rm_agreement
from pit.eval import judges as judges_lib
from pit.params import init_params
from pit.pipelines import common
from pit.pipelines import dpo as dpo_pipeline
from pit.pipelines import sft as sft_pipeline

METHOD = "self_rewarding"
DATA, SFT_BASE, EFT, JUDGE_EVAL, EVAL = "data", "sft_baseline", "eft", "judge_eval", "evaluate"
VARIANTS = ("self", "teacher_reward", "teacher_demo")
EFT_SOURCES = ("auto", "oracle", "model", "none")
EFT_JUDGES = ("base", "sft_baseline")
PROMPT_SOURCES = ("self", "seed")
GEN_FIELDS = ("batch_size", "max_prompt_len", "prompt_buckets", "seed")


def model_stage(i: int) -> str:
  """The stage holding M_i (m1 = SFT, m2, m3, ... = DPO iterations)."""
  return f"m{i}"


def derive(config, pipeline: str, section: str | None, keep=()) -> ml_collections.ConfigDict:
  """A stage's config (`pit.stages.derive` with method 'self_rewarding')."""
  return stages.derive(config, pipeline, section, method=METHOD, keep=keep)


def _data_kind(config) -> str:
  src = sources.source_name(config.data)
  if src == "synthetic":
    return "synthetic"
  if src == "tfds" and config.data.tfds_name == "oasst1":
    return "oasst1"
  return "pairs"


def _eft_source(config) -> str:
  s = config.self_rewarding.eft_source
  if s == "auto":
    return "oracle" if _data_kind(config) == "synthetic" else "model"
  if s == "oracle" and _data_kind(config) != "synthetic":
    raise ValueError("self_rewarding.eft_source='oracle' needs the synthetic task (data.source="
                     "'synthetic'); use 'model' (the seed model's judgements) or 'none'")
  return s


def _check(config):
  sr = config.self_rewarding
  for field, value, allowed in (("variant", sr.variant, VARIANTS),
                                ("eft_source", sr.eft_source, EFT_SOURCES),
                                ("eft_judge", sr.eft_judge, EFT_JUDGES),
                                ("prompt_source", sr.prompt_source, PROMPT_SOURCES),
                                ("judge_prompt", sr.judge_prompt, ("full", "compact")),
                                ("fewshot_layout", sr.fewshot_layout,
                                 tuple(self_instruct.FEWSHOT_TEMPLATES))):
    if value not in allowed:
      raise ValueError(f"self_rewarding.{field}: {value!r} not in {allowed}")
  if sr.worked_judgements and _eft_source(config) != "oracle":
    raise ValueError("self_rewarding.worked_judgements needs the oracle's EFT data (the "
                     "synthetic task with eft_source 'oracle' or 'auto'); a model's own "
                     "judgements have no worked check line to teach")
  _eft_source(config)
  if sr.variant != "self" and not sr.teacher:
    raise ValueError(f"self_rewarding.variant={sr.variant!r} needs self_rewarding.teacher "
                     "(hf:DIR, gguf:FILE, checkpoint:DIR or a PIT workdir)")
  if int(sr.iterations) < 0:
    raise ValueError(f"self_rewarding.iterations must be >= 0, got {sr.iterations}")
  if int(sr.num_candidates) < 2 and sr.variant != "teacher_demo":
    raise ValueError("self_rewarding.num_candidates must be >= 2 (best vs worst needs two)")
  for field, temp in (("judge_samples", "judge_temperature"),
                      ("num_candidates", "candidate_temperature"),
                      ("eft_samples", "eft_temperature")):
    if int(sr[field]) > 1 and float(sr[temp]) <= 0:
      raise ValueError(f"self_rewarding.{field} > 1 needs {temp} > 0 (greedy decoding repeats "
                       "one answer)")
  for field, low in (("chunk", 1), ("new_prompts", 1), ("prompt_attempts", 1), ("shots", 1),
                     ("judge_samples", 1), ("eft_samples", 1)):
    if int(sr[field]) < low:
      raise ValueError(f"self_rewarding.{field} must be >= {low}, got {sr[field]}")
  if not 0.0 <= float(sr.dpo_eval_fraction) < 1.0:
    raise ValueError(f"self_rewarding.dpo_eval_fraction must be in [0, 1), got "
                     f"{sr.dpo_eval_fraction}")
  if config.model.head != "lm":
    raise ValueError("self_rewarding: model.head must be 'lm'")
  names = set(config.eval.judges)
  has_judge = (("oracle" in names and _data_kind(config) == "synthetic")
               or ("reward_model" in names and sr.reward_model_dir)
               or ("llm_judge" in names and sr.llm_judge))
  if not has_judge:
    raise ValueError("self_rewarding: the evaluation has no judge (eval.judges="
                     f"{tuple(config.eval.judges)}): the oracle judges only the synthetic task; "
                     "set self_rewarding.reward_model_dir (a PIT reward-model workdir) or "
                     "self_rewarding.llm_judge (hf:DIR, gguf:FILE or a PIT workdir) and name it "
                     "in eval.judges")


# ------------------------------------------------------------------------------ generation


# Sampling streams: every (stage kind, iteration) draws from its own seed range, far apart from
# the others' (`generation` seeds a chunk with seed + call * CALL_STRIDE + batch).
STREAMS = {"prompts": 1, "candidates": 2, "judgements": 3, "teacher": 4, "eft": 5,
           "judge_eval": 6, "evaluate": 7, "alpaca": 8}


def seed_offset(kind: str, iteration: int = 0) -> int:
  """The seed offset of a stage kind's samples in an iteration (< 2**31)."""
  return (STREAMS[kind] * 10 + int(iteration)) * 10_000_000


def _settings(sr, *, temperature: float, top_p: float, max_new_tokens: int,
              offset: int) -> generation.Settings:
  g = sr.generation
  return generation.Settings.from_config(g, temperature=float(temperature), top_p=float(top_p),
                                         max_new_tokens=int(max_new_tokens),
                                         seed=int(g.seed) + int(offset))


def _generator(rt, config, source: str, settings, samplers) -> generation.Generator:
  """A Generator of M_i (a stage directory), of M0 ('init': model.init_from, else random init)
  or of an external model ('ext:' + spec; its own tokenizer)."""
  if source.startswith("ext:"):
    mdef, params, tok = pretrained.load_lm(source[4:], rt.mesh, rt.rules,
                                           field="self_rewarding.teacher",
                                           compute_like=rt.mdef.cfg)
    return generation.Generator(generation.sampler_for(mdef, tok, rt.mesh, rt.rules, settings),
                                params, tok, settings)
  if source == "init":
    fn = pretrained.init_fn(rt, config)
    if fn is None:
      logging.warning("self_rewarding: M0 is a random initialisation (no model.init_from): "
                      "its judgements will not parse")
      params = init_params(rt.mdef, rt.mesh, rt.rules, 0)
    else:
      params = fn()
    return generation.Generator(generation.sampler_for(rt.mdef, rt.tokenizer, rt.mesh, rt.rules,
                                                       settings, samplers),
                                params, rt.tokenizer, settings)
  return generation.from_checkpoint(rt, source, settings, field=source, samplers=samplers)


def _judge_instruction(prompt: str) -> str:
  """The instruction as the judge prompt shows it: a plain-HH dialogue's turns as "Human: ..." /
  "Assistant: ..." lines (the dialogue markers would otherwise be read as turns of the judge
  prompt itself), anything else as it is."""
  if prompt.startswith("\n\nHuman:"):
    from pit.data.tokenizer import parse_plain_chat
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = parse_plain_chat(prompt)
    if len(turns) == 1:
      return turns[0][1]
    return "\n".join(f"{names[r]}: {t}" for r, t in turns)
  return prompt


def judge_prompt(prompt: str, response: str, compact: bool) -> str:
  """The additive 5-point judge prompt (`pit.data.judge`) for a candidate response."""
  return judge_prompts.render_judge_prompt(_judge_instruction(prompt), response, compact=compact)


def _judge_all(gen, items, k: int, compact: bool, directory: str, name: str, chunk: int):
  """k judgement texts per (prompt, response) item, resumable."""
  def fn(batch, c):
    texts = [judge_prompt(p, r, compact) for p, r in batch]
    if k == 1:
      return [[g] for g in gen(texts, c)]
    return [[g.text for g in draws] for draws in gen.sample(texts, k, c)]
  return resumable.map_chunks(directory, name, [list(x) for x in items], fn, chunk)


# ------------------------------------------------------------------------------ data


def _ranked_group(prompt: str, responses, reference) -> dict:
  return {"prompt": prompt, "responses": list(responses),
          "reference": [float(x) for x in reference]}


def _candidates_group(rng, prompt: str, k: int, task: str) -> dict:
  """k distinct responses of graded quality (as the EFT data's: 0-6 errors, 10 % random) ranked
  by the oracle; each also carries the oracle's own 0-5 points (`synthetic.judge_points`), the
  best a judge taught those points can do."""
  from pit.data import synthetic
  cands: list[str] = []
  while len(cands) < k:
    r = (synthetic.random_response(rng, task) if rng.random() < 0.1
         else synthetic.degrade(rng, prompt, int(rng.integers(0, 7))))
    if r not in cands:
      cands.append(r)
  g = _ranked_group(prompt, cands, [synthetic.oracle_score(prompt, r) for r in cands])
  g["points"] = [float(synthetic.judge_points(prompt, r)) for r in cands]
  return g


def _synthetic_data(c, counts) -> dict:
  from pit.data import synthetic
  dcfg, sr = c.data, c.self_rewarding
  task, seed = dcfg.synthetic_task, int(dcfg.seed)
  compact = sr.judge_prompt == "compact"
  ift = synthetic.ift_examples(int(dcfg.synthetic_train_size), seed, task)
  n_eval, n_groups = int(sr.eval_prompts), int(sr.judge_eval_groups)
  held = synthetic.eval_prompts(n_eval + n_groups, seed, task)
  eval_prompts, group_prompts = held[:n_eval], held[n_eval:]
  rng = np.random.default_rng([seed, 15])
  groups = [_candidates_group(rng, p, int(sr.judge_eval_candidates), task) for p in group_prompts]
  out = {"ift_train": ift,
         "ift_eval": [{"prompt": p, "response": synthetic.gold_response(p)} for p in eval_prompts],
         "eval_prompts": [{"prompt": p} for p in eval_prompts],
         "judge_eval": groups}
  if _eft_source(c) == "model":   # the seed model judges oracle-ranked training candidates
    train = [synthetic.make_prompt(rng, "train", task)
             for _ in range(int(sr.max_eft_groups) or 1000)]
    out["eft_groups"] = [_candidates_group(rng, p, int(sr.judge_eval_candidates), task)
                         for p in train]
  if _eft_source(c) == "oracle":
    worked = bool(sr.worked_judgements)
    rows = synthetic.eft_examples(int(sr.max_eft_rows) or int(dcfg.synthetic_train_size), seed,
                                  compact=compact, task=task, worked=worked)
    rows, bal = eft.balance_scores(rows, seed) if sr.eft_balance else (rows, {})
    counts["eft"] = {"source": "oracle", "rows": len(rows), "balance": bal}
    out["eft_train"] = [{"prompt": r["prompt"], "response": r["response"], "points": r["points"]}
                        for r in rows]
    out["eft_eval"] = [{"prompt": judge_prompt(g["prompt"], r, compact),
                        "response": synthetic.justification(g["prompt"], r, compact, worked)}
                       for g in groups for r in g["responses"]]
  return out


def _pairs_data(c, counts) -> dict:
  dcfg, sr = c.data, c.self_rewarding
  train, evals, reports = common.pair_splits(dcfg, sr.train_split, sr.eval_split, METHOD)
  render = lambda p: dcfg.prompt_format.format(prompt=p)
  counts["data"] = {k: r.as_dict() for k, r in reports.items()}
  n_ift = int(sr.max_ift) or len(train)
  n_groups = int(sr.max_eft_groups) or len(train)
  return {"ift_train": [{"prompt": render(p.prompt), "response": p.chosen} for p in train[:n_ift]],
          "ift_eval": [{"prompt": render(p.prompt), "response": p.chosen} for p in evals],
          "eft_groups": [_ranked_group(render(p.prompt), (p.chosen, p.rejected), (1.0, 0.0))
                         for p in train[:n_groups]],
          "eval_prompts": [{"prompt": render(p.prompt), "reference": p.chosen}
                           for p in evals[:int(sr.eval_prompts) or len(evals)]],
          "judge_eval": [_ranked_group(render(p.prompt), (p.chosen, p.rejected), (1.0, 0.0))
                         for p in evals[:int(sr.judge_eval_groups) or len(evals)]]}


def _oasst1_data(c, counts) -> dict:
  """OASST1 via its builder (configs 'ift' and 'eft'), rendered as the `load_sft` view renders
  it (a plain-HH user turn; the reply with a leading space); bad records counted (on_error)."""
  from pit.data import builders
  from pit.data.records import SkipReport
  from pit.data.tokenizer import render_plain_chat
  dcfg, sr = c.data, c.self_rewarding
  kw = sources._tfds_kwargs(dcfg, sr.train_split)
  kw.pop("config")
  name, split = kw.pop("name"), kw.pop("split")
  skips = SkipReport()
  get = lambda cfg, sp: builders.records(name, config=cfg, split=sp, on_error=dcfg.on_error,
                                         report=skips, **kw)
  ift, groups = get("ift", split), get("eft", split)
  if sr.eval_split:
    ift_eval, groups_eval = get("ift", sr.eval_split), get("eft", sr.eval_split)
  else:   # held out by message tree, so no prompt is on both sides
    trees = sorted({r["message_tree_id"] for r in ift} | {g["message_tree_id"] for g in groups})
    rng = np.random.default_rng(int(dcfg.seed))
    held = set(rng.permutation(trees)[:max(1, int(len(trees) * float(dcfg.eval_fraction)))])
    ift_eval = [r for r in ift if r["message_tree_id"] in held]
    groups_eval = [g for g in groups if g["message_tree_id"] in held]
    ift = [r for r in ift if r["message_tree_id"] not in held]
    groups = [g for g in groups if g["message_tree_id"] not in held]
  render = lambda p: dcfg.prompt_format.format(prompt=render_plain_chat([("user", p)]))
  space = lambda t: t if t[:1].isspace() else " " + t

  def as_group(g):
    rs = builders.unzip(g["responses"]) if isinstance(g["responses"], dict) else g["responses"]
    return _ranked_group(render(g["prompt"]), [space(r["text"]) for r in rs],
                         rm_agreement.reference_from_ranks([r["rank"] for r in rs]))
  counts["data"] = {"ift_train": len(ift), "ift_eval": len(ift_eval), "eft_groups": len(groups),
                    "eft_groups_eval": len(groups_eval), "skipped": skips.as_dict()}
  n_eval = int(sr.eval_prompts) or len(ift_eval)
  return {"ift_train": [{"prompt": render(r["prompt"]), "response": space(r["response"])}
                        for r in ift[:int(sr.max_ift) or len(ift)]],
          "ift_eval": [{"prompt": render(r["prompt"]), "response": space(r["response"])}
                       for r in ift_eval],
          "eft_groups": [as_group(g) for g in groups[:int(sr.max_eft_groups) or len(groups)]],
          "eval_prompts": [{"prompt": render(r["prompt"]), "reference": space(r["response"])}
                           for r in ift_eval[:n_eval]],
          "judge_eval": [as_group(g) for g in groups_eval[:int(sr.judge_eval_groups) or None]]}


def data_stage(config):
  """Seed data -> JSONL files (module docstring); the summary counts every file's rows and what
  each filter kept and dropped."""
  c = derive(config, "data", None, keep=(
      "train_split", "eval_split", "max_ift", "max_eft_groups", "max_eft_rows", "eft_source",
      "eft_balance", "judge_prompt", "worked_judgements", "eval_prompts", "judge_eval_groups",
      "judge_eval_candidates",
      "ict_rows", "shots", "fewshot_layout"))
  kind = _data_kind(config)

  def run(ctx):
    counts: dict = {"kind": kind}
    files = {"synthetic": _synthetic_data, "pairs": _pairs_data, "oasst1": _oasst1_data}[kind](
        c, counts)
    sr = c.self_rewarding
    style = self_instruct.PromptStyle.infer([r["prompt"] for r in files["ift_train"]])
    seeds = []
    for r in files["ift_train"]:
      instr = style.instruction(r["prompt"])
      if instr is not None and instr not in seeds:
        seeds.append(instr)
    counts["seed_instructions_multiline_left_out"] = len(seeds) - len(
        self_instruct.usable_seeds(seeds, sr.fewshot_layout))
    seeds = self_instruct.usable_seeds(seeds, sr.fewshot_layout)
    files["seed_instructions"] = [{"instruction": s} for s in seeds]
    if int(sr.ict_rows) > 0:   # instruction creation, for models that cannot few-shot yet
      if len(seeds) <= int(sr.shots):
        raise ValueError(f"self_rewarding.ict_rows: {len(seeds)} seed instructions, need more "
                         f"than shots={sr.shots}")
      rng = np.random.default_rng([int(c.data.seed), 16])
      rows = []
      for _ in range(int(sr.ict_rows)):
        draw = self_instruct.draw_shots(rng, seeds, int(sr.shots) + 1)
        rows.append(self_instruct.training_row(draw[:-1], draw[-1], sr.fewshot_layout))
      files["ict_train"] = rows
    for name, rows in files.items():
      counts[name] = jsonio.write_jsonl_atomic(os.path.join(ctx.dir, f"{name}.jsonl"), rows) \
          if jax.process_index() == 0 else len(rows)
    counts["prompt_style"] = style.as_dict()
    return counts
  return stages.Stage(DATA, run, settings=c, inputs=())


def read_rows(path: str, fields=("prompt",), required: bool = True) -> list[dict]:
  """The JSON objects of a JSONL file this recipe wrote, each checked to have `fields`
  (DataError naming file, line and field otherwise). A missing file is FileNotFoundError naming
  it, or [] when not `required`."""
  import json
  if not os.path.exists(path):
    if required:
      raise FileNotFoundError(f"{path}: missing (an earlier stage should have written it)")
    return []
  out = []
  for lineno, raw in records.iter_lines(path):
    if not raw.strip():
      continue
    try:
      rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise records.DataError(f"{path}:{lineno}: malformed JSON ({e})") from None
    missing = [f for f in fields if not isinstance(rec, dict) or f not in rec]
    if missing:
      raise records.DataError(f"{path}:{lineno}: field {missing[0]!r} is missing")
    out.append(rec)
  return out


def _rows(ctx, stage: str, name: str, fields=("prompt",), required: bool = True) -> list[dict]:
  return read_rows(ctx.input_path(stage, f"{name}.jsonl"), fields, required)


# ------------------------------------------------------------------------------ seed models


def _check_judgements_fit(rc, rows, max_new_tokens: int, name: str):
  """Refuses EFT rows whose judgement the SFT would cut (data.max_response_len) or the judge
  could not write in full (self_rewarding.judge_max_new_tokens): a judge taught judgements cut
  before their "Score: k" learns to stop without a score. ValueError naming both settings."""
  if not rows:
    return
  tok = common.setup(rc).tokenizer
  stats = batching.TruncationStats()
  longest = 0
  for r in rows:
    ex = encoding.example(tok, rc.data.prompt_format.format(prompt=r["prompt"]), r["response"],
                          max_len=int(rc.data.max_len),
                          max_response_len=int(rc.data.max_response_len), stats=stats)
    longest = max(longest, int(ex.target_mask.sum()))
  if stats.responses_cut:
    raise ValueError(
        f"{name}: {stats.responses_cut} of {len(rows)} EFT judgements are longer than "
        f"data.max_response_len={rc.data.max_response_len} tokens (this stage's data section) "
        "and would be cut before their score; raise it")
  if longest > max_new_tokens:
    raise ValueError(
        f"{name}: the longest EFT judgement is {longest} tokens (eos included) but "
        f"self_rewarding.judge_max_new_tokens={max_new_tokens}: the judge could not write it; "
        "raise judge_max_new_tokens")


def _sft_stage(config, name: str, sources_: tuple[str, ...]):
  """An SFT stage (`pipeline=sft` on concatenated JSONL rows): M1 on IFT + EFT (+ instruction
  creation) or the SFT baseline on IFT only."""
  c = derive(config, "sft", "sft", keep=())
  eft_from_model = EFT in sources_
  inputs = (DATA, EFT) if eft_from_model else (DATA,)

  def run(ctx):
    rows, evals, mix, judge_rows = [], [], {}, []
    for src in sources_:
      stage, fname = (EFT, "eft_train") if src == EFT else (DATA, src)
      got = _rows(ctx, stage, fname, ("prompt", "response"))
      mix[fname] = len(got)
      rows += [{"prompt": r["prompt"], "response": r["response"]} for r in got]
      if fname == "eft_train":
        judge_rows += rows[-len(got):] if got else []
    for fname in ("ift_eval", "eft_eval") if EFT in sources_ or "eft_train" in sources_ else \
        ("ift_eval",):
      evals += [{"prompt": r["prompt"], "response": r["response"]}
                for r in _rows(ctx, DATA, fname, ("prompt", "response"), fname == "ift_eval")]
    if not rows:
      raise ValueError(f"{name}: no training rows ({mix})")
    rc = ml_collections.ConfigDict(c.to_dict())
    rc.data.update(source="jsonl", prompt_format="{prompt}")
    _check_judgements_fit(rc, judge_rows, int(config.self_rewarding.judge_max_new_tokens), name)
    rng = np.random.default_rng(int(c.data.seed))
    rows = [rows[int(i)] for i in rng.permutation(len(rows))]   # IFT and EFT interleaved
    rc.data.update(train_path=os.path.join(ctx.dir, "sft_train.jsonl"),
                   eval_path=os.path.join(ctx.dir, "sft_eval.jsonl") if evals else "")
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(rc.data.train_path, rows)
      if evals:
        jsonio.write_jsonl_atomic(rc.data.eval_path, evals)
    common.save_config(rc, ctx.dir)
    summary = sft_pipeline.run(rc, ctx.dir)
    return {**summary, "mix": mix, "eval_rows": len(evals)}
  return stages.Stage(name, run, settings=c, inputs=inputs)


def eft_stage(config):
  """EFT rows from the seed model's judgements of the ranked groups (`pit.data.eft`): M0
  (`eft_judge='base'`) or the SFT baseline writes `eft_samples` judgements per candidate."""
  c = derive(config, "generate", None, keep=(
      "eft_judge", "eft_samples", "eft_temperature", "eft_balance", "judge_prompt",
      "judge_max_new_tokens", "judge_top_p", "generation", "chunk"))
  from_baseline = config.self_rewarding.eft_judge == "sft_baseline"

  def run(ctx):
    sr = c.self_rewarding
    rt = common.setup(c)
    groups = _rows(ctx, DATA, "eft_groups", ("prompt", "responses", "reference"))
    k = int(sr.eft_samples)
    settings = _settings(sr, temperature=sr.eft_temperature, top_p=sr.judge_top_p,
                         max_new_tokens=sr.judge_max_new_tokens,
                         offset=seed_offset("eft"))
    gen = _generator(rt, c, ctx.input_dir(SFT_BASE) if from_baseline else "init", settings, {})
    items = [(g["prompt"], r) for g in groups for r in g["responses"]]
    texts = _judge_all(gen, items, k, sr.judge_prompt == "compact", ctx.dir, "judgements",
                       int(sr.chunk))
    nested, i = [], 0
    for g in groups:
      nested.append(texts[i:i + len(g["responses"])])
      i += len(g["responses"])
    compact = sr.judge_prompt == "compact"
    rows, counts = eft.from_judgements(groups, nested,
                                       render=lambda p, r: judge_prompt(p, r, compact))
    if sr.eft_balance and rows:
      rows, counts["balance"] = eft.balance_scores(rows, int(c.data.seed))
    counts["rows_kept"] = len(rows)
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "eft_train.jsonl"), rows)
    if not rows:
      logging.warning("eft: no judgement agreed with the human ranking (%s); M1 trains on IFT "
                      "only", counts)
    return {"source": "model", "judge": "sft_baseline" if from_baseline else "M0", **counts}
  inputs = (DATA, SFT_BASE) if from_baseline else (DATA,)
  return stages.Stage(EFT, run, settings=c, inputs=inputs)


# ------------------------------------------------------------------------------ iterations


ALIAS = "same_model_as.json"   # a DPO stage that trained nothing: its model is an earlier M_i's


def model_dir(ctx, name: str) -> str:
  """The directory holding model stage `name`'s weights (an input of the running stage): its
  own, or, for an iteration that had too few pairs to train on (`dpo_stage`), the directory of
  the model it kept (followed through every such iteration)."""
  path = ctx.input_dir(name)
  seen = set()
  while os.path.exists(os.path.join(path, ALIAS)):
    with open(os.path.join(path, ALIAS)) as f:
      target = json.load(f)["stage"]
    if target in seen:
      raise ValueError(f"{path}/{ALIAS}: a cycle of model aliases ({sorted(seen)})")
    seen.add(target)
    path = stages.stage_dir(ctx.workdir, target)
  return path


def _judge_source(config, ctx, i: int) -> str:
  if config.self_rewarding.variant == "teacher_reward":
    return "ext:" + config.self_rewarding.teacher
  return model_dir(ctx, model_stage(i))


def prompts_stage(config, i: int):
  """Self-instruction creation by M_i (`pit.data.self_instruct`): `prompt_attempts` few-shot
  prompts of `shots` seed instructions at T=`prompt_temperature`, top-p `prompt_top_p`; kept
  up to `new_prompts`. `prompt_source='seed'` takes the seed prompts instead (no creation)."""
  c = derive(config, "generate", None, keep=(
      "prompt_source", "prompt_attempts", "new_prompts", "shots", "fewshot_layout",
      "prompt_temperature", "prompt_top_p", "prompt_max_new_tokens", "min_prompt_chars",
      "max_prompt_chars", "generation", "chunk"))
  name = f"prompts_{i}"

  def run(ctx):
    sr = c.self_rewarding
    data = ctx.input_summary(DATA)
    style = self_instruct.PromptStyle(**data["prompt_style"])
    seeds = [r["instruction"] for r in _rows(ctx, DATA, "seed_instructions", ("instruction",))]
    evals = {self_instruct.normalize(style.instruction(r["prompt"]) or r["prompt"])
             for r in _rows(ctx, DATA, "eval_prompts")}
    rng = np.random.default_rng([int(c.data.seed), 17, i])
    if sr.prompt_source == "seed":
      order = rng.permutation(len(seeds))[:int(sr.new_prompts)]
      kept, counts = [seeds[int(j)] for j in order], {"source": "seed", "kept": len(order)}
    else:
      rt = common.setup(c)
      settings = _settings(sr, temperature=sr.prompt_temperature, top_p=sr.prompt_top_p,
                           max_new_tokens=sr.prompt_max_new_tokens,
                           offset=seed_offset("prompts", i))
      gen = _generator(rt, c, model_dir(ctx, model_stage(i)), settings, {})
      shots = [self_instruct.draw_shots(rng, seeds, int(sr.shots))
               for _ in range(int(sr.prompt_attempts))]
      fewshot = [self_instruct.fewshot_prompt(s, sr.fewshot_layout) for s in shots]
      # "continuations" (text + whether the model ended it): a "generations" file of an
      # earlier version holds texts only and is not reused
      done = resumable.map_chunks(
          ctx.dir, "continuations", fewshot,
          lambda b, ci: [{"text": g.text, "ended": g.ended} for g in gen.generations(b, ci)],
          int(sr.chunk))
      parsed = [self_instruct.parse_generated(g["text"], sr.fewshot_layout, g["ended"])
                for g in done]
      synthetic_valid = (self_instruct.synthetic_validity(c.data.synthetic_task)
                         if _data_kind(config) == "synthetic" else None)

      def valid(instr):
        if self_instruct.normalize(instr) in evals:
          return "held_out"
        return synthetic_valid(instr) if synthetic_valid else None
      kept, counts = self_instruct.filter_candidates(
          parsed, seeds, min_chars=int(sr.min_prompt_chars), max_chars=int(sr.max_prompt_chars),
          valid=valid, limit=int(sr.new_prompts))
      counts["source"] = "self"
    rows = [{"prompt": style.prompt(x), "instruction": x} for x in kept]
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "prompts.jsonl"), rows)
    if not rows:
      raise ValueError(f"{name}: no new prompt passed the filters ({counts}); the model cannot "
                       "write prompts yet (set self_rewarding.ict_rows for models trained from "
                       "scratch, or prompt_source='seed')")
    logging.info("%s: %s", name, counts)
    return counts
  return stages.Stage(name, run, settings=c, inputs=(DATA, model_stage(i)))


def candidates_stage(config, i: int):
  """`num_candidates` responses of M_i per new prompt at T=`candidate_temperature`, top-p
  `candidate_top_p`."""
  c = derive(config, "generate", None, keep=(
      "num_candidates", "candidate_temperature", "candidate_top_p", "max_new_tokens",
      "generation", "chunk"))
  name = f"candidates_{i}"

  def run(ctx):
    sr = c.self_rewarding
    rt = common.setup(c)
    prompts = [r["prompt"] for r in _rows(ctx, f"prompts_{i}", "prompts")]
    settings = _settings(sr, temperature=sr.candidate_temperature, top_p=sr.candidate_top_p,
                         max_new_tokens=sr.max_new_tokens,
                         offset=seed_offset("candidates", i))
    gen = _generator(rt, c, model_dir(ctx, model_stage(i)), settings, {})
    n = int(sr.num_candidates)
    cands = resumable.map_chunks(
        ctx.dir, "candidate_texts", prompts,
        lambda b, ci: [[g.text for g in d] for d in gen.sample(b, n, ci)], int(sr.chunk))
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "candidates.jsonl"),
                                [{"prompt": p, "candidates": cs} for p, cs in zip(prompts, cands)])
    lens = [len(x) for cs in cands for x in cs]
    return {"prompts": len(prompts), "candidates": sum(len(cs) for cs in cands),
            "empty": sum(not x.strip() for cs in cands for x in cs),
            "distinct_per_prompt": float(np.mean([len(set(cs)) for cs in cands])) if cands else 0.0,
            "mean_chars": float(np.mean(lens)) if lens else 0.0}
  return stages.Stage(name, run, settings=c, inputs=(f"prompts_{i}", model_stage(i)))


def judgements_stage(config, i: int):
  """Every candidate judged `judge_samples` times (T=`judge_temperature`) by M_i or the teacher;
  scores = mean of the readable ones (`pit.data.aift.candidate_scores`)."""
  c = derive(config, "generate", None, keep=(
      "variant", "teacher", "judge_samples", "judge_temperature", "judge_top_p",
      "judge_max_new_tokens", "judge_prompt", "generation", "chunk"))
  name = f"judgements_{i}"
  teacher = config.self_rewarding.variant == "teacher_reward"

  def run(ctx):
    sr = c.self_rewarding
    rt = common.setup(c)
    rows = _rows(ctx, f"candidates_{i}", "candidates", ("prompt", "candidates"))
    settings = _settings(sr, temperature=sr.judge_temperature, top_p=sr.judge_top_p,
                         max_new_tokens=sr.judge_max_new_tokens,
                         offset=seed_offset("judgements", i))
    gen = _generator(rt, c, _judge_source(config, ctx, i), settings, {})
    items = [(r["prompt"], x) for r in rows for x in r["candidates"]]
    texts = _judge_all(gen, items, int(sr.judge_samples), sr.judge_prompt == "compact", ctx.dir,
                       "judgement_texts", int(sr.chunk))
    out, counts, k = [], {"judgements": 0, "unparsed_judgements": 0, "unscored_candidates": 0}, 0
    for r in rows:
      n = len(r["candidates"])
      means, parsed, cnt = aift.candidate_scores(texts[k:k + n])
      k += n
      for key in counts:
        counts[key] += cnt[key]
      out.append({"prompt": r["prompt"], "candidates": r["candidates"],
                  "scores": [None if math.isnan(m) else m for m in means],
                  "parsed": parsed, "judgements": texts[k - n:k]})
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "judgements.jsonl"), out)
    scored = [m for r in out for m in r["scores"] if m is not None]
    return {**counts, "judge": "teacher" if teacher else f"M{i}",
            "score_histogram": {f"{s:g}": int(n) for s, n in
                                zip(*np.unique(np.round(scored), return_counts=True))}
            if scored else {}}
  inputs = (f"candidates_{i}",) + (() if teacher else (model_stage(i),))
  return stages.Stage(name, run, settings=c, inputs=inputs)


def teacher_stage(config, i: int):
  """The teacher's answer to every new prompt (teacher demonstration)."""
  c = derive(config, "generate", None, keep=("teacher", "teacher_temperature", "max_new_tokens",
                                             "generation", "chunk"))
  name = f"teacher_{i}"

  def run(ctx):
    sr = c.self_rewarding
    rt = common.setup(c)
    prompts = [r["prompt"] for r in _rows(ctx, f"prompts_{i}", "prompts")]
    settings = _settings(sr, temperature=sr.teacher_temperature, top_p=1.0,
                         max_new_tokens=sr.max_new_tokens,
                         offset=seed_offset("teacher", i))
    gen = _generator(rt, c, "ext:" + sr.teacher, settings, {})
    answers = resumable.map_chunks(ctx.dir, "answer_texts", prompts, lambda b, ci: gen(b, ci),
                                   int(sr.chunk))
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "answers.jsonl"),
                                [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)])
    return {"prompts": len(prompts), "empty": sum(not a.strip() for a in answers)}
  return stages.Stage(name, run, settings=c, inputs=(f"prompts_{i}",))


def pairs_stage(config, i: int):
  """AIFT pairs of iteration i (`pit.data.aift`), a `dpo_eval_fraction` share held out for the
  DPO's held-out margin and accuracy."""
  c = derive(config, "data", None, keep=("variant", "dpo_eval_fraction"))
  name = f"pairs_{i}"
  demo = config.self_rewarding.variant == "teacher_demo"

  def run(ctx):
    if demo:
      cands = _rows(ctx, f"candidates_{i}", "candidates", ("prompt", "candidates"))
      teach = {r["prompt"]: r["answer"] for r in _rows(ctx, f"teacher_{i}", "answers",
                                                        ("prompt", "answer"))}
      pairs, counts = aift.teacher_demo_pairs([r["prompt"] for r in cands],
                                              [teach[r["prompt"]] for r in cands],
                                              [r["candidates"][0] for r in cands])
    else:
      rows = _rows(ctx, f"judgements_{i}", "judgements", ("prompt", "candidates", "scores"))
      pairs, counts = aift.best_vs_worst_pairs(
          [r["prompt"] for r in rows], [r["candidates"] for r in rows],
          [[math.nan if s is None else float(s) for s in r["scores"]] for r in rows])
    if not pairs:   # the DPO stage keeps M_i (see dpo_stage); the report says why
      why = ("every teacher answer was empty or equal to the student's" if demo else
             "the judge gave no two candidates of a prompt different readable scores")
      logging.warning("%s: no preference pair (%s): %s", name, counts, why)
      counts["why_none"] = why
    rng = np.random.default_rng([int(c.data.seed), 18, i])
    n_eval = int(len(pairs) * float(c.self_rewarding.dpo_eval_fraction))
    order = rng.permutation(len(pairs))
    held = set(order[:n_eval].tolist())
    train = [p for j, p in enumerate(pairs) if j not in held]
    evals = [p for j, p in enumerate(pairs) if j in held]
    if jax.process_index() == 0:
      write_pairs_jsonl(os.path.join(ctx.dir, "pairs_train.jsonl"), train)
      write_pairs_jsonl(os.path.join(ctx.dir, "pairs_eval.jsonl"), evals)
    margins = [p.margin for p in pairs]
    return {**counts, "train_pairs": len(train), "eval_pairs": len(evals),
            "mean_margin": float(np.mean(margins)) if margins else float("nan")}
  inputs = ((f"candidates_{i}", f"teacher_{i}") if demo else (f"judgements_{i}",))
  return stages.Stage(name, run, settings=c, inputs=inputs)


def dpo_stage(config, i: int):
  """M_{i+1} = DPO on pairs_i from M_i, with M_i as the reference, for `dpo_epochs` epochs of
  the pairs (ceil(epochs x pairs / batch) steps, at most the dpo section's train.steps; 0: the
  section's steps). An iteration with fewer than `min_pairs` training pairs trains nothing:
  M_{i+1} is M_i (`same_model_as.json`, followed by `model_dir`), and its summary says why."""
  c = derive(config, "dpo", "dpo", keep=("dpo_epochs", "min_pairs"))
  name = model_stage(i + 1)

  def run(ctx):
    sr = c.self_rewarding
    rc = ml_collections.ConfigDict(c.to_dict())
    rc.data.update(source="jsonl", prompt_format="{prompt}",
                   train_path=ctx.input_path(f"pairs_{i}", "pairs_train.jsonl"),
                   eval_path=ctx.input_path(f"pairs_{i}", "pairs_eval.jsonl"))
    n_train = len(read_pairs_jsonl(rc.data.train_path))
    start = model_dir(ctx, model_stage(i))
    if n_train < int(sr.min_pairs):
      kept = os.path.basename(start)
      if jax.process_index() == 0:
        stages.write_json_atomic(os.path.join(ctx.dir, ALIAS), {"stage": kept})
      logging.warning("%s: %d training pairs (< self_rewarding.min_pairs=%d): no DPO, %s is %s",
                      name, n_train, int(sr.min_pairs), name, kept)
      return {"trained": False, "train_pairs": n_train, "same_model_as": kept,
              "reason": f"{n_train} training pairs < min_pairs {int(sr.min_pairs)}"}
    if not read_pairs_jsonl(rc.data.eval_path):   # no held-out pairs: none split off either
      rc.data.update(eval_path="", eval_fraction=0.0)
    if float(sr.dpo_epochs) > 0:
      steps = min(int(rc.train.steps),
                  max(1, math.ceil(float(sr.dpo_epochs) * n_train / int(rc.train.batch_size))))
      rc.train.steps = steps
      rc.optim.decay_steps = steps
      rc.checkpoint.every = max(1, min(int(rc.checkpoint.every), steps))
      rc.train.eval_every = min(int(rc.train.eval_every) or steps, steps)
      rc.optim.warmup_steps = min(int(rc.optim.warmup_steps), steps - 1)
    rc.dpo.init_checkpoint = start
    rc.dpo.reference_checkpoint = start
    common.save_config(rc, ctx.dir)
    return {**dpo_pipeline.run(rc, ctx.dir), "trained": True, "steps": int(rc.train.steps)}
  return stages.Stage(name, run, settings=c, inputs=(f"pairs_{i}", model_stage(i)))


# ------------------------------------------------------------------------------ evaluation


def _models(config) -> list[str]:
  """The systems of a run: M1..M_{iterations+1}."""
  return [model_stage(i) for i in range(1, int(config.self_rewarding.iterations) + 2)]


def _judges_evaluated(config) -> list[str]:
  out = _models(config)
  if config.self_rewarding.sft_baseline:
    out.append(SFT_BASE)
  return out


def group_scores(groups, means) -> tuple[list, list, int]:
  """(model score groups, reference groups, unscored candidates left out): each held-out group's
  candidates with a readable mean score (groups left with < 2 are skipped by `agreement`)."""
  model, ref, unscored, k = [], [], 0, 0
  for g in groups:
    n = len(g["responses"])
    ms = means[k:k + n]
    k += n
    keep = [j for j, m in enumerate(ms) if not math.isnan(m)]
    unscored += n - len(keep)
    model.append([ms[j] for j in keep])
    ref.append([g["reference"][j] for j in keep])
  return model, ref, unscored


def judge_eval_stage(config):
  """Each model's judging ability on the held-out ranked groups: it judges every candidate
  `judge_samples` times (the self-judging settings); the mean readable score is compared with
  the human / oracle ranking (`pit.eval.rm_agreement`). Candidates without a readable score are
  left out and counted."""
  c = derive(config, "generate", None, keep=(
      "judge_samples", "judge_temperature", "judge_top_p", "judge_max_new_tokens", "judge_prompt",
      "generation", "chunk", "sft_baseline", "iterations"))
  names = _judges_evaluated(config)

  def run(ctx):
    sr = c.self_rewarding
    rt = common.setup(c)
    groups = _rows(ctx, DATA, "judge_eval", ("prompt", "responses", "reference"))
    items = [(g["prompt"], r) for g in groups for r in g["responses"]]
    settings = _settings(sr, temperature=sr.judge_temperature, top_p=sr.judge_top_p,
                         max_new_tokens=sr.judge_max_new_tokens,
                         offset=seed_offset("judge_eval"))
    samplers, out, judged = {}, {}, {}
    for name in names:
      src = model_dir(ctx, name)
      if src in judged:   # an iteration that trained nothing: the same model, same seeds
        out[name] = {**out[judged[src]], "same_model_as": judged[src]}
        logging.info("judge_eval %s: the same model as %s (its figures)", name, judged[src])
        continue
      judged[src] = name
      gen = _generator(rt, c, src, settings, samplers)
      texts = _judge_all(gen, items, int(sr.judge_samples), sr.judge_prompt == "compact", ctx.dir,
                         f"judgements_{name}", int(sr.chunk))
      means, _, counts = aift.candidate_scores(texts)
      model, ref, unscored = group_scores(groups, means)
      try:
        res = rm_agreement.agreement(model, ref).as_dict()
      except ValueError as e:   # no group kept two scored candidates
        res = {"error": str(e)}
      out[name] = {**res, **counts, "candidates": len(items), "unscored_left_out": unscored}
      if _data_kind(c) == "synthetic":   # which criteria the judge gets wrong (the oracle's)
        from pit.data import synthetic
        out[name]["criteria"] = synthetic.criterion_accuracy(items, texts)
      logging.info("judge_eval %s: %s", name, out[name])
    ceiling = None
    if groups and all("points" in g for g in groups):   # the oracle's own 0-5 points as a judge
      ceiling = rm_agreement.agreement([g["points"] for g in groups],
                                       [g["reference"] for g in groups]).as_dict()
    return {"groups": len(groups), "models": out, "oracle_points": ceiling}
  return stages.Stage(JUDGE_EVAL, run, settings=c,
                      inputs=(DATA,) + tuple(names))


def comparisons(config) -> list[tuple[str, str]]:
  """`self_rewarding.comparisons`, else each iteration against the one before, the last against
  M1, and M1 and the last against the SFT baseline when it is trained."""
  sr = config.self_rewarding
  if sr.comparisons:
    return [tuple(x) for x in sr.comparisons]
  ms = _models(config)
  out = [(ms[j], ms[j - 1]) for j in range(1, len(ms))]
  if len(ms) > 2:
    out.append((ms[-1], ms[0]))
  if sr.sft_baseline:
    out += [(m, SFT_BASE) for m in dict.fromkeys((ms[0], ms[-1]))]
  return out


def display_name(name: str) -> str:
  """"m2" -> "M2", "sft_baseline" -> "SFT baseline"."""
  return "SFT baseline" if name == SFT_BASE else name.upper()


def _mean_interval(x, confidence: float) -> dict:
  from scipy.stats import t as student_t
  x = np.asarray([v for v in x if not math.isnan(v)], np.float64)
  n = int(x.size)
  if n < 2:
    return {"mean": float(x.mean()) if n else math.nan, "low": math.nan, "high": math.nan, "n": n}
  se = float(x.std(ddof=1) / math.sqrt(n))
  half = float(student_t.ppf(0.5 + confidence / 2, n - 1) * se)
  return {"mean": float(x.mean()), "se": se, "low": float(x.mean()) - half,
          "high": float(x.mean()) + half, "n": n}


def evaluate_stage(config, before: list[str]):
  """Every system (M1..M_{N+1}, the SFT baseline) decoded at each of `eval.temperatures` on the
  held-out prompts (same settings for all), `comparisons` judged both ways round by the run's
  judges with intervals, the oracle's mean score per system, AlpacaEval outputs when
  `alpaca_eval_path` is set, and WORKDIR/report.md."""
  c = derive(config, "generate", None, keep=(
      "dataset_name", "max_new_tokens", "eval_top_p", "generation", "chunk", "comparisons",
      "reward_model_dir", "llm_judge", "alpaca_eval_path", "alpaca_eval_max",
      "alpaca_max_new_tokens", "sft_baseline", "iterations", "variant"))
  c.eval = config.eval.to_dict()
  systems = _judges_evaluated(config)
  comps = comparisons(config)
  for a, b in comps:
    for s in (a, b):
      if s not in systems:
        raise ValueError(f"self_rewarding.comparisons: no system {s!r} (have {systems})")

  def run(ctx):
    sr = c.self_rewarding
    rt = common.setup(c)
    prompts = [r["prompt"] for r in _rows(ctx, DATA, "eval_prompts")]
    decodings = {evaluator.decoding_name(t): float(t) for t in c.eval.temperatures}
    outputs: dict = {s: {} for s in systems}
    samplers, decoded = {}, {}
    for s in systems:
      src = model_dir(ctx, s)
      if src in decoded:   # an iteration that trained nothing: the same model, same seeds
        outputs[s] = outputs[decoded[src]]
        logging.info("evaluate %s: the same model as %s (its outputs)", s, decoded[src])
        continue
      decoded[src] = s
      for dec, temp in decodings.items():
        settings = _settings(sr, temperature=temp, top_p=sr.eval_top_p if temp > 0 else 1.0,
                             max_new_tokens=sr.max_new_tokens,
                             offset=seed_offset("evaluate"))
        gen = None

        def fn(batch, ci, s=s, settings=settings):
          nonlocal gen
          if gen is None:
            gen = _generator(rt, c, model_dir(ctx, s), settings, samplers)
          return gen(batch, ci)
        outputs[s][dec] = resumable.map_chunks(ctx.dir, f"outputs_{s}_{dec}", prompts, fn,
                                               int(sr.chunk))
    judges = _eval_judges(c, rt)
    rows = evaluator.evaluate(prompts, outputs, comps, judges,
                              confidence=float(c.eval.confidence),
                              resamples=int(c.eval.bootstrap), seed=int(c.eval.seed),
                              display={s: display_name(s) for s in systems})
    means = {}
    for jname, j in judges.items():
      if j.kind != "scalar":
        continue
      means[jname] = {dec: {s: _mean_interval(j.score(prompts, outputs[s][dec]),
                                              float(c.eval.confidence)) for s in systems}
                      for dec in decodings}
    alpaca = {}
    if sr.alpaca_eval_path:
      alpaca = _alpaca_outputs(c, ctx, rt, systems, samplers)
    summaries = {n: ctx.input_summary(n) for n in before}
    if jax.process_index() == 0:
      for s in systems:
        for dec in decodings:
          alpaca_eval.write_outputs(os.path.join(ctx.dir, f"outputs_{s}_{dec}.json"), prompts,
                                    outputs[s][dec], generator=f"self_rewarding_{s}_{dec}")
      _write_report(ctx.workdir, c, summaries, rows, means, prompts, outputs, decodings, systems)
    return {"rows": [r.as_dict() for r in rows], "mean_scores": means, "alpaca_eval": alpaca,
            "unjudged": {n: j.unjudged for n, j in judges.items()},
            "report": os.path.join(ctx.workdir, "report.md")}
  return stages.Stage(EVAL, run, settings=c, inputs=tuple(before))


def _eval_judges(c, rt) -> dict:
  """The evaluation's judges (`eval.judges`): the oracle (synthetic task), the reward model of
  `reward_model_dir`, and an LLM judge from `llm_judge` (any model spec, with its own tokenizer
  and chat template) asked "A or B?" both ways round (`pit.eval.llm_judge.LMJudge.pairwise`)."""
  from pit.eval.llm_judge import LMJudge
  sr = c.self_rewarding
  names = tuple(c.eval.judges)
  judges = judges_lib.from_config(tuple(n for n in names if n != "llm_judge"), rt=rt,
                                  data_source=c.data.source,
                                  reward_model_dir=sr.reward_model_dir,
                                  batch_size=int(sr.generation.batch_size))
  if "llm_judge" in names and sr.llm_judge:
    mdef, params, tok = pretrained.load_lm(sr.llm_judge, rt.mesh, rt.rules, chat_template=False,
                                           field="self_rewarding.llm_judge",
                                           compute_like=rt.mdef.cfg)
    judges["llm_judge"] = judges_lib.PairwiseLLMJudge(LMJudge(
        mdef, params, tok, rt.mesh, rt.rules,
        chat=bool(getattr(getattr(tok, "tok", None), "chat_template", None)),   # instruct models
        batch_size=int(sr.generation.batch_size)))
  if not judges:
    raise ValueError(f"evaluate: none of eval.judges={names} is available in this run")
  return judges


def _alpaca_outputs(c, ctx, rt, systems, samplers) -> dict:
  """Greedy answers of every system to the AlpacaEval instructions (the `instruction` field of
  `alpaca_eval_path`, an AlpacaEval outputs file: 805 for the full set), in AlpacaEval's format
  (WORKDIR/evaluate/alpaca_eval/<system>.json)."""
  sr = c.self_rewarding
  recs = alpaca_eval.read_outputs(sr.alpaca_eval_path)
  if int(sr.alpaca_eval_max):
    recs = recs[:int(sr.alpaca_eval_max)]
  instructions = [r.instruction for r in recs]
  style = self_instruct.PromptStyle(**ctx.input_summary(DATA)["prompt_style"])
  texts = [style.prompt(x) for x in instructions]
  settings = _settings(sr, temperature=0.0, top_p=1.0, max_new_tokens=sr.alpaca_max_new_tokens,
                       offset=seed_offset("alpaca"))
  out = {}
  for s in systems:
    gen = _generator(rt, c, model_dir(ctx, s), settings, samplers)
    answers = resumable.map_chunks(ctx.dir, f"alpaca_{s}", texts, lambda b, ci: gen(b, ci),
                                   int(sr.chunk))
    path = os.path.join(ctx.dir, "alpaca_eval", f"{s}.json")
    if jax.process_index() == 0:
      alpaca_eval.write_outputs(path, instructions, answers, generator=f"self_rewarding_{s}",
                                datasets=[r.dataset for r in recs])
    out[s] = {"path": path, "n": len(answers)}
  return out


def _write_report(workdir, c, summaries, rows, means, prompts, outputs, decodings, systems):
  sr = c.self_rewarding
  ms = [s for s in systems if s != SFT_BASE]
  plots, lines = {}, []
  for jname, by_dec in means.items():
    plots[f"{jname} mean score per iteration"] = {
        dec: (list(range(1, len(ms) + 1)), [by_dec[dec][s]["mean"] for s in ms])
        for dec in by_dec}
    lines += [f"## Mean {jname} score (95% t-interval), held-out prompts\n",
              "| system | " + " | ".join(by_dec) + " |", "|---|" + "---|" * len(by_dec)]
    for s in systems:
      cells = [f"{v['mean']:.4f} [{v['low']:.4f}, {v['high']:.4f}] (n={v['n']})"
               for v in (by_dec[d][s] for d in by_dec)]
      lines.append(f"| {display_name(s)} | " + " | ".join(cells) + " |")
    lines.append("")
  je = summaries.get(JUDGE_EVAL, {}).get("models", {})
  scored = {n: r for n, r in je.items() if "pairwise_accuracy" in r}
  if scored:
    agree = {display_name(n): rm_agreement.AgreementResult(**{
        f.name: r[f.name] for f in dataclasses.fields(rm_agreement.AgreementResult)})
        for n, r in scored.items()}
    ceiling = summaries.get(JUDGE_EVAL, {}).get("oracle_points")
    if ceiling:   # what a judge that scores exactly the taught 0-5 points would get
      agree["oracle points (ceiling)"] = rm_agreement.AgreementResult(**{
          f.name: ceiling[f.name] for f in dataclasses.fields(rm_agreement.AgreementResult)})
    lines += ["## Judging ability on held-out ranked responses (each model judges with the "
              "self-judging settings)\n", report.agreement_table(agree),
              "unreadable judgements (left out): " + ", ".join(
                  f"{display_name(n)} {r['unparsed_judgements']} of {r['judgements']}"
                  for n, r in je.items()) + "\n"]
    crit = {n: r["criteria"] for n, r in scored.items() if r.get("criteria", {}).get("readable")}
    if crit:   # synthetic task: which of the rubric's checks each judge gets right
      from pit.data import synthetic
      lines += ["Criterion by criterion (synthetic task): how often the judge's claim about the "
                "response is true, % of readable justifications; in brackets the rate of always "
                "giving the commoner verdict\n",
                "| criterion | " + " | ".join(display_name(n) for n in crit) + " |",
                "|---|" + "---|" * len(crit)]
      for k in synthetic.CRITERIA:
        lines.append(f"| {k} | " + " | ".join(
            f"{r[k]['accuracy']:.1f} ({r[k]['majority']:.1f})" for r in crit.values()) + " |")
      lines.append("")
    acc = [float(scored[m]["pairwise_accuracy"]) if m in scored else math.nan for m in ms]
    plots["judge pairwise accuracy per iteration (%)"] = {
        "pairwise accuracy": (list(range(1, len(ms) + 1)), acc)}
  lines += ["## Stages\n", "| stage | key figures |", "|---|---|"]
  for name, s in summaries.items():
    lines.append(f"| {name} | {_stage_figures(name, s)} |")
  lines.append("")
  for dec in decodings:
    lines.append(report.examples_markdown(prompts, outputs, dec,
                                          display={s: display_name(s) for s in systems}))
  report.write_report(
      workdir, title=f"Self-Rewarding LM run report: {sr.dataset_name or c.data.source}",
      table_md=("## Head to head: win / lose / Δ (%), judged both ways round, both systems "
                "decoded the same way\n\n" + evaluator.table_markdown(rows)),
      metrics=plots, notes="\n".join(lines),
      xlabels={t: "iteration (M_i)" for t in plots})


def _stage_figures(name: str, s: dict) -> str:
  pick = lambda d, keys: ", ".join(f"{k} {d[k]:.4g}" if isinstance(d.get(k), float) else
                                   f"{k} {d[k]}" for k in keys if k in d)
  if name == DATA:
    return pick(s, ("ift_train", "eft_train", "eft_groups", "ict_train", "seed_instructions",
                    "eval_prompts", "judge_eval"))
  if name.startswith("prompts_"):
    return ", ".join(f"{k} {v}" for k, v in s.items() if v)
  if name == JUDGE_EVAL:
    return "; ".join(f"{display_name(m)}: pairwise accuracy "
                     f"{float(r.get('pairwise_accuracy', 'nan')):.1f} %, "
                     f"{r.get('unparsed_judgements', 0)} unreadable of {r.get('judgements', 0)}"
                     for m, r in s.get("models", {}).items())
  if name.startswith(("candidates_", "judgements_", "pairs_", "teacher_")) or name == EFT:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in s.items() if not isinstance(v, (dict, list)))
  if s.get("trained") is False:   # an iteration with too few pairs: the model was kept
    return f"no DPO ({s.get('reason')}): the same model as {display_name(s['same_model_as'])}"
  fe = s.get("final_eval") or {}
  ft = s.get("final_train") or {}
  return ("eval " + pick(fe, ("nll", "loss", "accuracy", "margin")) + "; train " +
          pick(ft, ("loss", "token_accuracy", "accuracy", "margin", "logps_chosen")))


# ------------------------------------------------------------------------------ entry


def build_stages(config) -> list[stages.Stage]:
  """The recipe's stages in order (module docstring)."""
  sr = config.self_rewarding
  eft_src = _eft_source(config)
  out = [data_stage(config)]
  if sr.sft_baseline or (eft_src == "model" and sr.eft_judge == "sft_baseline"):
    out.append(_sft_stage(config, SFT_BASE, ("ift_train",)))
  if eft_src == "model":
    out.append(eft_stage(config))
  m1_rows = ("ift_train",) + ((EFT,) if eft_src == "model" else
                              ("eft_train",) if eft_src == "oracle" else ())
  if int(sr.ict_rows) > 0:
    m1_rows += ("ict_train",)
  out.append(_sft_stage(config, model_stage(1), m1_rows))
  for i in range(1, int(sr.iterations) + 1):
    out += [prompts_stage(config, i), candidates_stage(config, i)]
    if sr.variant == "teacher_demo":
      out.append(teacher_stage(config, i))
    else:
      out.append(judgements_stage(config, i))
    out += [pairs_stage(config, i), dpo_stage(config, i)]
  out.append(judge_eval_stage(config))
  out.append(evaluate_stage(config, [s.name for s in out]))
  return out


def run(config, workdir: str):
  """Self-Rewarding end to end in `workdir` (module docstring); returns the stage names and the
  report's path."""
  _check(config)
  return stages.run_recipe(config, workdir, build_stages(config), METHOD)
