"""Multi-stage runs (PIT, Self-Rewarding M1→M2→M3, SER rounds) that never lose work.

A stage is a named step with its own sub-directory of the run's workdir. When a
stage finishes, `stage_done.json` (its summary) is written atomically; running
the same command again skips finished stages and resumes the unfinished one
from its own checkpoints (every trainer is resumable), so a run interrupted at
any point continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Sequence

import jax

DONE_FILE = "stage_done.json"


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  run: Callable[[str], dict]  # stage workdir -> JSON-serialisable summary


def stage_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def is_done(workdir: str, name: str) -> bool:
  return os.path.exists(os.path.join(stage_dir(workdir, name), DONE_FILE))


def read_summary(workdir: str, name: str) -> dict:
  with open(os.path.join(stage_dir(workdir, name), DONE_FILE)) as f:
    return json.load(f)["summary"]


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes `path` so that a crash leaves either the old file or the new one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_jsonable)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _jsonable(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)


def run_stages(workdir: str, stages: Sequence[Stage]) -> dict[str, dict]:
  """Runs `stages` in order, skipping finished ones; returns every stage's summary."""
  names = [s.name for s in stages]
  if len(set(names)) != len(names):
    raise ValueError(f"stage names must be unique: {names}")
  summaries = {}
  for i, stage in enumerate(stages):
    d = stage_dir(workdir, stage.name)
    if is_done(workdir, stage.name):
      logging.info("stage %d/%d %s: already done, skipping", i + 1, len(stages), stage.name)
      summaries[stage.name] = read_summary(workdir, stage.name)
      continue
    logging.info("stage %d/%d %s: running in %s", i + 1, len(stages), stage.name, d)
    os.makedirs(d, exist_ok=True)
    t0 = time.time()
    summary = stage.run(d) or {}
    if jax.process_index() == 0:
      write_json_atomic(os.path.join(d, DONE_FILE),
                        {"stage": stage.name, "seconds": time.time() - t0, "summary": summary})
    summaries[stage.name] = json.loads(json.dumps(summary, default=_jsonable))
  return summaries
