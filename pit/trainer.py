"""The one training loop: state creation or resumption, the generic train step,
checkpoints, metrics and a progress bar. Every method's pipeline calls `train`.

Guarantees (BUILD_NOTES, "Failure behaviour"):
  * resume: from the newest checkpoint that passes verification
    (`Checkpointer.restore_latest`: corrupt steps are named and moved aside);
  * one run per workdir (`pit.workdir_lock`);
  * non-finite loss, gradient norm or parameters stop training with `NonFiniteError`
    naming the first bad step; such a state is never saved, so the last good
    checkpoints stay (checked before every save, log line and evaluation, without a
    per-step host sync: the flags are gathered lazily);
  * SIGTERM / SIGINT (`pit.preemption`): the current step finishes, a checkpoint is
    saved at it, `Preempted` is raised (exit status 75), the same command resumes;
  * the last logged train metrics are saved in every checkpoint, so a run resumed at
    its final step returns the same `last_metrics` as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from pit import lora, optim, preemption, workdir_lock
from pit import sharding as shd
from pit import train_step as ts
from pit.checkpoint import Checkpointer
from pit.errors import NonFiniteError, Preempted
from pit.metrics import MetricsWriter
from pit.params import ModelDef, init_params

# Metrics that describe the machine, not the model: kept out of `last_metrics` so a
# resumed run's summary equals an uninterrupted one's (they stay in metrics.jsonl).
TIMING_METRICS = ("tokens_per_sec",)


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: the final state, the steps this call ran, the step it resumed
  from (None for a fresh start) and the last logged train metrics (timing left out)."""
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
  Resumes from the latest good checkpoint in workdir/checkpoints automatically.

  Raises NonFiniteError (non-finite loss / grad norm / params, naming the step),
  Preempted (after SIGTERM / SIGINT, once the checkpoint is saved),
  WorkdirLockedError, CorruptCheckpointError (no checkpoint restores).
  """
  with workdir_lock.hold(workdir), preemption.training():
    return _train(config, workdir, mdef, loss_fn, data, mesh=mesh, rules=rules, extra=extra,
                  extra_shardings=extra_shardings, init_params_fn=init_params_fn,
                  eval_fn=eval_fn, name=name)


def _train(config, workdir, mdef, loss_fn, data, *, mesh, rules, extra, extra_shardings,
           init_params_fn, eval_fn, name) -> TrainResult:
  tcfg, ccfg = config.train, config.checkpoint
  optimizer = optim.make_optimizer(config.optim, int(tcfg.steps))
  schedule = optim.learning_rate_schedule(config.optim, int(tcfg.steps))
  lcfg = lora.LoraConfig.from_config(tcfg.get("lora", None))
  plain_mdef = mdef
  frozen = frozen_shardings = None
  if lcfg.enabled:   # the state holds the factors (+ a scalar head); the rest is frozen
    mdef = lora.augment(plain_mdef, lcfg)
    frozen_shardings, param_shardings = lora.split(mdef.shardings(mesh, rules))
    abstract = lora.split(mdef.abstract_params)[1]
  else:
    param_shardings = mdef.shardings(mesh, rules)
    abstract = mdef.abstract_params
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=ccfg.every,
                      keep=ccfg.keep, async_save=ccfg.get("async_save", True))
  abs_state, state_shardings = ts.abstract_train_state(abstract, optimizer, mesh,
                                                       param_shardings)
  restored = ckpt.restore_latest(abs_state)
  if lcfg.enabled:   # rebuilt on every start: the frozen weights are never checkpointed
    base = init_params_fn() if init_params_fn else init_params(plain_mdef, mesh, rules,
                                                               int(tcfg.seed))
    frozen, head = lora.split(base)
    del base
    frozen = jax.device_put(frozen, frozen_shardings)
    lora.check_frozen_base(workdir, frozen, lcfg, resuming=restored is not None)
    logging.info("%s: LoRA rank %d on %s: %d trained / %d frozen parameters", name, lcfg.rank,
                 ",".join(lcfg.targets), lora.count(abstract), lora.count(frozen))
  last: dict = {}
  if restored is not None:
    state, data_state, last, resumed_from = restored
    if data_state and hasattr(data, "set_state"):
      data.set_state(data_state)
    logging.info("%s: resumed from step %d", name, resumed_from)
  else:
    resumed_from = None
    if lcfg.enabled:
      params = lora.join(head, lora.fresh_factors(abstract, param_shardings, int(tcfg.seed)))
    else:
      params = init_params_fn() if init_params_fn else init_params(mdef, mesh, rules,
                                                                    int(tcfg.seed))
    state, state_shardings = ts.create_train_state(params, optimizer, mesh, param_shardings)
  step_fn = ts.make_train_step(mdef, loss_fn, optimizer, mesh, rules, state_shardings,
                               accum_steps=int(tcfg.accum_steps), seed=int(tcfg.seed),
                               lr_schedule=schedule, extra_shardings=extra_shardings,
                               frozen_shardings=frozen_shardings)
  view = _MergedView.maker(frozen, lcfg, plain_mdef, mesh, rules)
  start = int(jax.device_get(state.step))
  total = int(tcfg.steps)
  if start > total:
    ckpt.close()
    raise ValueError(f"{name}: the checkpoint in {ckpt.directory} is at step {start}, past "
                     f"train.steps={total}: this workdir was trained further; use another "
                     "workdir or train.steps >= the checkpoint's step")
  writer = MetricsWriter(workdir, resume_step=resumed_from)
  bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True,
             disable=jax.process_index() != 0 or not config.get("progress", True),
             mininterval=1.0)
  tokens_since, t_since = 0, time.perf_counter()
  prepare = getattr(data, "prepare", None)
  checkpointable = getattr(data, "checkpointable", None)
  guard = _FiniteGuard(name, writer, ckpt)
  stop_signal = None
  try:
    for step in range(start, total):
      if prepare is not None:
        prepare(view(state), step)
      batch = next(data)
      tokens_since += int(np.sum(batch["mask"])) if "mask" in batch else 0
      batch = shd.put_batch(batch, mesh, rules)
      state, metrics = step_fn(state, batch, extra, frozen)
      done = step + 1
      guard.add(done, metrics)
      can_save = checkpointable is None or checkpointable()
      stop_signal = stop_signal or preemption.requested()
      stopping = stop_signal is not None and can_save
      if done % int(tcfg.log_every) == 0 or done == total:   # (a stop adds no extra point)
        guard.check()
        metrics = jax.device_get(metrics)
        metrics.pop("params_finite", None)   # checked by the guard; always true when logged
        if hasattr(data, "metrics"):
          metrics.update(data.metrics())
        dt = time.perf_counter() - t_since
        metrics["tokens_per_sec"] = tokens_since * jax.process_count() / max(dt, 1e-9)
        logged = writer.write(done, metrics, split="train")
        last = {k: v for k, v in logged.items() if k not in TIMING_METRICS}
        bar.set_postfix(loss=f"{logged.get('loss', float('nan')):.4f}",
                        tok_s=f"{logged.get('tokens_per_sec', 0.0):.0f}")
        tokens_since, t_since = 0, time.perf_counter()
      if eval_fn is not None and tcfg.get("eval_every", 0) and done % int(tcfg.eval_every) == 0:
        guard.check()
        writer.write(done, eval_fn(view(state), done), split="eval")
      if can_save:
        data_state = data.get_state() if hasattr(data, "get_state") else {}
        if ckpt.manager.should_save(done) or done == total or stopping:
          guard.check()
        ckpt.save(done, state, data_state, force=(done == total or stopping), metrics=last)
      bar.update(1)
      if stopping:
        ckpt.wait()
        msg = (f"{name}: stopped by {stop_signal} after step {done} of {total}; checkpoint "
               f"saved at step {done} in {ckpt.directory}: run the same command to resume")
        logging.warning(msg)
        raise Preempted(msg)
    guard.check()
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  if lcfg.enabled:
    state = state.replace(params=view(state).params)
    abstract_plain = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                  plain_mdef.abstract_params, plain_mdef.shardings(mesh, rules))
    _save_merged(workdir, total, state.params, abstract_plain)
  return TrainResult(state, total - start, resumed_from, last)


class _MergedView:
  """A train state as the rest of the code knows it: `params` are the plain model's
  (LoRA factors merged into the weights, computed once, on first use); step as the
  state's. Without LoRA `maker` returns the identity."""

  def __init__(self, state, merge_fn):
    self.step, self.opt_state, self._state, self._merge = state.step, state.opt_state, state, merge_fn
    self._params = None

  @property
  def params(self):
    """The merged plain params."""
    if self._params is None:
      self._params = self._merge(self._state.params)
    return self._params

  @classmethod
  def maker(cls, frozen, lcfg, plain_mdef, mesh, rules):
    """state -> view (LoRA) or state -> state."""
    if not lcfg.enabled:
      return lambda state: state
    merge = jax.jit(lambda fr, tr: lora.merge(lora.join(fr, tr), lcfg.scale),
                    out_shardings=plain_mdef.shardings(mesh, rules))
    return lambda state: cls(state, lambda trained: merge(frozen, trained))


def _save_merged(workdir: str, step: int, params, abstract):
  """WORKDIR/merged/checkpoints at `step`: the plain model every loader reads; kept when an
  intact one is there (a resumed finished run), else written (again)."""
  ckpt = Checkpointer(os.path.join(workdir, "merged", "checkpoints"), save_every=1, keep=1,
                      async_save=False)
  try:
    if ckpt.latest_step() == step and ckpt.is_intact(abstract, step):
      return
    if ckpt.latest_step() == step:
      ckpt.quarantine(step)
    ckpt.save(step, {"params": params}, {"source": "lora merge"}, force=True)
  finally:
    ckpt.close()


class _FiniteGuard:
  """Collects each step's loss / grad norm / params-finite flag as device scalars and
  checks them on the host only when asked (before a save, a log line, an evaluation
  and at the end), so training keeps its asynchronous dispatch."""

  KEYS = ("loss", "grad_norm", "params_finite")

  def __init__(self, name: str, writer: MetricsWriter, ckpt: Checkpointer):
    self.name, self.writer, self.ckpt = name, writer, ckpt
    self.pending: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict):
    self.pending.append((step, {k: metrics[k] for k in self.KEYS if k in metrics}))

  def check(self):
    pending, self.pending = jax.device_get(self.pending), []
    for step, m in pending:
      bad = [k for k in ("loss", "grad_norm") if k in m and not math.isfinite(float(m[k]))]
      if "params_finite" in m and not bool(m["params_finite"]):
        bad.append("params")
      if bad:
        self.ckpt.wait()
        self.writer.write(step, {k: float(m[k]) for k in ("loss", "grad_norm") if k in m},
                          split="train")
        good = self.ckpt.all_steps()
        raise NonFiniteError(
            f"{self.name}: non-finite {', '.join(bad)} at step {step} "
            f"(loss {float(m.get('loss', float('nan'))):.4g}, grad norm "
            f"{float(m.get('grad_norm', float('nan'))):.4g}); training stopped, nothing after "
            f"step {good[-1] if good else 0} was saved"
            f"{f'; good checkpoints kept: {good}' if good else ''} in {self.ckpt.directory}. "
            "Lower optim.learning_rate or check the data")
