"""Convert models between PIT checkpoints, Hugging Face directories and GGUF files.

  python -m pit.convert --from=WORKDIR --to=hf:OUT_DIR [--dtype=bfloat16] [--family=llama]
  python -m pit.convert --from=hf:DIR --to=checkpoint:OUT_DIR
  python -m pit.convert --from=gguf:FILE --to=hf:OUT_DIR

`--from` is what `model.init_from` accepts (`hf:DIR`, `gguf:FILE`, `checkpoint:DIR`; a bare
path is a PIT workdir or checkpoints folder). `--to=hf:DIR` writes a directory
`transformers.AutoModelForCausalLM.from_pretrained` loads (reward / value models:
`AutoModelForSequenceClassification`) with the tokenizer and chat template; `--to=checkpoint:DIR`
writes a PIT workdir (config_convert.json + checkpoints/) that `model.init_from=checkpoint:DIR`
and every role loader read. Prints a JSON summary. Exit status 2 with one `pit.convert: error:`
line on bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def load_source(source: str, mesh=None, rules=None):
  """(ModelConfig, params on `mesh`, tokenizer section) of a `--from` value."""
  from pit import pretrained
  from pit import sharding as shd
  from pit.params import model_def
  kind, path = pretrained.parse(source if ":" in source.split(os.sep)[0] else f"checkpoint:{source}")
  cfg, tokenizer = pretrained.source_model_config(kind, path)
  mesh = mesh or shd.make_mesh((1, -1, 1))
  rules = rules or shd.DEFAULT_RULES
  mdef = model_def(cfg)
  if kind == "checkpoint":
    from pit import roles
    params = roles.restore_params(mdef, path, mesh, rules, "--from")[0]
  else:
    params = pretrained.load_params(kind, path, mdef, mesh, rules)
  return cfg, params, tokenizer


def write_checkpoint(cfg, params, tokenizer: dict, out_dir: str) -> dict:
  """A PIT workdir at `out_dir`: config_convert.json (model and tokenizer sections) and the
  params as step 0 of checkpoints/ (params only, verified on load like any checkpoint)."""
  import dataclasses

  from pit import checkpoint as ckpt_lib
  from pit.config_base import base_config
  c = base_config()
  c.pipeline = "convert"
  c.model.update({k: v for k, v in dataclasses.asdict(cfg).items()})
  c.tokenizer.update({k: v for k, v in tokenizer.items() if k in ("kind", "path")})
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config_convert.json"), "w") as f:
    f.write(c.to_json_best_effort(indent=2))
  ckpt = ckpt_lib.Checkpointer(os.path.join(out_dir, "checkpoints"), save_every=1, keep=1,
                               async_save=False)
  ckpt.save(0, {"params": params}, {"source": "pit.convert"}, force=True)
  ckpt.close()
  return {"workdir": out_dir}


def main(argv=None) -> int:
  """The command line (module docstring); returns the exit status."""
  ap = argparse.ArgumentParser(prog="python -m pit.convert", description=__doc__.split("\n")[0])
  ap.add_argument("--from", dest="source", required=True,
                  help="hf:DIR | gguf:FILE | checkpoint:DIR | a PIT workdir")
  ap.add_argument("--to", required=True, help="hf:OUT_DIR | checkpoint:OUT_DIR")
  ap.add_argument("--dtype", default="", help="hf export dtype: float32 | bfloat16 | float16 "
                  "(default: the model's param dtype)")
  ap.add_argument("--family", default="", help="HF model_type to export as (default: the "
                  "family it came from, else inferred)")
  ap.add_argument("--max_shard_gb", type=float, default=2.0)
  args = ap.parse_args(argv)
  kind, _, out = args.to.partition(":")
  if kind not in ("hf", "checkpoint") or not out:
    print(f"pit.convert: error: --to={args.to!r} is not hf:OUT_DIR or checkpoint:OUT_DIR",
          file=sys.stderr)
    return 2
  try:
    cfg, params, tokenizer = load_source(args.source)
    if kind == "checkpoint":
      summary = write_checkpoint(cfg, params, tokenizer, out)
    else:
      from pit import hf_export
      from pit.data.tokenizer import make_tokenizer
      import ml_collections
      tok = make_tokenizer(ml_collections.ConfigDict(tokenizer)) if tokenizer else None
      summary = hf_export.export(cfg, params, out, tokenizer=tok, family=args.family or None,
                                 dtype=args.dtype or cfg.param_dtype,
                                 max_shard_bytes=int(args.max_shard_gb * 1024 ** 3))
  except (ValueError, FileNotFoundError) as e:
    print(f"pit.convert: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"from": args.source, "to": args.to, **summary}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
