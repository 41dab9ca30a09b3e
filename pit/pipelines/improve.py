"""`pipeline=improve`: iterative improvement of answers at inference.

Answers to improve come from `improve.input_path` (JSONL {"prompt","response"} or
an AlpacaEval JSON list {"instruction","output"}) or are generated from the
policy checkpoint `improve.initial_checkpoint_dir` on the prompts of
`pit.data.sources.load_prompts(config.data, improve.split)`.

`improve.method='pit'`: y_{t+1} ~ M_PIT(x, y_t) with `improve.pit_checkpoint_dir`
and, with `improve.gap_rm_dir`, the gap-reward stopping rule (`pit.improve`).
`improve.method='self_refine'`: feedback + refine prompts to one base model
(`improve.base_checkpoint_dir`, default the initial checkpoint).

Writes WORKDIR/improve/iter_<t>.jsonl (every row after t iterations),
WORKDIR/improve_outputs.json (final answers, AlpacaEval format) and
WORKDIR/improve_summary.json; for data.source='synthetic' also the oracle score
per iteration (in the summary and WORKDIR/improve_oracle.png).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

import jax
import numpy as np

from pit import improve
from pit.data import records, sources
from pit.eval import alpaca_eval
from pit.model import ModelConfig
from pit.params import model_def
from pit.pipelines import common
from pit.pipelines.generate import restore_params_for_sampling
from pit.rl import scorers
from pit.rl.gap_scorer import gap_reward_scorer_from_dir
from pit.sampler import Sampler

METHODS = ("pit", "self_refine")


def _checkpoints(path: str) -> str:
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def _model_def(path: str, rt):
  """The LM definition saved with a workdir (`config_*.json`, model.head='lm'), else config.model."""
  root = path[:-len("checkpoints")] if path.rstrip("/").endswith("checkpoints") else path
  for cfg_path in sorted(glob.glob(os.path.join(root, "config_*.json"))):
    with open(cfg_path) as f:
      cfg = json.load(f).get("model", {})
    if cfg.get("head", "lm") == "lm" and cfg:
      return model_def(ModelConfig.from_config(cfg))
  return rt.mdef


def load_generate_fn(rt, icfg, path: str, field: str, seed_offset: int = 0, samplers=None):
  """`pit.improve.make_generate_fn` over the latest checkpoint under `path`; `samplers`
  (a dict) shares one compiled sampler between checkpoints of the same model shape."""
  if not path:
    raise ValueError(f"improve.{field}: no checkpoint directory given")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"improve.{field}: not a directory: {path!r}")
  mrt = dataclasses.replace(rt, mdef=_model_def(path, rt))
  params, step = restore_params_for_sampling(mrt, _checkpoints(path))
  tok = rt.tokenizer
  samplers = {} if samplers is None else samplers
  if mrt.mdef.cfg not in samplers:
    samplers[mrt.mdef.cfg] = Sampler(mrt.mdef, rt.mesh, rt.rules, pad_id=tok.pad_id,
                                     eos_id=tok.eos_id,
                                     prompt_buckets=tuple(icfg.prompt_buckets) or None)
  sampler = samplers[mrt.mdef.cfg]
  logging.info("improve.%s: %s at step %d", field, path, step)
  return improve.make_generate_fn(
      sampler, params, tok, max_new_tokens=int(icfg.max_new_tokens),
      temperature=float(icfg.temperature), top_k=int(icfg.top_k), top_p=float(icfg.top_p),
      seed=int(icfg.seed) + seed_offset, batch_size=int(icfg.batch_size),
      max_prompt_len=int(icfg.max_prompt_len))


def load_inputs(config, rt, samplers=None) -> tuple[list[str], list[str]]:
  """(prompts, initial responses) from improve.input_path or improve.initial_checkpoint_dir."""
  icfg = config.improve
  path = icfg.input_path
  if path:
    if not os.path.exists(path):
      raise FileNotFoundError(f"improve.input_path: no such file: {path}")
    if path.endswith((".json", ".json.gz")):
      recs = alpaca_eval.read_outputs(path)
      prompts, responses = [r.instruction for r in recs], [r.output for r in recs]
    else:
      recs = records.read_jsonl(path, ("prompt", "response"))
      prompts, responses = [str(r["prompt"]) for r in recs], [str(r["response"]) for r in recs]
  elif icfg.initial_checkpoint_dir:
    prompts = sources.load_prompts(config.data, icfg.split)
    responses = None
  else:
    raise ValueError("improve: give improve.input_path or improve.initial_checkpoint_dir")
  if int(icfg.max_prompts) > 0:
    prompts = prompts[:int(icfg.max_prompts)]
    responses = responses[:len(prompts)] if responses is not None else None
  if not prompts:
    raise ValueError(f"improve: no prompts in {path or icfg.initial_checkpoint_dir}")
  if responses is None:
    gen = load_generate_fn(rt, icfg, icfg.initial_checkpoint_dir, "initial_checkpoint_dir",
                           seed_offset=-1, samplers=samplers)
    responses = gen([config.data.prompt_format.format(prompt=p) for p in prompts], 0)
  return prompts, responses


def _gap_scorer(config, rt):
  icfg = config.improve
  if not icfg.gap_rm_dir:
    return None
  return gap_reward_scorer_from_dir(icfg.gap_rm_dir, rt.tokenizer, rt.mesh, rt.rules,
                                    template=icfg.template, max_len=int(icfg.gap_max_len),
                                    batch_size=int(icfg.batch_size))


def refine_templates(icfg):
  """(feedback template, refine template, stop phrase) of `improve.*`, defaults by template."""
  kind = icfg.template if icfg.template in improve.FEEDBACK_TEMPLATES else "chat"
  fb = icfg.feedback_template or improve.FEEDBACK_TEMPLATES[kind]
  rf = icfg.refine_template or improve.REFINE_TEMPLATES[kind]
  stop = improve.STOP_PHRASES[kind] if icfg.stop_phrase == "auto" else icfg.stop_phrase
  return fb, rf, stop


def _rows(method, res, prompts, t, T):
  rows = []
  for i, p in enumerate(prompts):
    row = {"index": i, "iteration": t, "prompt": p, "response": res.responses[t][i]}
    if method == "pit" and t > 0:
      row.update(candidate=res.candidates[t - 1][i], active=res.candidates[t - 1][i] is not None,
                 gain=None if np.isnan(res.gains[t - 1, i]) else float(res.gains[t - 1, i]))
    if method == "self_refine" and t < T:
      row.update(feedback=res.feedback[t][i],
                 judge_score=None if np.isnan(res.scores[t, i]) else float(res.scores[t, i]))
    rows.append(row)
  return rows


def run(config, workdir: str):
  rt = common.setup(config)
  icfg = config.improve
  if icfg.method not in METHODS:
    raise ValueError(f"improve.method: {icfg.method!r} not in {METHODS}")
  T = int(icfg.max_iters)
  samplers = {}
  prompts, initial = load_inputs(config, rt, samplers)
  xs = [config.data.prompt_format.format(prompt=p) for p in prompts]   # x as the models read it
  if icfg.method == "pit":
    gen = load_generate_fn(rt, icfg, icfg.pit_checkpoint_dir, "pit_checkpoint_dir",
                           samplers=samplers)
    res = improve.iterative_improve(gen, xs, initial, template=icfg.template, max_iters=T,
                                    gap_scorer=_gap_scorer(config, rt),
                                    min_gain=float(icfg.min_gain))
  else:
    field = "base_checkpoint_dir" if icfg.base_checkpoint_dir else "initial_checkpoint_dir"
    gen = load_generate_fn(rt, icfg, icfg[field], field, samplers=samplers)
    fb, rf, stop = refine_templates(icfg)
    res = improve.self_refine(gen, xs, initial, feedback_template=fb, refine_template=rf,
                              max_iters=T, stop_phrase=stop, stop_score=float(icfg.stop_score))
  summary = {"method": icfg.method, "num_prompts": len(prompts), "max_iters": T,
             "active_per_iteration": [int(a) for a in res.active],
             "stopped_at_histogram": np.bincount(res.stopped_at, minlength=T + 1).tolist()}
  if icfg.method == "pit":
    with np.errstate(all="ignore"):
      summary["mean_gain_per_iteration"] = [
          None if np.all(np.isnan(g)) else float(np.nanmean(g)) for g in res.gains]
    summary["accepted_histogram"] = np.bincount(res.accepted, minlength=T + 1).tolist()
  else:
    with np.errstate(all="ignore"):
      summary["mean_judge_score_per_round"] = [
          None if np.all(np.isnan(s)) else float(np.nanmean(s)) for s in res.scores]
    summary["unparsed_judgements_per_round"] = res.unparsed_judgements
  oracle = None
  if sources.source_name(config.data) == "synthetic":
    from pit.data.synthetic import oracle_scores
    oracle = [float(np.mean(oracle_scores(prompts, r))) for r in res.responses]
    summary["oracle_per_iteration"] = oracle
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "improve")
    os.makedirs(out_dir, exist_ok=True)
    for t in range(T + 1):
      with open(os.path.join(out_dir, f"iter_{t:02d}.jsonl"), "w") as f:
        for row in _rows(icfg.method, res, prompts, t, T):
          f.write(json.dumps(row) + "\n")
    generator = icfg.generator or f"{icfg.method}_iter{T}"
    alpaca_eval.write_outputs(os.path.join(workdir, "improve_outputs.json"), prompts, res.final,
                              generator)
    if oracle is not None:
      from pit.eval.report import plot_series
      plot_series(os.path.join(workdir, "improve_oracle.png"),
                  {icfg.method: (list(range(T + 1)), oracle)},
                  title=f"{icfg.method}: oracle score per iteration", xlabel="iteration",
                  ylabel="mean oracle score")
    with open(os.path.join(workdir, "improve_summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  logging.info("improve done: %s", summary)
  return summary
