"""Import benchmark: wall time and peak host memory of reading an HF checkpoint onto a mesh.

  python -m pit.bench_import --make=DIR [--layers=16 --d_model=2048 ... --dtype=bfloat16]
  python -m pit.bench_import --measure=DIR [--peer]

`--make` writes a random Llama-shaped checkpoint (default ~1.1B parameters, Llama-3.2-1B's
shape with a 32000 vocabulary) as sharded safetensors + index, one tensor at a time.
`--measure` runs the import in a fresh subprocess (`hf_convert.load_params_sharded`, params in
the file's dtype) and reports seconds and peak resident memory (ru_maxrss) over the file size;
with `--peer` also transformers' `LlamaForCausalLM.from_pretrained` on the same directory
(PyTorch CPU, same dtype) in its own subprocess. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_OURS = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import jax
from pit import hf_convert, sharding as shd
from pit.params import model_def
path = sys.argv[1]
hf = hf_convert.read_hf_config(path)
dtype = {"bfloat16": "bfloat16", "float32": "float32"}[hf.get("dtype") or hf.get("torch_dtype") or "float32"]
mdef = model_def(hf_convert.config_from_hf(hf, param_dtype=dtype))
mesh = shd.make_mesh((1, -1, 1))
t1 = time.perf_counter()
params = hf_convert.load_params_sharded(path, mdef, mesh, shd.DEFAULT_RULES)
jax.block_until_ready(params)
t2 = time.perf_counter()
n = sum(x.size for x in jax.tree.leaves(params))
print(json.dumps({"seconds": t2 - t1, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "params": int(n)}))
"""

_PEER = r"""
import json, resource, sys, time
import torch, transformers
path = sys.argv[1]
cfg = transformers.AutoConfig.from_pretrained(path)
t1 = time.perf_counter()
m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=cfg.dtype)
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t1, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "params": sum(p.numel() for p in m.parameters())}))
"""


def make(path: str, *, layers: int, d_model: int, heads: int, kv_heads: int, d_ff: int, vocab: int,
         dtype: str, max_shard_gb: float = 1.0) -> dict:
  """Writes the random checkpoint (module docstring); returns its size."""
  import numpy as np

  from pit import hf_export
  from pit.model import ModelConfig
  cfg = ModelConfig(vocab_size=vocab, d_model=d_model, num_layers=layers, num_heads=heads,
                    num_kv_heads=kv_heads, d_ff=d_ff, max_seq_len=2048, tie_embeddings=True,
                    rope_theta=500000.0, norm_eps=1e-5)
  rng = np.random.default_rng(0)

  from pit.params import model_def
  abstract = model_def(cfg).abstract_params

  def build(tree):
    return {k: build(v) if isinstance(v, dict) else _RandomLeaf(v.shape, rng) for k, v in tree.items()}
  info = hf_export.export(cfg, build(abstract), path, dtype=dtype,
                          max_shard_bytes=int(max_shard_gb * 1024 ** 3))
  return info


class _RandomLeaf:
  """A parameter materialised (random normal * 0.02) only when the exporter reads it."""
  def __init__(self, shape, rng):
    self.shape, self.rng = tuple(shape), rng

  def __array__(self, dtype=None, copy=None):
    import numpy as np
    a = (self.rng.standard_normal(self.shape, np.float32) * 0.02)
    return a if dtype is None else a.astype(dtype)


def measure(path: str, peer: bool) -> dict:
  """Runs the import (and transformers', with `peer`) in fresh subprocesses."""
  size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
             if f.endswith(".safetensors"))
  out = {"checkpoint": path, "file_bytes": size}
  runs = [("pit", _OURS)] + ([("transformers", _PEER)] if peer else [])
  for name, code in runs:
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if r.returncode:
      raise RuntimeError(f"{name} import failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["peak_rss_over_file"] = res["peak_rss_bytes"] / size
    out[name] = res
  return out


def main(argv=None):
  """The command line (module docstring)."""
  ap = argparse.ArgumentParser(prog="python -m pit.bench_import")
  ap.add_argument("--make", default="")
  ap.add_argument("--measure", default="")
  ap.add_argument("--peer", action="store_true")
  ap.add_argument("--layers", type=int, default=16)
  ap.add_argument("--d_model", type=int, default=2048)
  ap.add_argument("--heads", type=int, default=32)
  ap.add_argument("--kv_heads", type=int, default=8)
  ap.add_argument("--d_ff", type=int, default=8192)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--dtype", default="bfloat16")
  args = ap.parse_args(argv)
  if args.make:
    print(json.dumps(make(args.make, layers=args.layers, d_model=args.d_model, heads=args.heads,
                          kv_heads=args.kv_heads, d_ff=args.d_ff, vocab=args.vocab,
                          dtype=args.dtype)))
  if args.measure:
    print(json.dumps(measure(args.measure, args.peer)))


if __name__ == "__main__":
  main()
