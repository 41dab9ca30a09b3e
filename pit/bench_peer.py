"""PIT against PyTorch on the same machine, in one run: `python -m pit.bench --peer=torch`.

Each workload runs on both sides with the same model (PIT's parameters exported to an HF
`LlamaForCausalLM` directory, which the PyTorch side loads), the same batches (numpy, one
seed) and the same optimizer settings (AdamW b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1 on
matrices only, global-norm clipping at 1.0):

  matmul   jitted `jnp.dot` vs `torch.mm`, float32 2048 x 2048 (the machine's ceiling)
  sft      one SFT train step (forward, backward, clipping, AdamW) at batch x seq tokens:
           `pit.train_step` + `pit.losses.sft_loss` vs HF `LlamaForCausalLM` eager (SDPA
           attention) + cross-entropy + `torch.optim.AdamW`
  dpo      one DPO step on `batch` pairs of `seq` tokens with a live frozen reference (the
           reference forward inside the step, as TRL does by default; a second model,
           seed + 1, so the first loss checks both sides' policy and reference log-probs): `pit.losses.dpo_loss`
           vs a plain PyTorch DPO step (policy forward on chosen+rejected, reference forward
           under no_grad, summed response log-probs, -log sigmoid(beta h))
  decode   `pit.sampler.Sampler.generate` vs HF `generate`, temperature 1 (top-k 0, top-p 1),
           no eos stop; decode tokens/s = batch * (new - 1) / (t(new) - t(1)); prefill = t(1)
  scaling  SFT step time at a fixed number of tokens per step over sequence lengths

Every (side, workload) runs in its own fresh process (so peak memory is that process's
`ru_maxrss`, and neither side's thread pool or allocator sees the other's), and the
rounds interleave the sides (round r runs PIT first when r is even, PyTorch first when
odd); each figure is the median over rounds. Compile / warm-up calls are excluded.
Same function check: the first step's SFT loss of both sides (|difference| reported) and
the greedy tokens of the decode prompts' first 16 steps (identical or not).

The PyTorch side is an optional extra (`pip install -e '.[peer]'`: torch, transformers),
never a run-time dependency of PIT. This module imports numpy only at the top level so the
PyTorch worker never loads JAX.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import numpy as np

PARTS = ("matmul", "sft", "dpo", "decode", "scaling")
SIDES = ("pit", "torch")
OPTIM = dict(learning_rate=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0)
DPO_BETA = 0.1
CHECK_TOKENS = 16


# ------------------------------------------------------------------------------ data


def sft_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
  """An SFT batch without padding, the loss on every token: inputs/targets/positions
  int32 [B, L], mask bool [B, L], loss_mask float32 [B, L]."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch_size, seq_len + 1)).astype(np.int32)
  return dict(inputs=tokens[:, :-1].copy(), targets=tokens[:, 1:].copy(),
              loss_mask=np.ones((batch_size, seq_len), np.float32),
              mask=np.ones((batch_size, seq_len), bool),
              positions=np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                        (batch_size, seq_len)).copy())


def pair_batch(pairs: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
  """A DPO batch of `pairs` (chosen, rejected) rows [B, 2, L] sharing a prompt of L/2
  tokens, the loss on the response half (targets of positions L/2 - 1 ... L - 2), no
  padding; weight [B] = 1."""
  rng = np.random.default_rng(seed)
  prompt = rng.integers(0, vocab, (pairs, 1, seq_len // 2))
  answers = rng.integers(0, vocab, (pairs, 2, seq_len + 1 - seq_len // 2))
  tokens = np.concatenate([np.repeat(prompt, 2, axis=1), answers], axis=2).astype(np.int32)
  loss_mask = np.zeros((pairs, 2, seq_len), np.float32)
  loss_mask[:, :, seq_len // 2 - 1:] = 1.0
  return dict(inputs=tokens[..., :-1].copy(), targets=tokens[..., 1:].copy(),
              loss_mask=loss_mask, mask=np.ones((pairs, 2, seq_len), bool),
              positions=np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                        (pairs, 2, seq_len)).copy(),
              weight=np.ones((pairs,), np.float32))


def decode_prompts(batch_size: int, prompt_len: int, vocab: int, seed: int = 0) -> np.ndarray:
  """int32 [B, P] prompt tokens in [1, vocab) (0 is the pad id)."""
  return np.random.default_rng(seed).integers(1, vocab, (batch_size, prompt_len)).astype(np.int32)


def _median_time(fn, reps: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def _maxrss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


# ------------------------------------------------------------------------------ PIT side


def _pit_cfg(shape: dict):
  from pit.model import ModelConfig
  return ModelConfig(vocab_size=shape["vocab_size"], d_model=shape["d_model"],
                     num_layers=shape["num_layers"], num_heads=shape["num_heads"],
                     d_ff=shape["d_ff"], max_seq_len=shape["max_seq_len"],
                     norm_eps=1e-6, family="llama")


def _pit_setup(shape: dict, seed_offset: int = 0):
  from pit import sharding as shd
  from pit.params import init_params, model_def
  cfg = _pit_cfg(shape)
  mdef = model_def(cfg)
  mesh = shd.make_mesh((1, -1, 1))
  rules = shd.DEFAULT_RULES
  return cfg, mdef, mesh, rules, init_params(mdef, mesh, rules, shape["seed"] + seed_offset)


def pit_export(shape: dict, out_dir: str) -> dict:
  """Writes PIT's initial parameters as HF Llama directories: the policy (seed
  `shape['seed']`) to `out_dir` and the DPO reference (seed + 1, so that the first DPO
  loss depends on both models) to `out_dir`-ref."""
  from pit import hf_export
  cfg, _, _, _, params = _pit_setup(shape)
  _, _, _, _, ref = _pit_setup(shape, seed_offset=1)
  hf_export.export(cfg, ref, out_dir + "-ref", family="llama")
  return hf_export.export(cfg, params, out_dir, family="llama")


def _pit_train_step(mdef, mesh, rules, params, loss_fn, extra=None, extra_shardings=None):
  import ml_collections
  from pit import optim
  from pit import train_step as ts
  ocfg = ml_collections.ConfigDict(dict(OPTIM, warmup_steps=0, decay_steps=1000, end_lr_ratio=1.0))
  opt = optim.make_optimizer(ocfg)
  state, shardings = ts.create_train_state(params, opt, mesh, mdef.shardings(mesh, rules))
  step = ts.make_train_step(mdef, loss_fn, opt, mesh, rules, shardings,
                            extra_shardings=extra_shardings)
  return state, step


def _pit_time_steps(state, step, batch, extra, steps: int) -> dict:
  import jax
  t0 = time.perf_counter()
  state, metrics = step(state, batch, extra)
  first_loss = float(metrics["loss"])
  compile_s = time.perf_counter() - t0
  state, metrics = step(state, batch, extra)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch, extra)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  return dict(step_s=statistics.median(times), step_times=times, first_call_s=compile_s,
              first_loss=first_loss)


def pit_worker(part: str, shape: dict, args: dict) -> dict:
  """One PIT measurement (see the module docstring) in this process."""
  import jax
  import jax.numpy as jnp
  from pit import losses
  from pit import sharding as shd
  if part == "matmul":
    n = args["matmul_n"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, b))
    best = min(_median_time(lambda: jax.block_until_ready(f(a, b)), 7)[1])
    return dict(flops_per_s=2.0 * n ** 3 / best)
  cfg, mdef, mesh, rules, params = _pit_setup(shape)
  V = cfg.vocab_size
  if part in ("sft", "scaling"):
    seqs = [args["seq_len"]] if part == "sft" else args["scaling_seqs"]
    out = {}
    for L in seqs:
      B = args["batch_size"] if part == "sft" else max(args["scaling_tokens"] // L, 1)
      state, step = _pit_train_step(mdef, mesh, rules, jax.tree.map(jnp.copy, params),
                                    losses.sft_loss)
      batch = shd.put_batch(sft_batch(B, L, V, shape["seed"]), mesh, rules)
      r = _pit_time_steps(state, step, batch, None, args["steps"])
      r.update(batch_size=B, seq_len=L, tokens_per_s=B * L / r["step_s"])
      out[str(L)] = r
      del state, step
    return out if part == "scaling" else out[str(args["seq_len"])]
  if part == "dpo":
    ref = _pit_setup(shape, seed_offset=1)[4]
    loss_fn = losses.make_dpo_loss(_dpo_cfg())
    state, step = _pit_train_step(mdef, mesh, rules, params, loss_fn,
                                  extra_shardings={"ref_params": mdef.shardings(mesh, rules)})
    batch = shd.put_batch(pair_batch(args["batch_size"], args["seq_len"], V, shape["seed"]),
                          mesh, rules)
    r = _pit_time_steps(state, step, batch, {"ref_params": ref}, args["steps"])
    r["pairs_per_s"] = args["batch_size"] / r["step_s"]
    return r
  if part == "decode":
    from pit.sampler import Sampler
    out = {}
    P, N = args["prompt_len"], args["new_tokens"]
    sampler = Sampler(mdef, mesh, rules, pad_id=0, eos_id=V, prompt_buckets=(P,))
    for b in args["decode_batches"]:
      prompts = [list(p) for p in decode_prompts(b, P, V, shape["seed"])]
      gen = lambda n, t=1.0: sampler.generate(params, prompts, max_new_tokens=n, temperature=t,
                                              seed=0)
      greedy = gen(CHECK_TOKENS, 0.0).tokens[:2].tolist()
      gen(N), gen(1)
      t_full, _ = _median_time(lambda: gen(N), args["decode_reps"])
      t_pre, _ = _median_time(lambda: gen(1), args["decode_reps"])
      out[str(b)] = dict(total_s=t_full, prefill_s=t_pre,
                         decode_tokens_per_s=b * (N - 1) / max(t_full - t_pre, 1e-9),
                         greedy_tokens=greedy)
    return out
  raise ValueError(f"unknown part {part!r}")


def _dpo_cfg():
  import ml_collections
  return ml_collections.ConfigDict(dict(loss="sigmoid", beta=DPO_BETA, label_smoothing=0.0,
                                        nll_coef=0.0))


# ------------------------------------------------------------------------------ PyTorch side


def _torch_model(hf_dir: str):
  import torch
  from transformers import LlamaForCausalLM
  torch.manual_seed(0)
  model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
  return model


def _torch_optimizer(model):
  import torch
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  return torch.optim.AdamW([dict(params=decay, weight_decay=OPTIM["weight_decay"]),
                            dict(params=no_decay, weight_decay=0.0)],
                           lr=OPTIM["learning_rate"], betas=(OPTIM["b1"], OPTIM["b2"]),
                           eps=OPTIM["eps"])


def torch_worker(part: str, shape: dict, args: dict, hf_dir: str) -> dict:
  """One PyTorch measurement (see the module docstring) in this process."""
  import torch
  import torch.nn.functional as F
  if part == "matmul":
    n = args["matmul_n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_median_time(lambda: torch.mm(a, b), 7)[1])
    return dict(flops_per_s=2.0 * n ** 3 / best)
  V = shape["vocab_size"]
  if part in ("sft", "scaling"):
    seqs = [args["seq_len"]] if part == "sft" else args["scaling_seqs"]
    out = {}
    for L in seqs:
      B = args["batch_size"] if part == "sft" else max(args["scaling_tokens"] // L, 1)
      model = _torch_model(hf_dir)
      model.train()
      opt = _torch_optimizer(model)
      b = {k: torch.from_numpy(v) for k, v in sft_batch(B, L, V, shape["seed"]).items()}

      def step():
        logits = model(input_ids=b["inputs"].long(), attention_mask=b["mask"].long(),
                       position_ids=b["positions"].long()).logits
        nll = F.cross_entropy(logits.float().reshape(-1, V), b["targets"].long().reshape(-1),
                              reduction="none")
        w = b["loss_mask"].reshape(-1)
        loss = (nll * w).sum() / w.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["grad_clip_norm"])
        opt.step()
        return float(loss)

      t0 = time.perf_counter()
      first = step()
      first_s = time.perf_counter() - t0
      step()
      med, times = _median_time(step, args["steps"])
      out[str(L)] = dict(step_s=med, step_times=times, first_call_s=first_s, first_loss=first,
                         batch_size=B, seq_len=L, tokens_per_s=B * L / med)
      del model, opt
    return out if part == "scaling" else out[str(args["seq_len"])]
  if part == "dpo":
    model, ref = _torch_model(hf_dir), _torch_model(hf_dir + "-ref")
    model.train()
    ref.eval()
    for p in ref.parameters():
      p.requires_grad_(False)
    opt = _torch_optimizer(model)
    b = {k: torch.from_numpy(v) for k, v in pair_batch(args["batch_size"], args["seq_len"], V,
                                                       shape["seed"]).items()}
    flat = {k: v.reshape(-1, v.shape[-1]) for k, v in b.items() if k != "weight"}

    def seq_logps(m):
      logits = m(input_ids=flat["inputs"].long(), attention_mask=flat["mask"].long(),
                 position_ids=flat["positions"].long()).logits.float()
      logp = torch.log_softmax(logits, -1).gather(-1, flat["targets"].long()[..., None])[..., 0]
      return (logp * flat["loss_mask"]).sum(-1).reshape(-1, 2)

    def step():
      pi = seq_logps(model)
      with torch.no_grad():
        rf = seq_logps(ref)
      h = (pi[:, 0] - rf[:, 0]) - (pi[:, 1] - rf[:, 1])
      loss = -F.logsigmoid(DPO_BETA * h).mean()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["grad_clip_norm"])
      opt.step()
      return float(loss)

    t0 = time.perf_counter()
    first = step()
    first_s = time.perf_counter() - t0
    step()
    med, times = _median_time(step, args["steps"])
    return dict(step_s=med, step_times=times, first_call_s=first_s, first_loss=first,
                pairs_per_s=args["batch_size"] / med)
  if part == "decode":
    model = _torch_model(hf_dir)
    model.eval()
    P, N = args["prompt_len"], args["new_tokens"]
    out = {}
    for bsz in args["decode_batches"]:
      ids = torch.from_numpy(decode_prompts(bsz, P, V, shape["seed"])).long()
      mask = torch.ones_like(ids)

      def gen(n, greedy=False):
        with torch.no_grad():
          kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0,
                                                          top_k=0, top_p=1.0)
          return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                min_new_tokens=n, eos_token_id=None, pad_token_id=0, **kw)

      greedy = gen(CHECK_TOKENS, True)[:2, P:].tolist()
      gen(N), gen(1)
      t_full, _ = _median_time(lambda: gen(N), args["decode_reps"])
      t_pre, _ = _median_time(lambda: gen(1), args["decode_reps"])
      out[str(bsz)] = dict(total_s=t_full, prefill_s=t_pre,
                           decode_tokens_per_s=bsz * (N - 1) / max(t_full - t_pre, 1e-9),
                           greedy_tokens=greedy)
    return out
  raise ValueError(f"unknown part {part!r}")


# ------------------------------------------------------------------------------ driver


def _worker_main(argv: Sequence[str]) -> None:
  spec = json.loads(argv[0])
  side, part = spec["side"], spec["part"]
  if side == "pit":
    result = pit_worker(part, spec["shape"], spec["args"])
  elif side == "export":
    result = pit_export(spec["shape"], spec["hf_dir"])
  else:
    result = torch_worker(part, spec["shape"], spec["args"], spec["hf_dir"])
  result = dict(result=result, maxrss_gb=_maxrss_gb())
  with open(spec["out"], "w") as f:
    json.dump(result, f)


def _run_worker(spec: dict, tmp: str, timeout_s: float) -> dict:
  out = os.path.join(tmp, f"{spec['side']}-{spec['part']}.json")
  spec = dict(spec, out=out)
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # real devices only: never the tests' fake host devices
  proc = subprocess.run([sys.executable, "-m", "pit.bench_peer", "--worker", json.dumps(spec)],
                        env=env, capture_output=True, text=True, timeout=timeout_s)
  if proc.returncode != 0:
    raise RuntimeError(f"bench worker {spec['side']}/{spec['part']} failed "
                       f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  with open(out) as f:
    return json.load(f)


def _system_busy_s() -> float | None:
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def run(shape: dict, args: dict, parts: Sequence[str], rounds: int, log=print,
        timeout_s: float = 1800) -> dict:
  """Runs `parts` for `rounds` interleaved rounds on both sides; returns the report: per
  part and side the per-round results, the medians, the ratios PIT / peer, the same-function
  checks and the measured machine load. Raises RuntimeError when a worker fails (its stderr
  tail included) and ImportError when torch / transformers are missing."""
  import importlib.util
  for mod in ("torch", "transformers"):
    if importlib.util.find_spec(mod) is None:
      raise ImportError(f"--peer=torch needs {mod}: pip install -e '.[peer]'")
  report = dict(shape=shape, args=args, rounds=rounds, num_cpus=os.cpu_count(), raw={})
  with tempfile.TemporaryDirectory(prefix="pit-bench-peer-") as tmp:
    hf_dir = os.path.join(tmp, "hf")
    _run_worker(dict(side="export", part="export", shape=shape, hf_dir=hf_dir), tmp, timeout_s)
    busy0, t0, kids0 = _system_busy_s(), time.perf_counter(), _children_cpu_s()
    for r in range(rounds):
      for part in parts:
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for side in order:
          t = time.perf_counter()
          res = _run_worker(dict(side=side, part=part, shape=shape, args=args, hf_dir=hf_dir),
                            tmp, timeout_s)
          report["raw"].setdefault(part, {}).setdefault(side, []).append(res)
          log(f"round {r + 1}/{rounds} {part:<8} {side:<6} {time.perf_counter() - t:6.1f} s")
    wall = time.perf_counter() - t0
    busy1, kids1 = _system_busy_s(), _children_cpu_s()
  if busy0 is not None and busy1 is not None:
    # other processes' load: the machine's busy time less the workers' own CPU time
    report["other_busy_cores"] = max((busy1 - busy0) - (kids1 - kids0), 0.0) / wall
  report["summary"] = summarize(report["raw"], args)
  return report


def _med(values):
  return statistics.median(values) if values else float("nan")


def summarize(raw: dict, args: dict) -> dict:
  """Medians over rounds and PIT / peer ratios (higher is better for PIT) per workload."""
  s: dict = {}
  get = lambda part, side: raw.get(part, {}).get(side, [])
  if "matmul" in raw:
    p = _med([x["result"]["flops_per_s"] for x in get("matmul", "pit")])
    t = _med([x["result"]["flops_per_s"] for x in get("matmul", "torch")])
    s["matmul"] = dict(pit_gflops=p / 1e9, torch_gflops=t / 1e9, ratio=p / t)
  if "sft" in raw:
    p = _med([x["result"]["tokens_per_s"] for x in get("sft", "pit")])
    t = _med([x["result"]["tokens_per_s"] for x in get("sft", "torch")])
    lp = get("sft", "pit")[0]["result"]["first_loss"]
    lt = get("sft", "torch")[0]["result"]["first_loss"]
    s["sft"] = dict(pit_tokens_per_s=p, torch_tokens_per_s=t, ratio=p / t,
                    first_loss_pit=lp, first_loss_torch=lt, first_loss_abs_diff=abs(lp - lt),
                    pit_maxrss_gb=_med([x["maxrss_gb"] for x in get("sft", "pit")]),
                    torch_maxrss_gb=_med([x["maxrss_gb"] for x in get("sft", "torch")]))
    if "matmul" in s:
      from_shape = args.get("train_flops_per_token")
      if from_shape:
        s["sft"]["pit_fraction_of_ceiling"] = p * from_shape / (s["matmul"]["pit_gflops"] * 1e9)
        s["sft"]["torch_fraction_of_ceiling"] = t * from_shape / (s["matmul"]["torch_gflops"] * 1e9)
  if "dpo" in raw:
    p = _med([x["result"]["pairs_per_s"] for x in get("dpo", "pit")])
    t = _med([x["result"]["pairs_per_s"] for x in get("dpo", "torch")])
    lp = get("dpo", "pit")[0]["result"]["first_loss"]
    lt = get("dpo", "torch")[0]["result"]["first_loss"]
    s["dpo"] = dict(pit_pairs_per_s=p, torch_pairs_per_s=t, ratio=p / t,
                    first_loss_pit=lp, first_loss_torch=lt, first_loss_abs_diff=abs(lp - lt),
                    pit_maxrss_gb=_med([x["maxrss_gb"] for x in get("dpo", "pit")]),
                    torch_maxrss_gb=_med([x["maxrss_gb"] for x in get("dpo", "torch")]))
  if "decode" in raw:
    s["decode"] = {}
    for b in map(str, args["decode_batches"]):
      pit_r = [x["result"][b] for x in get("decode", "pit")]
      tor_r = [x["result"][b] for x in get("decode", "torch")]
      p, t = (_med([r["decode_tokens_per_s"] for r in rs]) for rs in (pit_r, tor_r))
      pp, tp = (_med([r["prefill_s"] for r in rs]) for rs in (pit_r, tor_r))
      s["decode"][b] = dict(pit_tokens_per_s=p, torch_tokens_per_s=t, ratio=p / t,
                            pit_prefill_s=pp, torch_prefill_s=tp, prefill_ratio=tp / pp,
                            greedy_identical=pit_r[0]["greedy_tokens"] == tor_r[0]["greedy_tokens"])
  if "scaling" in raw:
    s["scaling"] = {}
    for L in map(str, args["scaling_seqs"]):
      p = _med([x["result"][L]["step_s"] for x in get("scaling", "pit")])
      t = _med([x["result"][L]["step_s"] for x in get("scaling", "torch")])
      s["scaling"][L] = dict(pit_step_s=p, torch_step_s=t, ratio=t / p)
  return s


def format_summary(report: dict) -> str:
  """The summary as a text table: workload, PIT, peer, PIT / peer (> 1: PIT faster)."""
  s, a, shp = report["summary"], report["args"], report["shape"]
  lines = [f"PIT vs PyTorch, same machine ({report['num_cpus']} CPUs), float32, median of "
           f"{report['rounds']} interleaved round(s); model d_model {shp['d_model']}, "
           f"{shp['num_layers']} layers, {shp['num_heads']} heads, MLP {shp['d_ff']}, "
           f"vocab {shp['vocab_size']}",
           f"{'workload':<40}{'PIT':>16}{'peer':>16}{'PIT/peer':>10}"]
  row = lambda name, p, t, r: lines.append(f"{name:<40}{p:>16}{t:>16}{r:>10.2f}")
  if "matmul" in s:
    m = s["matmul"]
    row(f"matmul {a['matmul_n']}^2 (GFLOP/s)", f"{m['pit_gflops']:.0f}", f"{m['torch_gflops']:.0f}",
        m["ratio"])
  if "sft" in s:
    m = s["sft"]
    row(f"SFT step {a['batch_size']}x{a['seq_len']} (tokens/s)", f"{m['pit_tokens_per_s']:.0f}",
        f"{m['torch_tokens_per_s']:.0f}", m["ratio"])
    if "pit_fraction_of_ceiling" in m:
      lines.append(f"  of own matmul ceiling: PIT {100 * m['pit_fraction_of_ceiling']:.0f} %, "
                   f"PyTorch {100 * m['torch_fraction_of_ceiling']:.0f} %")
    lines.append(f"  first-step loss |PIT - PyTorch| = {m['first_loss_abs_diff']:.2e}; "
                 f"peak RSS PIT {m['pit_maxrss_gb']:.2f} GB, PyTorch {m['torch_maxrss_gb']:.2f} GB")
  if "dpo" in s:
    m = s["dpo"]
    row(f"DPO step {a['batch_size']} pairs x {a['seq_len']} (pairs/s)", f"{m['pit_pairs_per_s']:.2f}",
        f"{m['torch_pairs_per_s']:.2f}", m["ratio"])
    lines.append(f"  first-step loss |PIT - PyTorch| = {m['first_loss_abs_diff']:.2e}; "
                 f"peak RSS PIT {m['pit_maxrss_gb']:.2f} GB, PyTorch {m['torch_maxrss_gb']:.2f} GB")
  for b, m in s.get("decode", {}).items():
    row(f"decode batch {b}, {a['prompt_len']}+{a['new_tokens']} (tokens/s)",
        f"{m['pit_tokens_per_s']:.0f}", f"{m['torch_tokens_per_s']:.0f}", m["ratio"])
    row(f"  prefill batch {b} (s; ratio peer/PIT)", f"{m['pit_prefill_s']:.3f}",
        f"{m['torch_prefill_s']:.3f}", m["prefill_ratio"])
    lines.append(f"  greedy tokens identical: {m['greedy_identical']}")
  for L, m in s.get("scaling", {}).items():
    row(f"SFT step at seq {L}, {a['scaling_tokens']} tokens (s; peer/PIT)", f"{m['pit_step_s']:.2f}",
        f"{m['torch_step_s']:.2f}", m["ratio"])
  busy = report.get("other_busy_cores")
  if busy is not None:
    lines.append(f"other processes' load during the run: {busy:.2f} cores (should be ~0)")
    if busy > 0.1:
      lines.append("WARNING: the machine was busy with other work; these ratios are not clean.")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """`python -m pit.bench --peer=torch` flags (shape of the issue's table by default)."""
  p = argparse.ArgumentParser(prog="python -m pit.bench --peer=torch")
  p.add_argument("--peer", default="torch", choices=("torch",))
  p.add_argument("--parts", default=",".join(PARTS))
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--num_layers", type=int, default=4)
  p.add_argument("--num_heads", type=int, default=8)
  p.add_argument("--d_ff", type=int, default=1408)
  p.add_argument("--vocab_size", type=int, default=32000)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--decode_batches", default="1,32")
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--decode_reps", type=int, default=3)
  p.add_argument("--scaling_seqs", default="128,256,512,1024")
  p.add_argument("--scaling_tokens", type=int, default=2048)
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--json_out", default="")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
  """Command line (`python -m pit.bench --peer=torch [...]`): runs, prints the table and
  writes the JSON report to --json_out."""
  a = parse_args(argv)
  parts = [x for x in a.parts.split(",") if x]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise SystemExit(f"--parts: unknown {unknown}; known: {list(PARTS)}")
  ints = lambda t: [int(x) for x in t.split(",") if x]
  scaling = ints(a.scaling_seqs)
  shape = dict(vocab_size=a.vocab_size, d_model=a.d_model, num_layers=a.num_layers,
               num_heads=a.num_heads, d_ff=a.d_ff, seed=0,
               max_seq_len=max([a.seq_len, a.prompt_len + a.new_tokens, *scaling]))
  attn = a.num_heads * (a.d_model // a.num_heads)
  n_matmul = a.num_layers * (4 * a.d_model * attn + 3 * a.d_model * a.d_ff) + a.d_model * a.vocab_size
  args = dict(batch_size=a.batch_size, seq_len=a.seq_len, steps=a.steps,
              decode_batches=ints(a.decode_batches), prompt_len=a.prompt_len,
              new_tokens=a.new_tokens, decode_reps=a.decode_reps, scaling_seqs=scaling,
              scaling_tokens=a.scaling_tokens, matmul_n=a.matmul_n,
              train_flops_per_token=6 * n_matmul + 12 * a.num_layers * a.seq_len * attn)
  report = run(shape, args, parts, a.rounds, log=lambda m: print(m, file=sys.stderr, flush=True))
  print(format_summary(report), flush=True)
  if a.json_out:
    with open(a.json_out, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  if len(sys.argv) > 2 and sys.argv[1] == "--worker":
    _worker_main(sys.argv[2:])
  else:
    main(sys.argv[1:])
