"""Throughput benchmark: train-step tokens/s and FLOP/s against the measured matmul
ceiling, and sampler decode tokens/s.

    python -m pit.bench [--d_model=512 --num_layers=4 ...] [--json_out=bench.json]
    python -m pit.bench --peer=torch [--rounds=3 --parts=sft,dpo,...]   (pit.bench_peer)

FLOP convention (stated in the output too)
------------------------------------------
* `N_matmul`: parameters that take part in a matrix multiply, i.e. the attention
  projections (wq, wk, wv, wo), the MLP matrices (w_gate, w_up, w_down) and the
  output head (`lm_head`, or the embedding matrix once more when embeddings are
  tied; `score` for a scalar head). The embedding *lookup* (and learned position
  embeddings) are gathers, not matmuls, and are excluded; norm scales and biases
  are excluded (elementwise).
* Training FLOPs per token = 6 * N_matmul + 12 * num_layers * seq_len * attn_dim, the
  PaLM / Chinchilla convention: 2 FLOPs per multiply-add, forward = 2 * N_matmul,
  backward = 2 x forward. The attention term is QK^T plus probs @ V
  (2 * 2 * seq_len * attn_dim per token and layer forward, x3 for fwd+bwd) where
  attn_dim = num_heads * head_dim (= d_model unless head_dim is set). The causal mask
  is counted as full attention (that is also what the model computes: dense
  [L, S] score matrices, masked). Softmax, norms, activations, RoPE, the loss and the
  optimizer update are not counted (they are not matmuls).
* Achieved FLOP/s = train tokens/s * training FLOPs per token, where tokens = batch *
  seq_len (every position, padding included: the benchmark batch has none).

Matmul ceiling: the best rate of jitted `jnp.dot` in the train step's compute dtype
over square 2048^2 / 4096^2 products and products shaped like the model's own
matmuls ([batch*seq, d_model] x [d_model, d_ff] etc., including the transposed
contractions of the backward pass). The ratio achieved / ceiling is reported. For a
non-float32 train dtype the float32 ceiling is measured too and the ratio against it
reported as well (on CPUs without fast bf16 dots the bf16 ceiling is the lower one).

Decode: `Sampler.generate` at temperature 1 with an eos id the model can never
sample, so every row generates exactly `decode_tokens` tokens. Decode tokens/s =
batch * (decode_tokens - 1) / (t(decode_tokens) - t(1)), i.e. the time of the
prefill (+ first sampled token + the host-side cost of one `generate` call) is
measured separately as t(1) and subtracted; compile time is excluded (one warm-up call
per shape first).

CPU contention: each part records how many cores *other* processes kept busy while it
ran (/proc/stat); the report warns when that is above 0.1 (a shared machine makes the
figures meaningless).

Run it on real devices only: do not set the tests' fake-device XLA flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pit import losses, optim
from pit import sharding as shd
from pit import train_step as ts
from pit.model import ModelConfig
from pit.params import init_params, model_def

FLOP_CONVENTION = (
    "train FLOPs/token = 6*N_matmul + 12*num_layers*seq_len*attn_dim "
    "(2 FLOPs per MAC, bwd = 2x fwd; N_matmul = params used in matmuls incl. the LM head, "
    "excl. embedding lookup, norms, biases; attention QK^T + PV with the causal mask "
    "counted as full)")


# --------------------------------------------------------------------------- FLOPs


def _leaves_by_name(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  mdef = model_def(cfg)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(mdef.abstract_params)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    out[name] = tuple(leaf.shape)
  return out


def _is_matmul_param(name: str, shape: tuple[int, ...]) -> bool:
  """A weight matrix (`optim.is_weight_matrix`: no norm scales or biases, stacked or not)
  other than the embeddings."""
  keys = name.split("/")
  return optim.is_weight_matrix(keys, len(shape)) and keys[-1] not in ("embed", "pos_embed")


def flop_counts(cfg: ModelConfig, seq_len: int) -> dict:
  """Parameter counts and FLOPs per token (see the module docstring)."""
  shapes = _leaves_by_name(cfg)
  size = lambda s: int(np.prod(s)) if s else 1
  total = sum(size(s) for s in shapes.values())
  embedding = sum(size(s) for n, s in shapes.items() if n.split("/")[-1] in ("embed", "pos_embed"))
  n_matmul = sum(size(s) for n, s in shapes.items() if _is_matmul_param(n, s))
  if cfg.head == "lm" and cfg.tie_embeddings:
    n_matmul += size(shapes["embed"])  # the tied embedding is the output projection
  attn_dim = cfg.num_heads * cfg.dim_per_head
  attn_train = 12 * cfg.num_layers * seq_len * attn_dim
  return dict(
      params_total=total, params_embedding=embedding, params_non_embedding=total - embedding,
      params_matmul=n_matmul,
      flops_per_token_fwd=2 * n_matmul + attn_train // 3,
      flops_per_token_train=6 * n_matmul + attn_train,
      attention_flops_per_token_train=attn_train)


def xla_flops_per_token(cfg: ModelConfig, batch_size: int, seq_len: int, train: bool = True) -> float:
  """XLA's own count (`cost_analysis`) for the SFT loss forward (+ backward when
  `train`) on one device, per token: a cross-check of `flop_counts` that also includes
  elementwise work. Compiles once more (a few seconds)."""
  mdef = model_def(cfg)
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), mdef.abstract_params)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       random_batch(batch_size, seq_len, cfg.vocab_size))
  loss = lambda p, b: losses.sft_loss(mdef.merge(p), b, None, None)[0]
  fn = jax.grad(loss) if train else loss
  cost = jax.jit(fn).lower(params, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / (batch_size * seq_len)


# --------------------------------------------------------------------------- timing


class CpuMonitor:
  """How busy the machine's CPUs were with *other* processes while a section ran
  (Linux /proc/stat minus this process's own CPU time). Benchmarks on a shared
  machine are only meaningful when this stays near 0."""

  def __enter__(self):
    self._t, self._sys, self._own = time.perf_counter(), _system_busy_s(), _own_cpu_s()
    return self

  def __exit__(self, *exc):
    wall = time.perf_counter() - self._t
    self.wall_s = wall
    self.own_cores = (_own_cpu_s() - self._own) / wall
    sys_busy = _system_busy_s()
    self.other_cores = (None if sys_busy is None or self._sys is None
                        else max((sys_busy - self._sys) / wall - self.own_cores, 0.0))
    return False

  def as_dict(self) -> dict:
    """The section's wall time (s), this process's busy cores, the busy cores of other
    processes (None without /proc/stat) and os.cpu_count()."""
    return dict(wall_s=self.wall_s, own_busy_cores=self.own_cores,
                other_busy_cores=self.other_cores, num_cpus=os.cpu_count())


def _own_cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _system_busy_s() -> float | None:
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
  return busy / os.sysconf("SC_CLK_TCK")


def _time(fn, reps: int) -> list[float]:
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def model_matmul_shapes(cfg: ModelConfig, batch_size: int, seq_len: int):
  """(M, K, N, contraction) of the model's big matmuls; 'nn' = x @ w, 'tn' = x^T @ y
  (weight gradient), 'nt' = y @ w^T (input gradient)."""
  T, D, F, V = batch_size * seq_len, cfg.d_model, cfg.d_ff, cfg.vocab_size
  A = cfg.num_heads * cfg.dim_per_head
  return [(T, D, F, "nn"), (T, F, D, "nn"), (T, D, A, "nn"), (T, D, V, "nn"),
          (D, T, F, "tn"), (T, F, D, "nt")]


def matmul_ceiling(dtype, shapes=None, reps: int = 5, square=(2048, 4096)) -> dict:
  """Best measured FLOP/s of jitted jnp.dot over `square` sizes and `shapes`."""
  dtype = jnp.dtype(dtype)
  cases = [(n, n, n, "nn") for n in square] + list(shapes or [])
  results = []
  for M, K, N, kind in cases:
    key_a, key_b = jax.random.split(jax.random.key(0))
    if kind == "tn":    # a: [K, M]; contract dim 0 of both
      a = jax.random.normal(key_a, (K, M), dtype)
      b = jax.random.normal(key_b, (K, N), dtype)
      f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ()))))
    elif kind == "nt":  # b: [N, K]
      a = jax.random.normal(key_a, (M, K), dtype)
      b = jax.random.normal(key_b, (N, K), dtype)
      f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ()))))
    else:
      a = jax.random.normal(key_a, (M, K), dtype)
      b = jax.random.normal(key_b, (K, N), dtype)
      f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, b))
    best = min(_time(lambda: f(a, b), reps))
    results.append(dict(shape=[M, K, N], kind=kind, flops_per_s=2.0 * M * K * N / best))
  best = max(results, key=lambda r: r["flops_per_s"])
  return dict(dtype=str(dtype), ceiling_flops_per_s=best["flops_per_s"], best_case=best,
              cases=results)


def random_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
  """An SFT batch with no padding and the loss on every token."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch_size, seq_len + 1)).astype(np.int32)
  return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
              loss_mask=np.ones((batch_size, seq_len), np.float32),
              mask=np.ones((batch_size, seq_len), bool),
              positions=np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                        (batch_size, seq_len)).copy())


def bench_train(cfg: ModelConfig, mesh, rules, *, batch_size: int, seq_len: int, steps: int,
                warmup: int = 2, seed: int = 0) -> dict:
  """Median seconds per SFT train step (AdamW, clipping) after `warmup` steps."""
  mdef = model_def(cfg)
  ocfg = dict(learning_rate=1e-4, warmup_steps=10, decay_steps=1000, end_lr_ratio=0.1,
              grad_clip_norm=1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  ocfg = ml_collections.ConfigDict(ocfg)
  opt = optim.make_optimizer(ocfg)
  params = init_params(mdef, mesh, rules, seed)
  state, shardings = ts.create_train_state(params, opt, mesh, mdef.shardings(mesh, rules))
  del params  # donated into the state from here on
  step = ts.make_train_step(mdef, losses.sft_loss, opt, mesh, rules, shardings,
                            lr_schedule=optim.learning_rate_schedule(ocfg))
  batch = shd.put_batch(random_batch(batch_size, seq_len, cfg.vocab_size, seed), mesh, rules)
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  compile_s = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  tokens = batch_size * seq_len
  return dict(batch_size=batch_size, seq_len=seq_len, tokens_per_step=tokens, steps=steps,
              step_s_median=med, step_s_min=min(times), step_s_max=max(times),
              first_call_s=compile_s, tokens_per_s=tokens / med,
              final_loss=float(metrics["loss"]), num_compiled=step.num_compiled())


def bench_compile(cfg: ModelConfig, mesh, rules, *, batch_size: int, seq_len: int) -> dict:
  """Seconds to trace + lower and to compile one SFT forward + backward of `cfg` with its
  layers unrolled and scanned (`model.scan_layers`), from abstract params and batch (nothing
  is allocated, nothing runs): {'unrolled' | 'scanned': {'lower_s', 'compile_s'}}."""
  out = {}
  example = random_batch(batch_size, seq_len, cfg.vocab_size)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                   sharding=shd.batch_sharding(mesh, rules, v.ndim, v.shape))
           for k, v in example.items()}
  for scan in (False, True):
    mdef = model_def(cfg.replace(scan_layers=scan))

    def loss(params, batch, mdef=mdef):
      with shd.axis_rules(mesh, rules):
        return losses.sft_loss(mdef.merge(params), batch, None, None)[0]
    t0 = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss)).lower(mdef.sharded_abstract(mesh, rules), batch)
    t1 = time.perf_counter()
    lowered.compile()
    out["scanned" if scan else "unrolled"] = dict(lower_s=t1 - t0,
                                                  compile_s=time.perf_counter() - t1)
  return out


def bench_decode(cfg: ModelConfig, mesh, rules, *, batch_size: int, prompt_len: int,
                 new_tokens: int, reps: int = 3, seed: int = 0, params=None) -> dict:
  """Generated tokens/s of `Sampler.generate` (temperature 1, no eos stop)."""
  from pit.sampler import Sampler
  mdef = model_def(cfg)
  if params is None:
    params = init_params(mdef, mesh, rules, seed)
  # eos = vocab_size: never sampled, so every row runs the full `new_tokens`.
  sampler = Sampler(mdef, mesh, rules, pad_id=0, eos_id=cfg.vocab_size,
                    prompt_buckets=(prompt_len,))
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(1, cfg.vocab_size, prompt_len)) for _ in range(batch_size)]

  def run(n):
    return lambda: sampler.generate(params, prompts, max_new_tokens=n, temperature=1.0, seed=seed)

  out = run(new_tokens)()  # compile
  assert int(out.lengths.min()) == new_tokens, "an eos stopped generation early"
  run(1)()                 # compile prefill-only shape
  t_full = statistics.median(_time(run(new_tokens), reps))
  t_prefill = statistics.median(_time(run(1), reps))
  decode_s = max(t_full - t_prefill, 1e-9)
  return dict(batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
              total_s=t_full, prefill_s=t_prefill,
              decode_tokens_per_s=batch_size * (new_tokens - 1) / decode_s,
              end_to_end_tokens_per_s=batch_size * new_tokens / t_full,
              prefill_tokens_per_s=batch_size * prompt_len / t_prefill)


# --------------------------------------------------------------------------- CLI


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The benchmark's command-line flags (model shape, batch, steps, dtype, mesh, decode
  settings, parts to skip, JSON output path)."""
  p = argparse.ArgumentParser(prog="python -m pit.bench", description=__doc__.split("\n")[0])
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--num_layers", type=int, default=4)
  p.add_argument("--num_heads", type=int, default=8)
  p.add_argument("--num_kv_heads", type=int, default=0)
  p.add_argument("--d_ff", type=int, default=1408, help="SwiGLU hidden size (1408 ~ 2/3 * 4 * 512, "
                 "about the parameter count of a 2048-wide GELU MLP)")
  p.add_argument("--mlp", default="swiglu", choices=("swiglu", "geglu", "gelu", "relu"))
  p.add_argument("--vocab_size", type=int, default=384)
  p.add_argument("--tie_embeddings", action="store_true")
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--remat", default="none", choices=("none", "full", "dots", "dots_saveable"))
  p.add_argument("--scan_layers", action="store_true", help="the train and decode parts with "
                 "scanned layers (model.scan_layers)")
  p.add_argument("--compile_layers", type=int, default=0, help="> 0: also time tracing and "
                 "compiling a forward + backward of the model at this depth, unrolled vs scanned")
  p.add_argument("--decode_batches", type=_ints, default=(1, 32))
  p.add_argument("--decode_tokens", type=int, default=128)
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--mesh", type=_ints, default=(1, -1, 1), help="mesh shape over (data, fsdp, tensor)")
  p.add_argument("--matmul_reps", type=int, default=5)
  p.add_argument("--matmul_squares", type=_ints, default=(2048, 4096),
                 help="square matmul sizes timed for the ceiling (besides the model's shapes)")
  p.add_argument("--skip", default="", help="comma list of parts to skip: train,ceiling,decode,xla_cost "
                 "(xla_cost: the cost_analysis cross-check of the FLOP count)")
  p.add_argument("--json_out", default="")
  return p.parse_args(argv)


def run(args: argparse.Namespace, devices=None) -> dict:
  """Runs the benchmark parts not in `--skip` (train, ceiling, decode, xla_cost) on a mesh of
  `devices` (default: all) and returns the report dict: device, model, FLOP counts and per
  part its figures (tokens/s, FLOP/s, seconds) with the CPU contention measured."""
  skip = set(filter(None, args.skip.split(",")))
  cfg = ModelConfig(vocab_size=args.vocab_size, d_model=args.d_model, num_layers=args.num_layers,
                    num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, d_ff=args.d_ff,
                    mlp=args.mlp, tie_embeddings=args.tie_embeddings,
                    max_seq_len=max(args.seq_len, args.prompt_len + args.decode_tokens),
                    dtype=args.dtype, param_dtype="float32", remat=args.remat,
                    scan_layers=args.scan_layers)
  mesh = shd.make_mesh(args.mesh, devices=devices)
  rules = shd.DEFAULT_RULES
  report = dict(
      device=str(jax.devices()[0].device_kind), platform=jax.default_backend(),
      num_devices=jax.device_count(), mesh=dict(mesh.shape), jax_version=jax.__version__,
      model=dataclasses.asdict(cfg), flop_convention=FLOP_CONVENTION,
      counts=flop_counts(cfg, args.seq_len))
  if "train" not in skip:
    with CpuMonitor() as mon:
      report["train"] = bench_train(cfg, mesh, rules, batch_size=args.batch_size,
                                    seq_len=args.seq_len, steps=args.steps, warmup=args.warmup)
    report["train"]["cpu"] = mon.as_dict()
    if "xla_cost" not in skip:
      report["counts"]["xla_flops_per_token_train"] = xla_flops_per_token(
          cfg, args.batch_size, args.seq_len)
    report["train"]["flops_per_s"] = (report["train"]["tokens_per_s"]
                                      * report["counts"]["flops_per_token_train"])
  if "ceiling" not in skip:
    shapes = model_matmul_shapes(cfg, args.batch_size, args.seq_len)
    with CpuMonitor() as mon:
      ceiling = matmul_ceiling(args.dtype, shapes, reps=args.matmul_reps,
                               square=args.matmul_squares)
    ceiling["cpu"] = mon.as_dict()
    # The ceiling is one device's; a mesh of accelerators has mesh.size of them, but the
    # CPU devices of one process (e.g. XLA's fake host devices) share the same cores.
    per_mesh = 1 if jax.default_backend() == "cpu" else mesh.size
    ceiling["mesh_ceiling_flops_per_s"] = ceiling["ceiling_flops_per_s"] * per_mesh
    if jnp.dtype(args.dtype) != jnp.float32:
      # Low-precision dots are not always faster (XLA:CPU bf16 is slower than fp32 on
      # many CPUs): also give the float32 ceiling so the ratio cannot flatter bf16.
      with CpuMonitor() as mon32:
        f32 = matmul_ceiling("float32", shapes, reps=args.matmul_reps, square=args.matmul_squares)
      ceiling["float32_ceiling_flops_per_s"] = f32["ceiling_flops_per_s"]
      ceiling["float32_cases"] = f32["cases"]
      ceiling["float32_cpu"] = mon32.as_dict()
    report["ceiling"] = ceiling
    if "train" in report:
      report["train"]["fraction_of_ceiling"] = (report["train"]["flops_per_s"]
                                                / ceiling["mesh_ceiling_flops_per_s"])
      if "float32_ceiling_flops_per_s" in ceiling:
        report["train"]["fraction_of_float32_ceiling"] = (
            report["train"]["flops_per_s"] / (ceiling["float32_ceiling_flops_per_s"] * per_mesh))
  if args.compile_layers > 0:
    with CpuMonitor() as mon:
      report["compile"] = bench_compile(cfg.replace(num_layers=args.compile_layers), mesh, rules,
                                        batch_size=args.batch_size, seq_len=args.seq_len)
    report["compile"].update(num_layers=args.compile_layers, cpu=mon.as_dict())
  if "decode" not in skip:
    report["decode"] = []
    params = init_params(model_def(cfg), mesh, rules, 0)
    for b in args.decode_batches:
      with CpuMonitor() as mon:
        d = bench_decode(cfg, mesh, rules, batch_size=b, prompt_len=args.prompt_len,
                         new_tokens=args.decode_tokens, params=params)
      d["cpu"] = mon.as_dict()
      report["decode"].append(d)
  return report


def format_report(r: dict) -> str:
  """The report of `run` as text for the terminal: counts, train step time (ms), tokens/s,
  GFLOP/s, the matmul ceiling and achieved / ceiling (%), decode tokens/s, and a warning
  when other processes kept more than 0.1 cores busy during any part."""
  c, m = r["counts"], r["model"]
  lines = [
      f"device: {r['device']} ({r['platform']}, {r['num_devices']} device(s), mesh {r['mesh']}), "
      f"jax {r['jax_version']}",
      f"model: d_model={m['d_model']} layers={m['num_layers']} heads={m['num_heads']} "
      f"kv_heads={m['num_kv_heads'] or m['num_heads']} d_ff={m['d_ff']} ({m['mlp']}) "
      f"vocab={m['vocab_size']} tied={m['tie_embeddings']} dtype={m['dtype']} remat={m['remat']} "
      f"scan_layers={m.get('scan_layers', False)}",
      "",
      f"{'params total':<34}{c['params_total']:>16,}",
      f"{'params non-embedding':<34}{c['params_non_embedding']:>16,}",
      f"{'params in matmuls (N_matmul)':<34}{c['params_matmul']:>16,}",
      f"{'attention FLOPs/token (train)':<34}{c['attention_flops_per_token_train']:>16,}",
      f"{'FLOPs/token (train)':<34}{c['flops_per_token_train']:>16,}",
      f"  convention: {r['flop_convention']}",
  ]
  if "xla_flops_per_token_train" in c:
    x = c["xla_flops_per_token_train"]
    lines.append(f"{'  cross-check: XLA cost_analysis':<34}{x:>16,.0f}  (fwd+bwd of the loss, incl. "
                 f"elementwise; {100 * (x / c['flops_per_token_train'] - 1):+.1f}%)")
  if "train" in r:
    t = r["train"]
    lines += [
        "",
        f"train step (batch {t['batch_size']} x seq {t['seq_len']} = {t['tokens_per_step']} tokens, "
        f"median of {t['steps']} steps after warm-up; first call {t['first_call_s']:.1f} s)",
        f"{'  step time median / min / max':<34}{t['step_s_median'] * 1e3:>12.1f} / "
        f"{t['step_s_min'] * 1e3:.1f} / {t['step_s_max'] * 1e3:.1f} ms",
        f"{'  tokens/s':<34}{t['tokens_per_s']:>16,.0f}",
        f"{'  achieved FLOP/s':<34}{t['flops_per_s'] / 1e9:>16.1f} GFLOP/s",
    ]
  if "ceiling" in r:
    ce = r["ceiling"]
    lines += ["", f"matmul ceiling ({ce['dtype']}, jitted jnp.dot, best over cases):"]
    for case in ce["cases"]:
      M, K, N = case["shape"]
      lines.append(f"  {M:>6} x {K:>5} x {N:>5} {case['kind']:<3}{case['flops_per_s'] / 1e9:>14.1f} GFLOP/s")
    lines.append(f"{'  ceiling (per device)':<34}{ce['ceiling_flops_per_s'] / 1e9:>16.1f} GFLOP/s")
    if "train" in r:
      lines.append(f"{'  achieved / ceiling':<34}{100 * r['train']['fraction_of_ceiling']:>15.1f} %")
    if "float32_ceiling_flops_per_s" in ce:
      lines.append(f"{'  float32 ceiling (reference)':<34}{ce['float32_ceiling_flops_per_s'] / 1e9:>16.1f} GFLOP/s")
      if "train" in r:
        lines.append(f"{'  achieved / float32 ceiling':<34}"
                     f"{100 * r['train']['fraction_of_float32_ceiling']:>15.1f} %")
  if "compile" in r:
    co = r["compile"]
    lines += ["", f"forward + backward of a {co['num_layers']}-layer model, trace + lower / compile:"]
    for kind in ("unrolled", "scanned"):
      lines.append(f"{'  ' + kind:<34}{co[kind]['lower_s']:>10.1f} s / {co[kind]['compile_s']:.1f} s")
  if "decode" in r:
    lines += ["", "decode (Sampler.generate, temperature 1, no eos stop; prefill timed separately)"]
    lines.append(f"  {'batch':>5} {'prompt':>6} {'new':>5} {'decode tok/s':>13} {'prefill s':>10} "
                 f"{'total s':>8} {'end-to-end tok/s':>17}")
    for d in r["decode"]:
      lines.append(f"  {d['batch_size']:>5} {d['prompt_len']:>6} {d['new_tokens']:>5} "
                   f"{d['decode_tokens_per_s']:>13,.0f} {d['prefill_s']:>10.3f} {d['total_s']:>8.3f} "
                   f"{d['end_to_end_tokens_per_s']:>17,.0f}")
  parts = [("train", (r.get("train") or {}).get("cpu")),
           ("ceiling", (r.get("ceiling") or {}).get("cpu")),
           ("float32 ceiling", (r.get("ceiling") or {}).get("float32_cpu"))]
  parts += [(f"decode b={d['batch_size']}", d.get("cpu")) for d in r.get("decode", [])]
  parts.append(("compile", (r.get("compile") or {}).get("cpu")))
  busy = [(name, cpu["other_busy_cores"]) for name, cpu in parts
          if cpu and cpu.get("other_busy_cores") is not None]
  lines += ["", "other processes' CPU use during each part (cores busy; should be ~0): "
            + ", ".join(f"{n} {v:.2f}" for n, v in busy)]
  if any(v > 0.1 for _, v in busy):
    lines.append("WARNING: the machine was busy with other work; these figures are not clean.")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None, devices=None) -> dict:
  """Command line: runs the benchmark, prints `format_report`, writes the report as JSON
  to `--json_out` when given and returns it."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a == "--peer" or a.startswith("--peer=") for a in argv):
    from pit import bench_peer   # PIT vs PyTorch side by side (issue 17); needs '.[peer]'
    return bench_peer.main(argv)
  args = parse_args(argv)
  report = run(args, devices)
  print(format_report(report), flush=True)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
