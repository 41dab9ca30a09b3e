"""`pipeline=pit`: PIT end to end (Wang et al., 2023), the project's main job.

Every stage runs in WORKDIR/<stage>/ through the shared pipelines, is skipped
once done (`pit.stages`) and resumes from its own checkpoints when interrupted:

  data        preference pairs (any `data.source`) -> JSONL files the stages read
  policy_sft  M_P, the "Original": SFT on x -> y_w
  pit_sft     M_PIT(y | x, y_ref): SFT on policy_prompt(x, y_l) -> y_w
  reward      an ordinary Bradley-Terry reward model (an evaluation judge)
  gap_reward  r_gap(x, y, y_ref), trained on the four orderings
  rl_<k>      PPO of M_PIT maximising r_gap(x, y, y_ref) - beta KL(M_PIT^RL || M_PIT^SFT);
              round k takes y_ref from the data ({y_l, y_w}) or from M_P's own samples
              (`pit.rl_rounds`); each round starts from the previous round's policy
  inference   at every decoding of `eval.temperatures` (t0 greedy, t1 sampled): the Original
              y_0 ~ M_P(x) and, decoded the same way from that y_0, PIT
              y_{t+1} ~ M_PIT(x, y_t) with the gap-reward stopping rule, without it, and
              with the SFT-only M_PIT; Self-Refine
  evaluate    `eval.comparisons` at every decoding (never across decodings), judged both
              ways round by `eval.judges` (the oracle on the synthetic task, the reward model,
              an LLM judge from `pit.llm_judge_dir`) with 95% intervals and paired
              differences (`pit.eval.evaluator`); AlpacaEval files; WORKDIR/report.md with
              PNG plots

Prompts are rendered with `data.prompt_format` once, in the data stage; every
later stage sees the rendered text. Per-stage settings (steps, learning rate,
model head, ...) are `pit.<stage>` sub-configs merged over the root config.
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from pit import generation, improve, jsonio, pit_format, stages
from pit.data import records
from pit.data.pairs import read_pairs_jsonl, write_pairs_jsonl
from pit.eval import alpaca_eval, evaluator, report
from pit.eval import judges as judges_lib
from pit.pipelines import common
from pit.pipelines import gap_reward as gap_reward_pipeline
from pit.pipelines import improve as improve_pipeline
from pit.pipelines import ppo as ppo_pipeline
from pit.pipelines import reward as reward_pipeline
from pit.pipelines import sft as sft_pipeline
from pit.rl import scorers
from pit.rl.gap_scorer import gap_reward_scorer_from_dir

DATA, POLICY, PIT_SFT, REWARD, GAP, INFER, EVAL = (
    "data", "policy_sft", "pit_sft", "reward", "gap_reward", "inference", "evaluate")
REFERENCE_SOURCES = ("data", "policy")
# The `improve` fields that decide how M_P's references are sampled in a 'policy' RL round.
REFERENCE_SAMPLING = ("max_new_tokens", "top_k", "top_p", "seed", "batch_size", "max_prompt_len",
                      "prompt_buckets")
SYSTEMS = ("original", "pit", "pit_no_stop", "pit_sft", "self_refine")


def derive(config, pipeline: str, section: str | None, keep=()) -> ml_collections.ConfigDict:
  """A stage's config: the root config with `pit.<section>` merged in and `pit` reduced to
  the fields in `keep` (`pit.stages.derive`)."""
  return stages.derive(config, pipeline, section, method="pit", keep=keep)


def _check(config):
  pcfg = config.pit
  pit_format.template(pcfg.template)
  for k, src in enumerate(pcfg.rl_rounds):
    if src not in REFERENCE_SOURCES:
      raise ValueError(f"pit.rl_rounds[{k}]: {src!r} not in {REFERENCE_SOURCES}")
  if config.model.head != "lm":
    raise ValueError("pit: model.head is the policies' ('lm'); reward stages set 'scalar' "
                     "in pit.reward / pit.gap_reward")
  if pcfg.get("require_pretrained", False) and not config.model.get("init_from", ""):
    raise ValueError("pit: this preset starts from a pretrained model: give "
                     "--config.model.init_from=hf:DIR (or gguf:FILE / checkpoint:DIR)")


# ------------------------------------------------------------------------------ data


def data_stage(config):
  """Preference pairs (any `data.source`) -> the JSONL files every later stage reads:
  pairs_{train,eval}, policy_sft_{train,eval} (x -> y_w), pit_sft_{train,eval}
  (policy_prompt(x, y_l) -> y_w, the M_PIT SFT rows of Wang et al. 2023 §3.1) and
  eval_set (the held-out prompts of inference and evaluation). Raises DataError (bad
  records under data.on_error='raise', naming file and line) and ValueError (no held-out
  pairs)."""
  c = derive(config, "data", None, keep=("train_split", "eval_split", "template",
                                         "max_eval_prompts"))

  def run(ctx):
    dcfg, pcfg, d = c.data, c.pit, ctx.dir
    train, evals, reports = common.pair_splits(dcfg, pcfg.train_split, pcfg.eval_split, "pit")
    train = common.render_pairs(train, dcfg.prompt_format)
    evals = common.render_pairs(evals, dcfg.prompt_format)
    tmpl = pcfg.template
    counts = {
        "pairs_train": write_pairs_jsonl(os.path.join(d, "pairs_train.jsonl"), train),
        "pairs_eval": write_pairs_jsonl(os.path.join(d, "pairs_eval.jsonl"), evals)}
    for name, ps in (("train", train), ("eval", evals)):
      counts[f"policy_sft_{name}"] = jsonio.write_jsonl_atomic(
          os.path.join(d, f"policy_sft_{name}.jsonl"),
          [{"prompt": p.prompt, "response": p.chosen} for p in ps])
      counts[f"pit_sft_{name}"] = jsonio.write_jsonl_atomic(
          os.path.join(d, f"pit_sft_{name}.jsonl"),
          [{"prompt": pit_format.policy_prompt(p.prompt, p.rejected, tmpl), "response": p.chosen}
           for p in ps])
    n_eval = int(pcfg.max_eval_prompts) or len(evals)
    counts["eval_set"] = jsonio.write_jsonl_atomic(
        os.path.join(d, "eval_set.jsonl"),
        [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in evals[:n_eval]])
    for split, rep in reports.items():
      rep.log(f"pit data ({split})")
    return {"counts": counts, "data": {k: r.as_dict() for k, r in reports.items()}}
  return stages.Stage(DATA, run, settings=c, inputs=())   # its data files: by content


# ------------------------------------------------------------------------------ training stages


def _with_jsonl(c, ctx, train_file: str, eval_file: str):
  """A copy of `c` reading the data stage's files (paths are filled at run time, so the
  stage's settings, and its fingerprint, do not depend on where the workdir is)."""
  c = ml_collections.ConfigDict(c.to_dict())
  c.data.source = "jsonl"
  c.data.train_path = ctx.input_path(DATA, train_file)
  c.data.eval_path = ctx.input_path(DATA, eval_file)
  c.data.prompt_format = "{prompt}"
  return c


def sft_stage(config, name: str, stem: str):
  """M_P (`policy_sft`: x -> y_w) or M_PIT^SFT (`pit_sft`: policy_prompt(x, y_l) -> y_w,
  Wang et al. 2023 §3.1, optionally from M_P's weights) by `pipeline=sft` on the data stage's
  files; its summary's `final_eval.nll` is the held-out NLL in nats per response token."""
  init_from_policy = name == PIT_SFT and bool(config.pit.pit_sft_init_from_policy)
  c = derive(config, "sft", name, keep=("pit_sft_init_from_policy",) if name == PIT_SFT else ())

  def run(ctx):
    rc = _with_jsonl(c, ctx, f"{stem}_train.jsonl", f"{stem}_eval.jsonl")
    if init_from_policy:
      rc.train.init_checkpoint = ctx.input_dir(POLICY)
    common.save_config(rc, ctx.dir)
    return sft_pipeline.run(rc, ctx.dir)
  inputs = (DATA, POLICY) if init_from_policy else (DATA,)
  return stages.Stage(name, run, settings=c, inputs=inputs)


def reward_stage(config, name: str, pipeline: str, run_fn):
  """The ordinary reward model (`reward`: Bradley-Terry, an evaluation judge; scores are
  unbounded reals) or r_gap (`gap_reward`: Wang et al. 2023 Eq. 1's orderings
  r(x,y_w,y_l) >= r(x,y_w,y_w) ~ r(x,y_l,y_l) >= r(x,y_l,y_w)) on the data stage's pairs;
  trunks from M_P / M_PIT^SFT with `pit.reward_init_from_policies`. Raises ValueError when
  the stage's model.head is not 'scalar'."""
  keep = ("reward_init_from_policies",) + (("template",) if pipeline == "gap_reward" else ())
  c = derive(config, pipeline, name, keep=keep)
  if c.model.head != "scalar":
    raise ValueError(f"pit.{name}.model.head must be 'scalar', got {c.model.head!r}")
  if pipeline == "gap_reward":
    c.gap_reward.template = config.pit.template
  init = {"reward": POLICY, "gap_reward": PIT_SFT}[pipeline] \
      if config.pit.reward_init_from_policies else None

  def run(ctx):
    rc = _with_jsonl(c, ctx, "pairs_train.jsonl", "pairs_eval.jsonl")
    if init:  # the RM reads what M_P / M_PIT were trained on
      getattr(rc, pipeline).init_checkpoint = ctx.input_dir(init)
    common.save_config(rc, ctx.dir)
    return run_fn(rc, ctx.dir)
  return stages.Stage(name, run, settings=c, inputs=(DATA, init) if init else (DATA,))


def rl_name(k: int) -> str:
  """The stage of RL round k (0-based): rl_1, rl_2, ..."""
  return f"rl_{k + 1}"


def final_policy_stage(config) -> str:
  """The stage holding the final M_PIT: the last RL round, or M_PIT^SFT without RL."""
  rounds = len(config.pit.rl_rounds)
  return rl_name(rounds - 1) if rounds else PIT_SFT


def _references(c, ctx, rt, k: int, source: str):
  """(prompts, references) of RL round k: every train pair twice (y_l and y_w as the
  reference) for 'data'; M_P's samples on the train prompts for 'policy' (written to
  <stage>/references.jsonl once, so a resumed round sees the same references)."""
  pairs = read_pairs_jsonl(ctx.input_path(DATA, "pairs_train.jsonl"))
  if int(c.pit.max_rl_prompts) > 0:
    pairs = pairs[:int(c.pit.max_rl_prompts)]
  if source == "data":
    return ([p.prompt for p in pairs] * 2, [p.rejected for p in pairs] + [p.chosen for p in pairs])
  path = os.path.join(ctx.dir, "references.jsonl")
  if not os.path.exists(path):
    prompts = sorted({p.prompt for p in pairs})
    gen = generation.from_checkpoint(rt, ctx.input_dir(POLICY),
                                     generation.Settings.from_config(c.reference_sampling),
                                     field="policy", seed_offset=1000 + k)
    refs = gen(prompts, 0)
    if jax.process_index() == 0:
      jsonio.write_jsonl_atomic(path, [{"prompt": p, "reference": r} for p, r in zip(prompts, refs)])
  rows = list(records.read_jsonl(path, ("prompt",)))
  return [r["prompt"] for r in rows], [str(r.get("reference", "")) for r in rows]


def rl_stage(config, k: int, source: str):
  """RL round k: PPO (Schulman et al. 2017; per-token KL penalty, adaptive coefficient of
  Ziegler et al. 2019) of M_PIT maximising r_gap(x, y, y_ref) - beta KL(M_PIT^RL || M_PIT^SFT)
  (Wang et al. 2023 §3.3; KL logged in nats per sequence, summed over response tokens).
  Starts from the previous round's policy (round 1: M_PIT^SFT); the KL reference is always
  M_PIT^SFT; y_ref from the data ({y_l, y_w} of every training pair) or from M_P's samples
  (the curriculum of §3.3)."""
  c = derive(config, "ppo", "rl", keep=("template", "max_rl_prompts"))
  c.pit.reference_source = source
  c.data.prompt_format = "{prompt}"
  c.ppo.scorer = "gap_reward_model"
  c.ppo.policy_template = config.pit.template
  if source == "policy":   # how M_P's references are sampled (the inference stage's sampler)
    sampling = derive(config, "improve", "inference").improve
    c.reference_sampling = {k: sampling[k] for k in REFERENCE_SAMPLING}
    c.reference_sampling.temperature = float(config.pit.reference_temperature)
  start = rl_name(k - 1) if k else PIT_SFT
  inputs = (DATA, PIT_SFT, GAP) + ((start,) if k else ()) + ((POLICY,) if source == "policy" else ())

  def run(ctx):
    rc, rt = common.ppo_setup(c, ctx.dir, init=ctx.input_dir(start),
                              reference=ctx.input_dir(PIT_SFT), reward_model=ctx.input_dir(GAP))
    prompts, refs = _references(rc, ctx, rt, k, source)
    tmpl = rc.pit.template
    scorer = gap_reward_scorer_from_dir(rc.ppo.reward_model_dir, rt.tokenizer, rt.mesh, rt.rules,
                                        template=tmpl, max_len=int(rc.ppo.reward_max_len),
                                        batch_size=int(rc.ppo.rollout_batch_size))
    oracle = _oracle(rc)
    summary = ppo_pipeline.train_ppo(
        rc, ctx.dir, rt, prompts=prompts, references=refs, scorer=scorer,
        policy_text_fn=lambda x, ref: pit_format.policy_prompt(x, ref, tmpl),
        monitors={"oracle": oracle} if oracle is not None else None)
    return {**summary, "reference_source": source, "num_prompts": len(prompts)}
  return stages.Stage(rl_name(k), run, settings=c, inputs=inputs)


# ------------------------------------------------------------------------------ inference


def _oracle(c):
  return scorers.OracleScorer() if c.data.source == "synthetic" else None


def _gap_scorer(c, ctx, rt):
  return gap_reward_scorer_from_dir(ctx.input_dir(GAP), rt.tokenizer, rt.mesh, rt.rules,
                                    template=c.pit.template, batch_size=int(c.improve.batch_size))


def inference_stage(config):
  """At every decoding of `eval.temperatures`: the Original y_0 ~ M_P(.|x) and, from that same
  y_0, PIT's iterative improvement y_{t+1} ~ M_PIT(.|x, y_t) decoded the same way, with the
  gap-reward stopping rule (Wang et al. 2023 §3.4), without it, and with M_PIT^SFT; and
  Self-Refine (Madaan et al. 2023) from y_0. Greedy (t0) and sampled (t1) chains are never
  mixed. Writes outputs/<system>_<decoding>.json (AlpacaEval) and iterations.jsonl; the
  summary has each judge's mean score per iteration and system, per decoding (oracle in
  [0, 1], reward model unbounded)."""
  c = derive(config, "improve", "inference", keep=("template",))
  c.eval = {"temperatures": tuple(float(t) for t in config.eval.temperatures),
            "judges": tuple(config.eval.judges)}
  final = final_policy_stage(config)
  inputs = tuple(dict.fromkeys((DATA, POLICY, PIT_SFT, REWARD, GAP, final)))

  def run(ctx):
    rt = common.setup(c)
    icfg, tmpl, T = c.improve, c.pit.template, int(c.improve.max_iters)
    rows = list(records.read_jsonl(ctx.input_path(DATA, "eval_set.jsonl"), ("prompt", "chosen")))
    prompts = [r["prompt"] for r in rows]
    gap = _gap_scorer(c, ctx, rt)
    fb, rf, stop = improve_pipeline.refine_templates(
        ml_collections.ConfigDict({**icfg.to_dict(), "template": tmpl}))
    samplers = {}   # one compiled sampler per model shape, shared by every system
    judges = {k: j for k, j in _judges(c, ctx, rt, pairwise_llm=False).items() if k != "llm_judge"}
    outputs, iterations, summary = {}, [], {"num_prompts": len(prompts), "max_iters": T}
    for temp in c.eval.temperatures:
      dec = evaluator.decoding_name(temp)
      settings = generation.Settings.from_config(icfg).at_temperature(temp)
      load = lambda src, name: generation.from_checkpoint(rt, src, settings, field=name,
                                                          samplers=samplers)
      m_p = load(ctx.input_dir(POLICY), "policy")
      original = m_p(prompts, 0)
      chains = {name: improve.iterative_improve(load(src, name), prompts, original, template=tmpl,
                                                max_iters=T, gap_scorer=scorer,
                                                min_gain=float(icfg.min_gain))
                for name, src, scorer in (("pit", ctx.input_dir(final), gap),
                                          ("pit_no_stop", ctx.input_dir(final), None),
                                          ("pit_sft", ctx.input_dir(PIT_SFT), gap))}
      refine = improve.self_refine(m_p, prompts, original, feedback_template=fb,
                                   refine_template=rf, max_iters=T, stop_phrase=stop,
                                   stop_score=float(icfg.stop_score))
      by_iter = {**{k: v.responses for k, v in chains.items()}, "self_refine": refine.responses}
      outputs[dec] = {"original": original, **{k: v[-1] for k, v in by_iter.items()}}
      iterations += [{"decoding": dec, "system": name, "iteration": t, "index": i,
                      "prompt": prompts[i], "response": resp[i]}
                     for name, iters in by_iter.items() for t, resp in enumerate(iters)
                     for i in range(len(prompts))]
      s = summary[dec] = {
          "temperature": temp,
          "pit_stopped_at": np.bincount(chains["pit"].stopped_at, minlength=T + 1).tolist(),
          "pit_accepted_mean": float(chains["pit"].accepted.mean()),
          "self_refine_stopped_at": np.bincount(refine.stopped_at, minlength=T + 1).tolist(),
          "self_refine_unparsed_judgements": refine.unparsed_judgements}
      for jname, judge in judges.items():
        s[f"{jname}_by_iteration"] = {name: evaluator.mean_scores(judge, prompts, iters)
                                      for name, iters in by_iter.items()}
    for jname, judge in judges.items():
      summary[f"{jname}_chosen"] = evaluator.mean_scores(judge, prompts, [[r["chosen"] for r in rows]])[0]
    if jax.process_index() == 0:
      out_dir = os.path.join(ctx.dir, "outputs")
      os.makedirs(out_dir, exist_ok=True)
      for dec, systems in outputs.items():
        for name, outs in systems.items():
          alpaca_eval.write_outputs(os.path.join(out_dir, f"{name}_{dec}.json"), prompts, outs,
                                    generator=f"pit_{name}_{dec}")
      jsonio.write_jsonl_atomic(os.path.join(ctx.dir, "iterations.jsonl"), iterations)
    return summary
  return stages.Stage(INFER, run, settings=c, inputs=inputs)


# ------------------------------------------------------------------------------ evaluation


DISPLAY = {"original": "Original", "pit": "PIT", "pit_no_stop": "PIT (no stopping rule)",
           "pit_sft": "PIT (SFT only)", "self_refine": "Self-Refine", "y_w": "y_w"}


def _judges(c, ctx, rt, pairwise_llm: bool) -> dict:
  """`eval.judges` of this run (`pit.eval.judges.from_config`)."""
  return judges_lib.from_config(c.eval.judges, rt=rt, data_source=c.data.source,
                                reward_model_dir=ctx.input_dir(REWARD),
                                llm_judge_dir=c.pit.get("llm_judge_dir", ""),
                                batch_size=int(c.improve.batch_size), pairwise_llm=pairwise_llm)


def evaluate_stage(config, before: list[str]):
  """Every comparison of `eval.comparisons` at every decoding, by every judge of
  `eval.judges` (`pit.eval.evaluator`: win / lose / Δ judged both ways round with 95%
  intervals, paired differences of mean scores); AlpacaEval files; WORKDIR/report.md with
  the stage figures and PNG plots."""
  c = derive(config, "improve", "inference", keep=("dataset_name", "llm_judge_dir"))
  c.eval = config.eval.to_dict()
  rl_stages = [rl_name(k) for k in range(len(config.pit.rl_rounds))]

  def run(ctx):
    workdir = ctx.workdir
    summaries = {name: ctx.input_summary(name) for name in before}
    rt = common.setup(c)
    rows = list(records.read_jsonl(ctx.input_path(DATA, "eval_set.jsonl"), ("prompt", "chosen")))
    prompts = [r["prompt"] for r in rows]
    decodings = [evaluator.decoding_name(t) for t in c.eval.temperatures]
    outputs = {"y_w": {d: [r["chosen"] for r in rows] for d in decodings}}
    for name in SYSTEMS:
      outputs[name] = {d: [r.output for r in alpaca_eval.read_outputs(
          ctx.input_path(INFER, "outputs", f"{name}_{d}.json"))] for d in decodings}
    judges = _judges(c, ctx, rt, pairwise_llm=True)
    result_rows = evaluator.evaluate(
        prompts, outputs, [tuple(x) for x in c.eval.comparisons], judges,
        confidence=float(c.eval.confidence), resamples=int(c.eval.bootstrap),
        seed=int(c.eval.seed), display=DISPLAY)
    infer = summaries[INFER]
    plots = {}
    for key, title in (("score", "RL: gap reward of rollouts"), ("kl", "RL: KL to M_PIT^SFT"),
                       ("oracle_score", "RL: oracle score of rollouts")):
      series, offset = {}, 0
      for s in rl_stages:
        xs, ys = report.metric_series(ctx.input_path(s, "metrics.jsonl"), key)
        if xs:
          series[s] = ([x + offset for x in xs], ys)
          offset += max(xs)
      if series:
        plots[title] = series
    for dec in decodings:
      for jname in judges:
        by_iter = infer.get(dec, {}).get(f"{jname}_by_iteration")
        if by_iter:
          plots[f"{jname} score per inference iteration ({dec})"] = {
              name: (list(range(len(v))), v) for name, v in by_iter.items() if v}
    if jax.process_index() == 0:
      report.write_report(
          workdir, title=f"PIT run report: {c.pit.dataset_name}",
          table_md=("## Win / lose / Δ (%), judged both ways round, both systems decoded the "
                    "same way\n\n" + evaluator.table_markdown(result_rows)),
          metrics=plots, notes=_notes(summaries, infer, decodings) + "\n" + "\n".join(
              report.examples_markdown(prompts, outputs, dec, display=DISPLAY)
              for dec in decodings),
          xlabels={t: "inference iteration" for t in plots if "iteration" in t})
      for dec in decodings:
        for name in SYSTEMS:
          alpaca_eval.write_outputs(os.path.join(ctx.dir, f"alpaca_eval_{name}_{dec}.json"),
                                    prompts, outputs[name][dec], generator=f"pit_{name}_{dec}")
    return {"rows": [r.as_dict() for r in result_rows],
            "unjudged": {name: j.unjudged for name, j in judges.items()},
            "report": os.path.join(workdir, "report.md")}
  return stages.Stage(EVAL, run, settings=c, inputs=tuple(before))


def _final(summary: dict, key: str, fields) -> str:
  vals = summary.get(key) or {}
  return ", ".join(f"{f} {vals[f]:.4g}" for f in fields if isinstance(vals.get(f), (int, float)))


def _notes(summaries: dict, infer: dict, decodings) -> str:
  lines = ["## Stages\n", "| stage | key figures |", "|---|---|"]
  for name, s in summaries.items():
    if name == DATA:
      fig = ", ".join(f"{k} {v}" for k, v in s.get("counts", {}).items())
    elif name in (POLICY, PIT_SFT):
      fig = "eval " + _final(s, "final_eval", ("nll",)) + "; train " + _final(
          s, "final_train", ("loss", "token_accuracy"))
    elif name == REWARD:
      fig = "eval " + _final(s, "final_eval", ("accuracy",))
    elif name == GAP:   # held-out accuracies ± s.e. (pair as the unit), n pairs
      ev = s.get("final_eval") or {}
      fig = "eval " + ", ".join(
          f"{f} {ev[f]:.4f} ± {ev.get(f + '_se', float('nan')):.4f}"
          for f in ("ordering_accuracy", "gap_accuracy", "all_orderings_accuracy")
          if isinstance(ev.get(f), (int, float))) + f" (n = {ev.get('eval_pairs', '?')} pairs)"
    elif name == INFER:
      fig = "; ".join(f"{d}: PIT rows stopped at iteration {s.get(d, {}).get('pit_stopped_at')}"
                      for d in decodings)
    else:
      fig = (f"y_ref from {s.get('reference_source')}; " +
             _final(s, "final_train", ("score", "oracle_score", "kl", "kl_coef", "entropy",
                                       "clip_fraction")))
    lines.append(f"| {name} | {fig} |")
  lines.append("")
  for dec in decodings:
    for key, by_iter in infer.get(dec, {}).items():
      if not key.endswith("_by_iteration") or not by_iter:
        continue
      jname = key[:-len("_by_iteration")]
      width = len(next(iter(by_iter.values())))
      lines += [f"## Mean {jname} score per inference iteration, {dec} (0 = the Original)\n",
                "| system | " + " | ".join(f"t={t}" for t in range(width)) + " |",
                "|---|" + "---|" * width]
      for name, v in by_iter.items():
        lines.append(f"| {DISPLAY.get(name, name)} | " + " | ".join(f"{x:.4f}" for x in v) + " |")
      lines.append(f"\nchosen responses y_w: {infer.get(f'{jname}_chosen', float('nan')):.4f}\n")
  return "\n".join(lines)


# ------------------------------------------------------------------------------ entry


def build_stages(config) -> list[stages.Stage]:
  """PIT's stages in order, each with its resolved settings and declared inputs."""
  out = [data_stage(config),
         sft_stage(config, POLICY, "policy_sft"),
         sft_stage(config, PIT_SFT, "pit_sft"),
         reward_stage(config, REWARD, "reward", reward_pipeline.run),
         reward_stage(config, GAP, "gap_reward", gap_reward_pipeline.run)]
  out += [rl_stage(config, k, src) for k, src in enumerate(config.pit.rl_rounds)]
  out.append(inference_stage(config))
  out.append(evaluate_stage(config, [s.name for s in out]))
  return out


def run(config, workdir: str):
  """PIT end to end in `workdir` (see the module docstring); returns the stage names and the
  report's path. Raises what a stage raises (DataError, NonFiniteError, ...) after saving."""
  _check(config)
  return stages.run_recipe(config, workdir, build_stages(config), "pit")
