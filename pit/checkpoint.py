"""Orbax checkpoints that are verified on every restore.

Each step holds two items: `state` (the PyTree: step, params, optimizer state) and
`data` (JSON, committed atomically with the arrays): the data-iterator position,
the last logged train metrics (so a rerun after a kill reports what an
uninterrupted run reports) and per-leaf checksums of the state
(`pit.integrity`, computed on device at save time). A restore checks, in order:
the JSON item reads, the arrays' metadata reads and matches the model being
restored, the arrays read, and their checksums equal the saved ones. A step that
fails any check raises `CorruptCheckpointError` naming the directory, the step
and the reason; `restore_latest` (what training resumes with) moves such a step
aside to `<step>.corrupt` (kept for inspection, never read again) and falls back
to the newest step that passes, or stops with every reason when none does. A
checkpoint of another model (different parameter names or shapes) is not
corruption: `IncompatibleCheckpointError`, nothing is moved.

Checkpoints written before checksums existed restore with a warning.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from pit import integrity
from pit.errors import PitError

FORMAT = 2          # JSON item layout: {"pit_checkpoint": 2, "iterator", "metrics", "checksums"}
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(PitError):
  """A checkpoint that cannot be used; the message names directory and step."""


class CorruptCheckpointError(CheckpointError):
  """A step that does not restore or does not match its checksums; `directory`, `step` (None:
  the whole folder) and `reason` name it."""

  def __init__(self, directory: str, step: int | None, reason: str):
    self.directory, self.step, self.reason = directory, step, reason
    super().__init__(f"checkpoint {directory} step {step} is corrupt or unreadable: {reason}"
                     if step is not None else f"checkpoints {directory}: {reason}")


class IncompatibleCheckpointError(CheckpointError):
  """The checkpoint was saved for another model or optimizer (not damage)."""


class Checkpointer:
  """Saves {state, data} under `directory` every `save_every` steps, keeps `keep`."""

  def __init__(self, directory: str, *, save_every: int = 1, keep: int = 1,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self._options = dict(save_every=save_every, keep=keep, async_save=async_save,
                         read_only=read_only)
    self._legacy_warned = False
    self.manager = self._make_manager()

  def _make_manager(self):
    o = self._options
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(o["save_every"]), 1), max_to_keep=max(int(o["keep"]), 1),
        enable_async_checkpointing=o["async_save"], create=not o["read_only"],
        read_only=o["read_only"], cleanup_tmp_directories=not o["read_only"])
    return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  # ------------------------------------------------------------------ save
  def latest_step(self) -> int | None:
    """The newest committed step (not verified), or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first (steps moved aside as corrupt are not listed)."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False,
           metrics: dict | None = None) -> bool:
    """Saves `state` (async unless disabled) with its checksums, the iterator position
    `data_state` and the last logged `metrics`. Returns whether a save was started."""
    if not force and not self.manager.should_save(int(step)):
      return False
    meta = {"pit_checkpoint": FORMAT, "iterator": dict(data_state or {}),
            "metrics": _json_metrics(metrics or {}),
            "checksums": {"algorithm": integrity.ALGORITHM,
                          "leaves": integrity.leaf_checksums(state)}}
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(meta))
    return self.manager.save(int(step), args=args, force=force)

  # ------------------------------------------------------------------ restore
  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """(state, iterator state, step), verified; into the shardings of `abstract_state`
    (ShapeDtypeStructs). Raises CorruptCheckpointError / IncompatibleCheckpointError."""
    state, meta, step = self._restore(abstract_state, self._step(step), partial=False)
    return state, meta["iterator"], step

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, dict, int] | None:
    """What training resumes from: (state, iterator state, last metrics, step) of the
    newest step that passes every check, or None when there is no checkpoint. Failing
    steps are logged with their reason and moved aside (`<step>.corrupt`); when none
    passes, raises CorruptCheckpointError listing every step's reason."""
    steps = self.all_steps()
    if not steps:
      return None
    failures = []
    for step in reversed(steps):
      reason = None
      try:
        state, meta, step = self._restore(abstract_state, step, partial=False)
      except CorruptCheckpointError as e:
        reason = e.reason
      if not _all_hosts_agree(reason is None):   # every host reads its own shards
        reason = reason or "failed to restore on another host"
        logging.error("%s; falling back to an older checkpoint",
                      CorruptCheckpointError(self.directory, step, reason))
        failures.append(f"step {step}: {reason[:80]}")
        self.quarantine(step)
        continue
      if failures:
        logging.warning("resuming from step %d of %s (skipped corrupt: %s)", step,
                        self.directory, "; ".join(failures))
      return state, meta["iterator"], meta["metrics"], step
    raise CorruptCheckpointError(self.directory, None,
                                 "no checkpoint here restores: " + "; ".join(failures) +
                                 f" (moved aside as <step>{CORRUPT_SUFFIX}: the same "
                                 "command now starts this training from the beginning)")

  def restore_params(self, abstract_params: Any, step: int | None = None,
                     allow_missing: Callable[[str], bool] | None = None) -> tuple[Any, int]:
    """Restores only the `params` of a saved train state (no optimizer state is read),
    verified against the saved checksums. A param the checkpoint lacks is an error,
    unless `allow_missing(top-level key)`: then that key is left out of the result for
    the caller to fill. Never falls back to another step: the step asked for (default
    the latest) is used or CorruptCheckpointError is raised."""
    step = self._step(step)
    if allow_missing is not None:
      saved = set(self.saved_param_keys(step))
      abstract_params = {k: v for k, v in abstract_params.items()
                         if k in saved or not allow_missing(k)}
    restored, _, step = self._restore({"params": abstract_params}, step, partial=True)
    missing = [jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_flatten_with_path(restored["params"])[0]
               if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:  # partial restore leaves what the checkpoint lacks as abstract leaves
      raise IncompatibleCheckpointError(
          f"checkpoint {self.directory} step {step} has no params{missing[0]} "
          f"(and {len(missing) - 1} more): it was saved for another model")
    return restored["params"], step

  def is_intact(self, abstract_params: Any, step: int | None = None) -> bool:
    """Whether `step` (default latest) restores its params and they match their checksums."""
    try:
      self.restore_params(abstract_params, step)
    except CorruptCheckpointError as e:
      logging.error("%s", e)
      return False
    return True

  def saved_param_keys(self, step: int | None = None) -> list[str]:
    """Top-level keys of the params saved at `step` (read from metadata, no arrays)."""
    step = self._step(step)
    return list(self._state_metadata(step)["params"].keys())

  def saved_param_shapes(self, step: int | None = None) -> dict:
    """The params saved at `step` as a nested dict of shape tuples (metadata, no arrays)."""
    step = self._step(step)
    tree = self._state_metadata(step)["params"]
    return jax.tree.map(lambda m: tuple(m.shape), dict(tree),
                        is_leaf=lambda x: hasattr(x, "shape"))

  def quarantine(self, step: int) -> str | None:
    """Moves a failing step aside (`<step>.corrupt`, numbered if taken); it is kept for
    inspection and never read again. Returns the new path (process 0), else None."""
    src = os.path.join(self.directory, str(step))
    dst = None
    if jax.process_index() == 0 and os.path.isdir(src):
      dst, k = src + CORRUPT_SUFFIX, 1
      while os.path.exists(dst):
        dst, k = f"{src}{CORRUPT_SUFFIX}{k}", k + 1
      os.rename(src, dst)
      logging.warning("moved corrupt checkpoint %s to %s", src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"pit-quarantine-{self.directory}-{step}")
    self.manager.close()
    self.manager = self._make_manager()
    return dst

  # ------------------------------------------------------------------ internals
  def _step(self, step):
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return int(step)

  def _state_metadata(self, step: int):
    path = os.path.join(self.directory, str(step), "state")
    try:
      meta = ocp.PyTreeCheckpointer().metadata(path)
      tree = getattr(meta, "item_metadata", meta)
      tree = getattr(tree, "tree", tree)
      dict(tree)
    except Exception as e:  # noqa: BLE001 - any failure to read it is damage
      raise CorruptCheckpointError(self.directory, step,
                                   f"its array metadata (step/state) is unreadable ({_reason(e)})") from e
    return tree

  def _restore(self, abstract, step: int, *, partial: bool):
    with _held_stderr() as held:
      out = self._restore_checked(abstract, step, partial=partial)
    held.replay()
    return out

  def _restore_checked(self, abstract, step: int, *, partial: bool):
    meta = self._read_json(step)
    saved = self._state_metadata(step)
    cast = _check_compatible(self.directory, step, saved, abstract, partial=partial)
    args = ocp.args.Composite(state=_restore_args(abstract, partial=partial))
    try:
      state = self.manager.restore(step, args=args)["state"]
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - tensorstore, OS and format errors alike
      reason = _reason(e)
      del e   # drop the failed readers' frames now, while their output is held
      raise CorruptCheckpointError(self.directory, step, f"its arrays are unreadable ({reason})") from None
    sums = meta.get("checksums")
    if sums is None:
      if not self._legacy_warned:
        logging.warning("checkpoint %s step %d has no checksums (written before they "
                        "existed): restored unverified", self.directory, step)
        self._legacy_warned = True
    else:
      present = {k: v for k, v in _drop_abstract(state).items() if k not in cast}
      problem = integrity.compare(sums.get("leaves", {}), integrity.leaf_checksums(present))
      if problem:
        raise CorruptCheckpointError(self.directory, step, problem)
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    return state, meta, step

  def _read_json(self, step: int) -> dict:
    try:
      raw = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
      data = raw["data"]
    except Exception as e:  # noqa: BLE001
      raise CorruptCheckpointError(
          self.directory, step, f"its data item (step/data) is unreadable ({_reason(e)})") from e
    if not isinstance(data, dict):
      raise CorruptCheckpointError(self.directory, step, "data item is not a JSON object")
    if data.get("pit_checkpoint") is None:   # format 1: the iterator state alone
      return {"iterator": dict(data), "metrics": {}, "checksums": None}
    return {"iterator": dict(data.get("iterator") or {}), "metrics": dict(data.get("metrics") or {}),
            "checksums": data.get("checksums")}

  def wait(self):
    """Blocks until pending async saves are committed."""
    self.manager.wait_until_finished()

  def close(self):
    """Waits for pending saves, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


def _quiet_unraisable(unraisable, _default=sys.unraisablehook):
  """Orbax's array readers of a damaged checkpoint end as coroutines whose failure is
  reported again when they are garbage-collected; the restore already raised
  CorruptCheckpointError for it, so these echoes are dropped."""
  if "_read_array_index_and_device_put" in repr(getattr(unraisable, "object", "")):
    return
  exc = getattr(unraisable, "exc_value", None)
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return   # a reader thread finishing after its (failed) restore's event loop closed
  _default(unraisable)


sys.unraisablehook = _quiet_unraisable
warnings.filterwarnings("ignore", message="coroutine '_read_array_index_and_device_put' was never awaited")


class _NoReadingNoise(logging.Filter):
  """Orbax warnings that every read of a finished checkpoint triggers and that say nothing
  to a user: the step metadata file lives one level above the item folder we read the
  array metadata from, and a read-only manager has no save interval or retention."""

  NOISE = ("Metadata file does not exist", "CheckpointManagerOptions.read_only=True",
           "Given directory is read only")

  def filter(self, record) -> bool:
    msg = record.getMessage()
    return not any(n in msg for n in self.NOISE)


logging.getLogger("absl").addFilter(_NoReadingNoise())


_DAMAGED_READ_MARKS = ("reading array index", "OCDBT database", "_read_array_index",
                       "TensorStore")


class _NoDamagedReadEchoes(logging.Filter):
  """asyncio's "exception was never retrieved" for the readers of a damaged checkpoint (the
  restore already raised CorruptCheckpointError for them)."""

  def filter(self, record) -> bool:
    text = record.getMessage() + " " + str(getattr(record, "exc_info", "") or "")
    return not ("never retrieved" in text and any(k in text for k in _DAMAGED_READ_MARKS))


logging.getLogger("asyncio").addFilter(_NoDamagedReadEchoes())


class _held_stderr:
  """Holds what native code writes to stderr (fd 2) during a restore. A damaged file makes
  TensorStore's reader threads print a traceback per array after the restore has already
  failed; the failure itself is reported as CorruptCheckpointError, so on failure the held
  output is dropped, on success it is written out (`replay`)."""

  def __enter__(self):
    import tempfile
    self._file = tempfile.TemporaryFile()
    try:
      import sys
      sys.stderr.flush()
      self._saved = os.dup(2)
      os.dup2(self._file.fileno(), 2)
    except (OSError, ValueError):   # no real fd 2 (e.g. under some test runners)
      self._saved = None
    return self

  def __exit__(self, exc_type, *exc):
    if exc_type is not None:   # let the reader threads and stray coroutines finish, unheard
      self.replay = lambda: None
      import gc
      import time
      for _ in range(3):
        gc.collect()
        time.sleep(0.2)
    if self._saved is not None:
      os.dup2(self._saved, 2)
      os.close(self._saved)
    return False

  def replay(self):
    self._file.seek(0)
    data = self._file.read()
    self._file.close()
    if data:
      os.write(2, data)


def _all_hosts_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (one small all-gather on multi-host runs)."""
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.min(multihost_utils.process_allgather(np.array(int(ok), np.int32))))


def _reason(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= 300 else text[:150] + " ... " + text[-140:]


def _json_metrics(metrics: dict) -> dict:
  out = {}
  for k, v in metrics.items():
    try:
      f = float(v)
    except (TypeError, ValueError):
      continue
    out[k] = f if f == f and abs(f) != float("inf") else str(f)
  return out


def _drop_abstract(tree) -> dict:
  """{path name: array} of the restored leaves (a partial restore leaves what the
  checkpoint lacks as abstract leaves)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {integrity.path_name(p): x for p, x in leaves if not isinstance(x, jax.ShapeDtypeStruct)}


def _check_compatible(directory: str, step: int, saved, abstract, *, partial: bool) -> set[str]:
  """The saved state has the leaves, and shapes, the target expects (else it is a checkpoint
  of another model or optimizer: IncompatibleCheckpointError, not damage). A full restore
  needs exactly the target's leaves; a partial one (params only) only those it asks for that
  exist. Returns the leaves restored into another dtype (cast by Orbax: their bits differ
  from the saved ones, so their checksums are not compared)."""
  def flat(tree):
    return {integrity.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  want, have = flat(abstract), flat(saved)
  if not partial:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
      what = (f"lacks {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
              if missing else
              f"has {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "") +
              " that this run does not")
      raise IncompatibleCheckpointError(
          f"checkpoint {directory} step {step} was saved for another model or optimizer: it "
          f"{what} (use another workdir, or the config the checkpoint was written with)")
  cast = set()
  for name, x in want.items():
    if name not in have:
      continue
    shape = tuple(getattr(have[name], "shape", ()) or ())
    if shape != tuple(x.shape):
      raise IncompatibleCheckpointError(
          f"checkpoint {directory} step {step} was saved for another model: {name} has "
          f"shape {shape}, this model's is {tuple(x.shape)} (use another workdir, or the "
          "config the checkpoint was written with)")
    dtype = getattr(have[name], "dtype", None)
    if dtype is not None and str(dtype) != str(x.dtype):
      cast.add(name)
  return cast


def _restore_args(abstract, partial: bool = False):
  return ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=partial)
