"""SIGTERM / SIGINT: finish the step, save, exit cleanly.

Schedulers (Kubernetes, Slurm, TPU/GPU preemption) send SIGTERM and wait a grace
period before SIGKILL; a user presses Ctrl-C (SIGINT). `handle_signals()` (the CLI
installs it for the whole run) turns both into a request:

  * inside a training loop (`training()` is active), the loop sees `requested()`
    after the current step, saves a checkpoint at that step (PPO: at the end of the
    current rollout, the next point it can resume from exactly), logs one line and
    raises `Preempted`; the CLI exits with status 75 (EX_TEMPFAIL) and the same
    command resumes from that step;
  * anywhere else (data preparation, sampling, evaluation, whose outputs are
    written atomically), `Preempted` is raised at once; the rerun redoes that work.

A second signal while the first is being honoured stops the process at once
(the default behaviour), for a user who does not want to wait for the save.
Multi-host: the request is shared by an all-gather at each step, so every host
stops after the same step.
"""
from __future__ import annotations

import contextlib
import logging
import signal

from pit.errors import Preempted

_state = {"signal": None, "training": 0, "installed": False}
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


def _handler(signum, frame):
  del frame
  name = _NAMES.get(signum, str(signum))
  if _state["signal"] is not None:   # second signal: give up at once
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    return
  _state["signal"] = name
  if _state["training"]:
    logging.warning("%s received: finishing the current step, then saving a checkpoint "
                    "(send it again to stop at once)", name)
    return
  raise Preempted(f"stopped by {name} before training started or between stages; nothing "
                  "partial was kept: run the same command to continue")


def handle_signals():
  """Installs the handlers (main thread only; idempotent)."""
  if _state["installed"]:
    return
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _handler)
  _state["installed"] = True


def reset():
  """Forgets a request (tests)."""
  _state["signal"] = None


def requested() -> str | None:
  """The signal's name once one arrived (agreed by every host), else None."""
  import jax
  local = _state["signal"]
  if jax.process_count() == 1:
    return local
  import numpy as np
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.array(local is not None, np.int32))
  return (local or "SIGTERM") if int(np.max(flags)) else None


@contextlib.contextmanager
def training():
  """Marks a training loop: signals become requests the loop honours at a step boundary."""
  _state["training"] += 1
  try:
    yield
  finally:
    _state["training"] -= 1
  if not _state["training"]:
    name = requested()   # agreed by every host
    if name is not None:  # the signal came during the last step: training ended, is saved
      raise Preempted(f"stopped by {name} as training finished (its checkpoint is saved): run "
                      "the same command to continue")
