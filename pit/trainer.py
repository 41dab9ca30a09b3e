"""The one training loop: state creation or resumption, the generic train step,
checkpoints, metrics and a progress bar. Every method's pipeline calls `train`."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from pit import optim
from pit import sharding as shd
from pit import train_step as ts
from pit.checkpoint import Checkpointer
from pit.metrics import MetricsWriter
from pit.params import ModelDef, init_params


@dataclasses.dataclass
class TrainResult:
  state: ts.TrainState
  steps_run: int
  resumed_from: int | None
  last_metrics: dict


def train(config, workdir: str, mdef: ModelDef, loss_fn: ts.LossFn, data: Iterator, *,
          mesh, rules, extra: Any = None, extra_shardings: Any = None,
          init_params_fn: Callable[[], Any] | None = None,
          eval_fn: Callable[[ts.TrainState, int], dict] | None = None,
          name: str = "train") -> TrainResult:
  """Trains `mdef` with `loss_fn` on `data` (an iterator with get_state/set_state).

  Optional hooks of `data` (for batches that depend on the current params, e.g. RL
  rollouts): `prepare(state, step)` is called before every `next(data)`, and
  `metrics()` (a dict of scalars) is merged into each logged train record;
  `checkpointable()` -> False skips saving after that step (e.g. mid-rollout).

  config.train: steps, batch_size, accum_steps, log_every, eval_every, seed.
  config.checkpoint: every, keep, async_save.
  Resumes from the latest checkpoint in workdir/checkpoints automatically.
  """
  tcfg, ccfg = config.train, config.checkpoint
  optimizer = optim.make_optimizer(config.optim)
  schedule = optim.learning_rate_schedule(config.optim)
  param_shardings = mdef.shardings(mesh, rules)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=ccfg.every,
                      keep=ccfg.keep, async_save=ccfg.get("async_save", True))
  resumed_from = ckpt.latest_step()
  if resumed_from is not None:
    abs_state, state_shardings = ts.abstract_train_state(mdef.abstract_params, optimizer, mesh,
                                                         param_shardings)
    state, data_state, _ = ckpt.restore(abs_state, resumed_from)
    if data_state and hasattr(data, "set_state"):
      data.set_state(data_state)
    logging.info("%s: resumed from step %d", name, resumed_from)
  else:
    params = init_params_fn() if init_params_fn else init_params(mdef, mesh, rules, int(tcfg.seed))
    state, state_shardings = ts.create_train_state(params, optimizer, mesh, param_shardings)
  step_fn = ts.make_train_step(mdef, loss_fn, optimizer, mesh, rules, state_shardings,
                               accum_steps=int(tcfg.accum_steps), seed=int(tcfg.seed),
                               lr_schedule=schedule, extra_shardings=extra_shardings)
  writer = MetricsWriter(workdir, resume_step=resumed_from)
  start = int(jax.device_get(state.step))
  total = int(tcfg.steps)
  last = {}
  bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True,
             disable=jax.process_index() != 0 or not config.get("progress", True),
             mininterval=1.0)
  tokens_since, t_since = 0, time.perf_counter()
  prepare = getattr(data, "prepare", None)
  checkpointable = getattr(data, "checkpointable", None)
  try:
    for step in range(start, total):
      if prepare is not None:
        prepare(state, step)
      batch = next(data)
      tokens_since += int(np.sum(batch["mask"])) if "mask" in batch else 0
      batch = shd.put_batch(batch, mesh, rules)
      state, metrics = step_fn(state, batch, extra)
      done = step + 1
      if done % int(tcfg.log_every) == 0 or done == total:
        metrics = jax.device_get(metrics)
        if hasattr(data, "metrics"):
          metrics.update(data.metrics())
        dt = time.perf_counter() - t_since
        metrics["tokens_per_sec"] = tokens_since * jax.process_count() / max(dt, 1e-9)
        last = writer.write(done, metrics, split="train")
        bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}",
                        tok_s=f"{last['tokens_per_sec']:.0f}")
        tokens_since, t_since = 0, time.perf_counter()
      if eval_fn is not None and tcfg.get("eval_every", 0) and done % int(tcfg.eval_every) == 0:
        writer.write(done, eval_fn(state, done), split="eval")
      if checkpointable is None or checkpointable():
        data_state = data.get_state() if hasattr(data, "get_state") else {}
        ckpt.save(done, state, data_state, force=(done == total))
      bar.update(1)
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  return TrainResult(state, total - start, resumed_from, last)
