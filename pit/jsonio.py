"""JSON files PIT writes: strict JSON (NaN / ±inf become "nan" / "inf" / "-inf", as in
metrics.jsonl), written atomically (a crash leaves the old file or the new one)."""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


def jsonable(x: Any) -> Any:
  """`x` with numpy scalars/arrays as Python values and non-finite floats as strings."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    f = float(x)
    return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
  if x is None or isinstance(x, str):
    return x
  try:
    return jsonable(float(x))
  except (TypeError, ValueError):
    return str(x)


def dumps(obj: Any, **kw) -> str:
  """`json.dumps` of `jsonable(obj)` (strict JSON: no NaN / inf literals)."""
  return json.dumps(jsonable(obj), allow_nan=False, **kw)


def write_jsonl_atomic(path: str, rows) -> int:
  """Writes one JSON object per line atomically (a crash leaves no half-written file);
  returns the number of rows."""
  tmp = f"{path}.tmp{os.getpid()}"
  n = 0
  with open(tmp, "w") as f:
    for r in rows:
      f.write(dumps(r) + "\n")
      n += 1
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return n


def write_atomic(path: str, obj: Any, indent: int | None = 2) -> None:
  """Writes `path` so that a crash leaves either the old file or the new one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(dumps(obj, indent=indent))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
