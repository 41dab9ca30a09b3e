"""`pipeline=generate`: sample from the latest checkpoint of a workdir.

`generate.num_samples` > 1 draws that many responses per prompt (each row of
WORKDIR/<generate.output> carries "sample"); with temperature > 0 they are the
N candidates of best-vs-worst pair building (`pit.data.pairs.best_vs_worst`).
"""
from __future__ import annotations

import json
import logging
import os

import jax

from pit.checkpoint import Checkpointer
from pit.data import encoding, records
from pit.pipelines import common
from pit.sampler import Sampler


def load_prompts(gcfg) -> list[str]:
  prompts = [str(p) for p in gcfg.prompts]
  if gcfg.prompts_path:
    prompts += [r["prompt"] for r in records.read_jsonl(gcfg.prompts_path, ("prompt",))]
  if not prompts:
    raise ValueError("generate: no prompts (set generate.prompts or generate.prompts_path)")
  return prompts


def restore_params_for_sampling(rt, checkpoint_dir: str):
  """(params, step) of the latest checkpoint in `checkpoint_dir`, verified against its
  checksums (`pit.checkpoint`): a damaged one raises CorruptCheckpointError naming it."""
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir} (not a directory)")
  ckpt = Checkpointer(checkpoint_dir, read_only=True, async_save=False)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
  params, step = ckpt.restore_params(rt.mdef.sharded_abstract(rt.mesh, rt.rules))
  ckpt.close()
  return params, step


def run(config, workdir: str):
  rt = common.setup(config)
  gcfg = config.generate
  ckpt_dir = gcfg.checkpoint_dir or os.path.join(workdir, "checkpoints")
  params, step = restore_params_for_sampling(rt, ckpt_dir)
  n_samples = int(gcfg.num_samples)
  if n_samples < 1:
    raise ValueError(f"generate.num_samples must be >= 1, got {n_samples}")
  if n_samples > 1 and float(gcfg.temperature) <= 0:
    raise ValueError("generate.num_samples > 1 needs generate.temperature > 0 (greedy "
                     "decoding repeats one response)")
  prompts = load_prompts(gcfg)
  jobs = [(p, k) for p in prompts for k in range(n_samples)]   # prompt-major
  tok = rt.tokenizer
  sampler = Sampler(rt.mdef, rt.mesh, rt.rules, pad_id=tok.pad_id, eos_id=tok.eos_id)
  out_path = os.path.join(workdir, gcfg.output)
  results = []
  bs = int(gcfg.batch_size)
  for start in range(0, len(jobs), bs):
    chunk = jobs[start:start + bs]
    ids = encoding.prompts_ids(tok, [config.data.prompt_format.format(prompt=p) for p, _ in chunk])
    out = sampler.generate(params, ids, max_new_tokens=int(gcfg.max_new_tokens),
                           temperature=float(gcfg.temperature), top_k=int(gcfg.top_k),
                           top_p=float(gcfg.top_p), seed=int(gcfg.seed) + start)
    for (p, k), toks, lps, n in zip(chunk, out.tokens, out.logprobs, out.lengths):
      results.append({"prompt": p, "sample": k, "response": tok.decode(toks[:n]),
                      "num_tokens": int(n), "logprob": float(lps[:n].sum()), "checkpoint_step": step})
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(out_path, "w") as f:
      for r in results:
        f.write(json.dumps(r) + "\n")
    for r in results[:8]:
      print(f"> {r['prompt']!r}\n  {r['response']!r}")
  logging.info("wrote %d generations to %s", len(results), out_path)
  return results
