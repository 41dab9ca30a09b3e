"""Orbax checkpoints: train state + data-iterator position, every N steps, keep K."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves {state, data} under `directory`; resumes from the latest step."""

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every), 1), max_to_keep=max(int(keep), 1),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                              data=ocp.args.JsonSave(data_state))
    return self.manager.save(int(step), args=args, force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores into the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
    step = self._step(step)
    args = ocp.args.Composite(state=_restore_args(abstract_state), data=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    return restored["state"], dict(restored["data"] or {}), step

  def restore_params(self, abstract_params: Any, step: int | None = None,
                     allow_missing: Callable[[str], bool] | None = None) -> tuple[Any, int]:
    """Restores only the `params` of a saved train state (no optimizer state is read).
    A param the checkpoint lacks is an error, unless `allow_missing(top-level key)`:
    then that key is left out of the result for the caller to fill."""
    step = self._step(step)
    if allow_missing is not None:
      saved = set(self.saved_param_keys(step))
      abstract_params = {k: v for k, v in abstract_params.items()
                         if k in saved or not allow_missing(k)}
    args = ocp.args.Composite(state=_restore_args({"params": abstract_params}, partial=True))
    restored = self.manager.restore(step, args=args)["state"]
    missing = [jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_flatten_with_path(restored["params"])[0]
               if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:  # partial restore leaves what the checkpoint lacks as abstract leaves
      raise ValueError(f"checkpoint {self.directory} step {step} has no params{missing[0]} "
                       f"(and {len(missing) - 1} more): it was saved for another model")
    return restored["params"], step

  def saved_param_keys(self, step: int | None = None) -> list[str]:
    """Top-level keys of the params saved at `step` (read from metadata, no arrays)."""
    path = os.path.join(self.directory, str(self._step(step)), "state")
    meta = ocp.PyTreeCheckpointer().metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    return list(tree["params"].keys())

  def _step(self, step):
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _restore_args(abstract, partial: bool = False):
  return ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=partial)
