"""Setup shared by pipelines: mesh, rules, model definition, tokenizer, data."""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from pit import jsonio, pretrained
from pit import sharding as shd
from pit.data import batching, encoding, sharded, sources
from pit.data.tokenizer import Tokenizer, make_tokenizer
from pit.model import ModelConfig
from pit.params import ModelDef, model_def


@dataclasses.dataclass
class Runtime:
  """What every pipeline sets up first: the device mesh, the logical-axis rules, the
  tokenizer and the model definition."""
  mesh: jax.sharding.Mesh
  rules: tuple
  tokenizer: Tokenizer
  mdef: ModelDef


def setup(config, **model_overrides) -> Runtime:
  """The Runtime of `config` (jax.distributed initialised when configured; mesh and rules
  from config.mesh, tokenizer from config.tokenizer, model from config.model with
  `model_overrides` applied). Raises ValueError when model.vocab_size is smaller than the
  tokenizer's vocabulary (and on a bad model, mesh or tokenizer setting)."""
  shd.maybe_initialize_distributed(config.get("distributed", None))
  pretrained.resolve(config)
  mesh = shd.mesh_from_config(config.mesh)
  rules = shd.rules_from_config(config.mesh)
  tokenizer = make_tokenizer(config.tokenizer)
  mcfg = ModelConfig.from_config(config.model).replace(**model_overrides)
  if mcfg.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
                     f"vocabulary ({tokenizer.vocab_size})")
  logging.info("mesh %s, %d devices, %d processes", dict(mesh.shape), mesh.size, jax.process_count())
  return Runtime(mesh, rules, tokenizer, model_def(mcfg))


def save_config(config, workdir: str) -> str:
  """Writes WORKDIR/config_<pipeline>.json: how the run was configured, and where
  loaders of a workdir (reward models, policies) read the model's shape from."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"config_{config.pipeline}.json")
  if jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return path


def write_summary(workdir: str, name: str, summary: dict):
  """WORKDIR/<name>_summary.json (process 0) and a log line."""
  if jax.process_index() == 0:
    jsonio.write_atomic(os.path.join(workdir, f"{name}_summary.json"), summary)
  logging.info("%s done: %s", name, summary)


def train_summary(result, **fields) -> dict:
  """The summary of a trainer-based pipeline: `fields`, the last logged train metrics
  (restored from the checkpoint on resume) and, under "run", what this invocation did
  (`steps_run`, `resumed_from`). Everything outside "run" is the same whether or not the
  run was interrupted and resumed."""
  return {**fields, "final_train": result.last_metrics,
          "run": {"steps_run": result.steps_run, "resumed_from": result.resumed_from}}


def process_share() -> dict:
  """{process_index, process_count} of this process (its share of batches and data)."""
  return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def buckets(config) -> tuple[int, ...]:
  """The batch length buckets: data.buckets, else powers of two from 32 up to data.max_len
  (`batching.default_buckets`)."""
  return tuple(config.data.buckets) or batching.default_buckets(int(config.data.max_len))


def load_sft_examples(path: str, config, tokenizer, stats=None, *, split: str = "train",
                      report=None) -> sharded.ShardedExamples:
  """SFT records from `sources.load_sft_records` (config.data.source), tokenised:
  {"prompt","response"} (loss on response) or {"text"} (loss on all); this process holds
  its share of the tokenised examples (`pit.data.sharded.encode_shared`).

  For data.source='jsonl' `path` is the file (train_path or eval_path). Skips and
  truncations are counted in `report` (a `sources.DataReport`) and logged here."""
  report = report if report is not None else sources.DataReport()
  if stats is not None:
    report.truncation = stats
  stats = report.truncation
  if sources.source_name(config.data) == "jsonl":
    if not path:
      raise ValueError("data.train_path: no training file given")
    recs = sources.load_sft_records(config.data, split, report=report, path=path)
    what = path
  else:
    recs = sources.load_sft_records(config.data, split, report=report)
    what = f"data.source={config.data.source} split={split}"
  max_len, max_resp = int(config.data.max_len), int(config.data.max_response_len)

  def encode(rec, stats):
    if "text" in rec:
      return encoding.text_example(tokenizer, rec["text"], max_len=max_len, stats=stats)
    return encoding.example(
        tokenizer, config.data.prompt_format.format(prompt=rec["prompt"]), rec["response"],
        max_len=max_len, max_response_len=max_resp, stats=stats)
  examples = sharded.encode_shared(recs, encode, batching.example_length, stats=stats, what=what)
  logging.info("%s: %d examples", what, len(examples))
  report.log(what)
  return examples


def pair_splits(dcfg, train_split: str, eval_split: str, method: str):
  """(train pairs, held-out pairs, {"train", "eval": DataReport}) of a recipe: `eval_split`
  when given, else `data.eval_fraction` of `train_split` (`split_eval`). Raises ValueError
  naming `<method>.eval_split` when nothing is held out."""
  reports = {"train": sources.DataReport(), "eval": sources.DataReport()}
  train = sources.load_pairs(dcfg, train_split, report=reports["train"])
  if eval_split:
    evals = sources.load_pairs(dcfg, eval_split, report=reports["eval"])
  else:
    train, evals = split_eval(train, float(dcfg.eval_fraction), int(dcfg.seed))
  if not evals:
    raise ValueError(f"{method}: no held-out pairs (set {method}.eval_split, or "
                     "data.eval_fraction > 0 with at least 20 pairs)")
  return train, evals, reports


def ppo_setup(c, workdir: str, *, init: str, reference: str, reward_model: str):
  """(config, Runtime) of a recipe's PPO stage: a copy of `c` with the policy's start
  (`init`), its KL reference and the reward model's directory filled in at run time, saved to
  `workdir` (config_ppo.json) before the run."""
  import ml_collections
  rc = ml_collections.ConfigDict(c.to_dict())
  rc.ppo.init_checkpoint_dir = init
  rc.ppo.reference_checkpoint_dir = reference
  rc.ppo.reward_model_dir = reward_model
  save_config(rc, workdir)
  return rc, setup(rc)


def render_pairs(pairs, prompt_format: str) -> list:
  """The pairs with each prompt rendered by `prompt_format` (data.prompt_format, e.g.
  "{prompt}"), as the recipes' data stages write them for every later stage."""
  from pit.data.pairs import PreferencePair
  return [PreferencePair(prompt_format.format(prompt=p.prompt), p.chosen, p.rejected, p.margin,
                         p.meta) for p in pairs]


def split_eval(examples, fraction: float, seed: int):
  """(train, eval): a random `fraction` of `examples` (at least one, chosen by `seed`) held
  out, both in their original order; (examples, []) when fraction <= 0 or there are fewer
  than 20 examples."""
  if fraction <= 0 or len(examples) < 20:
    return examples, []
  order = np.random.default_rng(seed).permutation(len(examples))
  n_eval = max(1, int(len(examples) * fraction))
  held_out = np.zeros(len(examples), bool)
  held_out[order[:n_eval]] = True
  keep, ev = np.flatnonzero(~held_out), np.flatnonzero(held_out)
  if hasattr(examples, "subset"):   # a ShardedExamples: views, nothing encoded
    return examples.subset(keep), examples.subset(ev)
  return [examples[i] for i in keep], [examples[i] for i in ev]
