"""`pipeline=generate`: sample from the latest checkpoint of a workdir.

`generate.num_samples` > 1 draws that many responses per prompt (each row of
WORKDIR/<generate.output> carries "sample"); with temperature > 0 they are the
N candidates of best-vs-worst pair building (`pit.data.pairs.best_vs_worst`).
"""
from __future__ import annotations

import logging
import os

import jax

from pit import generation, jsonio, roles
from pit.data import records
from pit.pipelines import common


def load_prompts(gcfg) -> list[str]:
  """generate.prompts followed by the "prompt" field of each record of
  generate.prompts_path. Raises ValueError when there are none (DataError on a bad line)."""
  prompts = [str(p) for p in gcfg.prompts]
  if gcfg.prompts_path:
    prompts += [r["prompt"] for r in records.read_jsonl(gcfg.prompts_path, ("prompt",))]
  if not prompts:
    raise ValueError("generate: no prompts (set generate.prompts or generate.prompts_path)")
  return prompts


def run(config, workdir: str):
  """`pipeline=generate`: samples `generate.num_samples` responses per prompt from the policy
  in generate.checkpoint_dir (default: the workdir), writes them prompt-major to
  WORKDIR/<generate.output> (JSONL with sample index, token count, summed log-prob in
  nats and checkpoint step) and returns those rows. Raises ValueError when num_samples < 1,
  or num_samples > 1 at temperature 0."""
  rt = common.setup(config)
  gcfg = config.generate
  model = roles.load("policy", gcfg.checkpoint_dir or workdir, mesh=rt.mesh, rules=rt.rules,
                     default_mdef=rt.mdef, field="generate.checkpoint_dir")
  n_samples = int(gcfg.num_samples)
  settings = generation.Settings.from_config(gcfg)
  if n_samples < 1:
    raise ValueError(f"generate.num_samples must be >= 1, got {n_samples}")
  if n_samples > 1 and settings.temperature <= 0:
    raise ValueError("generate.num_samples > 1 needs generate.temperature > 0 (greedy "
                     "decoding repeats one response)")
  prompts = load_prompts(gcfg)
  gen = generation.Generator(generation.sampler_for(model.mdef, rt.tokenizer, rt.mesh, rt.rules,
                                                    settings), model.params, rt.tokenizer, settings)
  draws = gen.sample([config.data.prompt_format.format(prompt=p) for p in prompts], n_samples)
  results = [{"prompt": p, "sample": k, "response": g.text, "num_tokens": len(g.tokens),
              "logprob": g.logprob, "checkpoint_step": model.step}
             for p, samples in zip(prompts, draws) for k, g in enumerate(samples)]   # prompt-major
  out_path = os.path.join(workdir, gcfg.output)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    jsonio.write_jsonl_atomic(out_path, results)
    for r in results[:8]:
      print(f"> {r['prompt']!r}\n  {r['response']!r}")
  logging.info("wrote %d generations to %s", len(results), out_path)
  return results
