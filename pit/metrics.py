"""Metrics to JSONL and TensorBoard event files (tensorboardX; no TensorFlow)."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import jax
import numpy as np


def _to_float(v):
  v = np.asarray(jax.device_get(v))
  return float(v) if v.size == 1 else None


class MetricsWriter:
  """Appends `{"step":..., "split":..., name: value}` lines to workdir/metrics.jsonl
  and scalars to workdir/tensorboard/. Only process 0 writes. Non-finite values are
  recorded, never dropped: as "nan" / "inf" / "-inf" in the JSONL (strict JSON)."""

  def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
      self._tb = None

  def _truncate_after(self, step):
    """Drops lines logged after the restored checkpoint (`step`; None = a fresh start,
    i.e. 0): those steps are redone. Rewritten atomically."""
    if not os.path.exists(self.path):
      return
    step = 0 if step is None else int(step)
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a crash
        if rec.get("step", 0) <= step:
          keep.append(json.dumps(rec))
    tmp = f"{self.path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      f.write("".join(k + "\n" for k in keep))
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping, split: str = "train"):
    """Records the scalars of `metrics` (process 0) and returns them as floats (every
    process, so callers see the same values everywhere)."""
    scalars = {}
    for k, v in metrics.items():
      f = _to_float(v)
      if f is not None:
        scalars[k] = f
    if not self.enabled:
      return scalars
    rec = {"step": int(step), "split": split, "time": time.time(),
           **{k: json_number(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec, allow_nan=False) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{split}/{k}", v, int(step))
    return scalars

  def close(self):
    """Flushes and closes the TensorBoard writer (the JSONL file is appended and closed
    on every `write`)."""
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def json_number(x: float):
  """A float for strict JSON: finite values as numbers, NaN / ±inf as the strings "nan",
  "inf", "-inf" (visible in the file, readable by `read_jsonl`, valid for any JSON tool)."""
  x = float(x)
  if math.isfinite(x):
    return x
  return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def read_jsonl(path: str) -> list[dict]:
  """Records of a metrics file; "nan" / "inf" / "-inf" values read back as floats."""
  with open(path) as f:
    recs = [json.loads(line) for line in f if line.strip()]
  return [{k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in r.items()}
          for r in recs]
