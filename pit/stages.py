"""Multi-stage runs (PIT, Self-Rewarding M1→M2→M3, SER rounds) that never lose work
and never reuse stale work.

A stage is a named step with its own sub-directory of the run's workdir, its
resolved settings (the config it runs with) and the names of the stages it reads
(`inputs`). Its fingerprint hashes its settings (less `IGNORED` fields, which do
not change results), the fingerprints of its inputs and the contents of the files
outside the workdir it reads (`files`). `run_stages`:

  * skips a stage whose `stage_done.json` carries the current fingerprint;
  * reruns a stage whose fingerprint changed (its settings, an input stage, an input
    file), with a log line naming what changed; its old directory is moved to
    WORKDIR/superseded/<stage>.<time>/ (kept, never read). Stages that read it see a
    new input fingerprint and rerun too;
  * resumes an unfinished stage with the same fingerprint from its own checkpoints
    (every trainer is resumable); an unfinished stage with another fingerprint starts
    afresh (its directory superseded);
  * `rerun_from=NAME` reruns that stage and every later one, once: the request's progress
    is kept in WORKDIR/rerun_from.json, so the same command run again resumes it (and
    after it finished, runs as usual);
  * a stage that finds a finished stage's checkpoint corrupt (`CorruptCheckpointError`
    under that stage's directory) moves that step aside and reopens that stage (its
    trainer resumes from the newest good checkpoint, or from scratch, and trains to the
    end), then continues: a damaged result is redone, never used.

A stage reads other stages' directories only through `StageContext.input_dir`,
which refuses a stage not declared in `inputs`: the declared inputs are exactly what
flows, so the fingerprints cannot miss a dependency.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections

from pit import jsonio

DONE_FILE = "stage_done.json"
STARTED_FILE = "stage_started.json"
SUPERSEDED_DIR = "superseded"
# Root config sections that belong to particular pipelines, and the pipelines that read each
# (every other section - model, data, optim, train, ... - is read by all).
PIPELINE_SECTIONS = {"reward": ("reward",), "gap_reward": ("gap_reward",), "ppo": ("ppo",),
                     "improve": ("improve",), "dpo": ("dpo",), "generate": ("generate", "dpo"),
                     "eval": ()}   # read by multi-stage recipes, which give a stage what it uses
# Settings that do not change what a stage computes: a change reruns nothing.
IGNORED = ("progress", "rerun_from", "distributed", "mesh", "checkpoint.keep",
           "checkpoint.async_save", "train.log_every",
           "data.data_dir")   # TFDS's build cache (rebuilt when its manual_dir changes)
PATH_MARK = "<path: fingerprinted by content>"
BIG_FILE = 64 << 20   # bytes; bigger files are fingerprinted by size and mtime


@dataclasses.dataclass(frozen=True)
class StageContext:
  """What a running stage sees: its directory and the directories of its inputs."""
  workdir: str
  name: str
  dir: str
  inputs: tuple[str, ...]

  def input_dir(self, name: str) -> str:
    """The directory of input stage `name` (must be declared in the stage's inputs)."""
    if name not in self.inputs:
      raise KeyError(f"stage {self.name} reads stage {name!r}, which is not among its declared "
                     f"inputs {list(self.inputs)}")
    return stage_dir(self.workdir, name)

  def input_path(self, name: str, *parts: str) -> str:
    """A path inside input stage `name`'s directory (KeyError if not declared)."""
    return os.path.join(self.input_dir(name), *parts)

  def input_summary(self, name: str) -> dict:
    """The summary input stage `name` finished with."""
    self.input_dir(name)
    return read_summary(self.workdir, name)


@dataclasses.dataclass(frozen=True)
class Stage:
  """A named step of a recipe: `run(ctx)` does it, `settings` / `inputs` / `files` are what
  its fingerprint is made of (see the module docstring)."""
  name: str
  run: Callable[[StageContext], dict]   # -> JSON-serialisable summary
  settings: Any = None                  # resolved config (ConfigDict / dict) it runs with
  inputs: Sequence[str] | None = None   # stages it reads; None = every earlier stage
  files: Sequence[str] = ()             # files or folders outside the workdir it reads


def stage_dir(workdir: str, name: str) -> str:
  """WORKDIR/<name>: where a stage works."""
  return os.path.join(workdir, name)


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      rec = json.load(f)
    return rec if isinstance(rec, dict) else None
  except (OSError, ValueError):
    return None


def done_record(workdir: str, name: str) -> dict | None:
  """The stage's completion record, or None (not done, or an unreadable record)."""
  return _read_json(os.path.join(stage_dir(workdir, name), DONE_FILE))


def is_done(workdir: str, name: str) -> bool:
  """Whether the stage has a readable completion record (whatever its fingerprint)."""
  return done_record(workdir, name) is not None


def read_summary(workdir: str, name: str) -> dict:
  """The summary a finished stage returned. FileNotFoundError when it has not finished."""
  rec = done_record(workdir, name)
  if rec is None:
    raise FileNotFoundError(f"stage {name} has not finished: no readable "
                            f"{os.path.join(stage_dir(workdir, name), DONE_FILE)}")
  return rec["summary"]


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes `path` so that a crash leaves either the old file or the new one."""
  jsonio.write_atomic(path, obj)


# ------------------------------------------------------------------ settings


def derive(config, pipeline: str, section: str | None, *, method: str = "pit",
           keep: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """A stage's config: a copy of the root config with `pipeline` set, the sections of
  other pipelines (`PIPELINE_SECTIONS`: ppo, improve, reward, ...) removed, the override
  section `config.<method>.<section>` merged in (unknown fields are an error naming
  `<method>.<section>.<field>`), and the method section replaced by only the fields in
  `keep` (what the stage reads of it), so the stage's fingerprint moves with exactly
  what it reads."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.pipeline = pipeline
  for sec, readers in PIPELINE_SECTIONS.items():   # not read by this pipeline: not fingerprinted
    if pipeline not in readers and sec in c:
      del c[sec]
  msec = config.get(method, None)
  overrides = msec.get(section, None) if (msec is not None and section) else None
  if overrides is not None:
    _merge(c, overrides, f"{method}.{section}")
  _resolve_decay(c)
  if msec is not None:
    c[method] = ml_collections.ConfigDict({k: msec[k] for k in keep})
  return c


def _resolve_decay(c):
  """optim.decay_steps = 0 ("the run's train.steps", `pit.optim.decay_length`) written as that
  number, so the stage's fingerprint holds the schedule it trains with and a command-line
  change of the stage's train.steps moves its decay with it."""
  if "optim" in c and "train" in c and int(c.optim.get("decay_steps", 1)) == 0:
    c.optim.decay_steps = max(int(c.train.steps), 1)


def _merge(dst, src, path: str):
  for key, value in src.items():
    if key not in dst:
      raise ValueError(f"{path}.{key}: no such config field to override")
    if isinstance(value, ml_collections.ConfigDict):
      if not isinstance(dst[key], ml_collections.ConfigDict):
        raise ValueError(f"{path}.{key}: is a section here but not in the root config")
      _merge(dst[key], value, f"{path}.{key}")
    else:
      dst[key] = value


def _is_path(v: Any) -> bool:
  return isinstance(v, str) and ("/" in v or os.sep in v) and os.path.exists(v)


def path_settings(settings: Any, prefix: str = "") -> dict[str, str]:
  """{dotted field: path} of the settings that name an existing file or folder (data files,
  a tokenizer, an initial checkpoint, an LLM judge, ...): inputs from outside the workdir."""
  d = settings.to_dict() if hasattr(settings, "to_dict") else settings
  out = {}
  for k, v in (d or {}).items():
    if isinstance(v, dict):
      out.update(path_settings(v, f"{prefix}{k}."))
    elif _is_path(v) and f"{prefix}{k}" not in IGNORED:
      out[f"{prefix}{k}"] = v
  return out


def clean_settings(settings: Any) -> dict:
  """The settings as plain JSON, less the IGNORED fields, with paths replaced by a mark
  (their contents enter the fingerprint instead: moving data or reinstalling the package
  changes nothing, editing a file does)."""
  if settings is None:
    return {}
  d = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
  d = json.loads(jsonio.dumps(d))
  for dotted in list(IGNORED) + list(path_settings(d)):
    node, parts = d, dotted.split(".")
    for p in parts[:-1]:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and parts[-1] in node:
      if dotted in IGNORED:
        node.pop(parts[-1])
      else:
        node[parts[-1]] = PATH_MARK
  return d


def file_digest(path: str) -> str:
  """Fingerprint of a file or folder's contents: a checkpoint folder by its latest step's
  saved checksums (`pit.checkpoint`: cheap, and exact for its arrays), files up to BIG_FILE
  by their bytes, bigger ones by size and mtime; folders by names and member digests."""
  h = hashlib.sha256()
  ckpt = _latest_checkpoint_item(path)
  if ckpt is not None:
    h.update(b"checkpoint\0")
    h.update(file_digest(ckpt).encode())
  elif os.path.isdir(path):
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        p = os.path.join(root, name)
        h.update(os.path.relpath(p, path).encode() + b"\0")
        h.update(file_digest(p).encode())
  elif os.path.exists(path):
    st = os.stat(path)
    if st.st_size > BIG_FILE:
      h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    else:
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
  else:
    h.update(b"<missing>")
  return h.hexdigest()


def _latest_checkpoint_item(path: str) -> str | None:
  """The JSON item (iterator, metrics, checksums) of the latest step of a checkpoint folder
  or of a workdir holding one (checkpoints/ or policy/checkpoints/), else None."""
  for sub in (("policy", "checkpoints"), ("checkpoints",), ()):
    d = os.path.join(path, *sub)
    if not os.path.isdir(d):
      continue
    steps = [int(n) for n in os.listdir(d) if n.isdigit()
             and os.path.exists(os.path.join(d, n, "data", "metadata"))]
    if steps:
      return os.path.join(d, str(max(steps)), "data", "metadata")
  return None


def fingerprint(settings: dict, inputs: dict[str, str], files: dict[str, str]) -> str:
  """16 hex digits of sha256 over the clean settings, the input stages' fingerprints and the
  input files' digests (canonical JSON)."""
  blob = json.dumps({"settings": settings, "inputs": inputs, "files": files}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
    return out
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _why_changed(old: dict, settings: dict, inputs: dict, files: dict) -> str:
  reasons = _diff(old.get("settings", {}), settings)
  if reasons:
    shown = "; ".join(reasons[:4]) + (f"; and {len(reasons) - 4} more" if len(reasons) > 4 else "")
    return f"its settings changed ({shown})"
  changed = [k for k in inputs if old.get("inputs", {}).get(k) != inputs[k]]
  if changed:
    return f"input stage(s) {', '.join(changed)} changed"
  changed = [k for k in files if old.get("files", {}).get(k) != files[k]]
  if changed:
    return f"input file(s) {', '.join(changed)} changed"
  return "it was recorded by another version of PIT"


def supersede(workdir: str, name: str) -> str | None:
  """Moves a stage's directory to WORKDIR/superseded/<name>.<time>; returns the new path."""
  d = stage_dir(workdir, name)
  if not os.path.isdir(d) or jax.process_index() != 0:
    return None
  dst_root = os.path.join(workdir, SUPERSEDED_DIR)
  os.makedirs(dst_root, exist_ok=True)
  dst = os.path.join(dst_root, f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
  k = 1
  while os.path.exists(dst):
    dst, k = f"{dst.rsplit('~', 1)[0]}~{k}", k + 1
  shutil.move(d, dst)
  return dst


# ------------------------------------------------------------------ runner


def run_stages(workdir: str, stages: Sequence[Stage], *, rerun_from: str = "") -> dict[str, dict]:
  """Runs `stages` in order (see the module docstring); returns every stage's summary."""
  from pit.checkpoint import CorruptCheckpointError
  names = [s.name for s in stages]
  if len(set(names)) != len(names):
    raise ValueError(f"stage names must be unique: {names}")
  if rerun_from and rerun_from not in names:
    raise ValueError(f"rerun_from: no stage {rerun_from!r} (stages: {', '.join(names)})")
  forced = _rerun_request(workdir, names, rerun_from)
  summaries: dict[str, dict] = {}
  fps: dict[str, str] = {}
  reopened: set[str] = set()
  i = 0
  while i < len(stages):
    stage = stages[i]
    d = stage_dir(workdir, stage.name)
    inputs, settings, input_fps, files, fp = _identity(stages, i, fps)
    done = done_record(workdir, stage.name)
    started = _read_json(os.path.join(d, STARTED_FILE))
    where = f"stage {i + 1}/{len(stages)} {stage.name}"
    if done is not None and done.get("fingerprint") == fp and stage.name not in forced:
      logging.info("%s: already done, skipping", where)
      summaries[stage.name], fps[stage.name] = done["summary"], fp
      i += 1
      continue
    old = done or started
    if stage.name in forced:
      forced.discard(stage.name)
      if os.path.isdir(d):
        moved = supersede(workdir, stage.name)
        logging.warning("%s: rerunning (rerun_from=%s); previous results moved to %s", where,
                        rerun_from, moved)
      _rerun_progress(workdir, stage.name)
    elif old is not None and old.get("fingerprint") != fp:
      why = _why_changed(old, settings, input_fps, files)
      moved = supersede(workdir, stage.name)
      logging.warning("%s: rerunning because %s; it and every stage that reads it run again "
                      "(previous results moved to %s)", where, why, moved)
    elif started is not None:
      logging.info("%s: resuming the unfinished stage in %s", where, d)
    logging.info("%s: running in %s", where, d)
    os.makedirs(d, exist_ok=True)
    if jax.process_index() == 0:
      write_json_atomic(os.path.join(d, STARTED_FILE),
                        {"stage": stage.name, "fingerprint": fp, "settings": settings,
                         "inputs": input_fps, "files": files})
    _sync(f"start-{stage.name}")
    t0 = time.time()
    ctx = StageContext(workdir, stage.name, d, inputs)
    try:
      summary = stage.run(ctx) or {}
    except CorruptCheckpointError as e:
      owner = _owner(workdir, names[:i], e.directory)
      if owner is None or owner in reopened:
        raise
      reopened.add(owner)
      logging.error("%s: %s; reopening the finished stage %s to redo it", where, e, owner)
      if e.step is not None:
        from pit.checkpoint import Checkpointer
        ck = Checkpointer(e.directory)
        ck.quarantine(e.step)
        ck.close()
      if jax.process_index() == 0:
        os.remove(os.path.join(stage_dir(workdir, owner), DONE_FILE))
      _sync(f"reopen-{owner}")
      i = names.index(owner)
      continue
    summary = json.loads(jsonio.dumps(summary))
    if jax.process_index() == 0:
      write_json_atomic(os.path.join(d, DONE_FILE),
                        {"stage": stage.name, "seconds": time.time() - t0, "summary": summary,
                         "fingerprint": fp, "settings": settings, "inputs": input_fps,
                         "files": files})
    _sync(f"done-{stage.name}")
    summaries[stage.name], fps[stage.name] = summary, fp
    i += 1
  if rerun_from:
    _rerun_progress(workdir, None, complete=True)
  return summaries


RERUN_FILE = "rerun_from.json"


def _rerun_request(workdir: str, names: list[str], rerun_from: str) -> set[str]:
  """The stages `rerun_from` still has to supersede. A request is carried out once: its
  progress is kept in WORKDIR/rerun_from.json, so the same command run again (after a
  preemption, or after it finished) resumes instead of starting the rerun over."""
  if not rerun_from:
    return set()
  todo = names[names.index(rerun_from):]
  path = os.path.join(workdir, RERUN_FILE)
  req = _read_json(path)
  if req is None or req.get("stage") != rerun_from:
    req = {"stage": rerun_from, "superseded": [], "complete": False}
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      write_json_atomic(path, req)
  elif req.get("complete"):
    logging.warning("rerun_from=%s was already carried out in %s (see %s); running as usual. "
                    "Delete that file to rerun again", rerun_from, workdir, path)
    return set()
  return {n for n in todo if n not in req.get("superseded", [])}


def _rerun_progress(workdir: str, name: str | None, complete: bool = False):
  path = os.path.join(workdir, RERUN_FILE)
  req = _read_json(path)
  if req is None or jax.process_index() != 0:
    return
  if name is not None and name not in req["superseded"]:
    req["superseded"].append(name)
  req["complete"] = req.get("complete", False) or complete
  write_json_atomic(path, req)


def _identity(stages: Sequence[Stage], i: int, fps: dict[str, str]):
  """(inputs, clean settings, input fingerprints, file digests, fingerprint) of stage i,
  given the fingerprints of the stages before it."""
  stage, names = stages[i], [s.name for s in stages]
  inputs = tuple(names[:i]) if stage.inputs is None else tuple(stage.inputs)
  unknown = [n for n in inputs if n not in names[:i]]
  if unknown:
    raise ValueError(f"stage {stage.name}: inputs {unknown} are not earlier stages")
  settings = clean_settings(stage.settings)
  input_fps = {n: fps[n] for n in inputs}
  files = {f"file {os.path.basename(f.rstrip('/'))}": file_digest(f) for f in stage.files}
  files.update({k: file_digest(v) for k, v in path_settings(stage.settings).items()})
  return inputs, settings, input_fps, files, fingerprint(settings, input_fps, files)


def fingerprints(stages: Sequence[Stage]) -> dict[str, str]:
  """Every stage's fingerprint, computed without running anything (a fingerprint depends
  on settings, input fingerprints and input files only, never on outputs)."""
  fps: dict[str, str] = {}
  for i, stage in enumerate(stages):
    fps[stage.name] = _identity(stages, i, fps)[-1]
  return fps


def plan(workdir: str, stages: Sequence[Stage]) -> dict[str, str]:
  """What `run_stages` would do with each stage: 'skip' (done with this fingerprint),
  'resume' (unfinished, same fingerprint) or 'run'."""
  out = {}
  for name, fp in fingerprints(stages).items():
    done = done_record(workdir, name)
    started = _read_json(os.path.join(stage_dir(workdir, name), STARTED_FILE))
    out[name] = ("skip" if done is not None and done.get("fingerprint") == fp else
                 "resume" if done is None and started and started.get("fingerprint") == fp
                 else "run")
  return out


def _sync(tag: str):
  """On multi-host runs, every host waits here until process 0's file operations (stage
  markers, superseded folders) are done, so no host acts on a stale view of the workdir."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"pit-stages-{tag}")


def _owner(workdir: str, names: Sequence[str], path: str) -> str | None:
  """The stage whose directory holds `path`."""
  path = os.path.abspath(path)
  for n in names:
    if path.startswith(os.path.abspath(stage_dir(workdir, n)) + os.sep):
      return n
  return None


def run_recipe(config, workdir: str, built: list[Stage], method: str) -> dict:
  """A recipe end to end (`run_stages` with `config.rerun_from`): {"stages": names run or
  skipped, "report": WORKDIR/report.md}. Raises what a stage raises."""
  done = run_stages(workdir, built, rerun_from=str(config.get("rerun_from", "") or ""))
  result = {"stages": list(done), "report": os.path.join(workdir, "report.md")}
  logging.info("%s done: report at %s", method, result["report"])
  return result
