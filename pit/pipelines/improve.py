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

import os

import jax
import numpy as np

from pit import generation, improve, jsonio
from pit.data import records, sources
from pit.eval import alpaca_eval
from pit.pipelines import common
from pit.rl.gap_scorer import gap_reward_scorer_from_dir

METHODS = ("pit", "self_refine")


def load_generate_fn(rt, icfg, path: str, field: str, seed_offset: int = 0, samplers=None):
  """A `pit.generation.Generator` of the policy at `path`, decoding with the `improve`
  settings `icfg`; `samplers` shares compiled samplers between checkpoints of one shape."""
  return generation.from_checkpoint(rt, path, generation.Settings.from_config(icfg),
                                    field=f"improve.{field}", samplers=samplers,
                                    seed_offset=seed_offset)


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
      recs = list(records.read_jsonl(path, ("prompt", "response")))
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
  """`pipeline=improve` (see the module docstring): improves the answers with PIT or
  Self-Refine, writes the per-iteration rows, the AlpacaEval outputs and the summary, and
  returns the summary. Raises ValueError on an unknown improve.method."""
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
      jsonio.write_jsonl_atomic(os.path.join(out_dir, f"iter_{t:02d}.jsonl"),
                                _rows(icfg.method, res, prompts, t, T))
    generator = icfg.generator or f"{icfg.method}_iter{T}"
    alpaca_eval.write_outputs(os.path.join(workdir, "improve_outputs.json"), prompts, res.final,
                              generator)
    if oracle is not None:
      from pit.eval.report import plot_series
      plot_series(os.path.join(workdir, "improve_oracle.png"),
                  {icfg.method: (list(range(T + 1)), oracle)},
                  title=f"{icfg.method}: oracle score per iteration", xlabel="iteration",
                  ylabel="mean oracle score")
  common.write_summary(workdir, "improve", summary)
  return summary
