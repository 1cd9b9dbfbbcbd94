"""Orbax checkpointing of the train state: async saves, keep last N, resume, clear errors.

The whole train state (step, params, EMA params, optimizer state, RNG) is one pytree; the
data position is the step, so restoring it is all a relaunch needs to continue exactly.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(ValueError):
  """A checkpoint exists but cannot be restored into the current train state."""


def create_manager(directory: str, *, max_to_keep: int, save_every: int,
                   async_save: bool = True) -> ocp.CheckpointManager:
  """A manager that saves the "state" item every `save_every` steps and keeps the last few."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_every,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=False,  # never delete anything a user may want to inspect
  )
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, *,
         force: bool = False) -> bool:
  """Starts an (async) save of `state` at `step`; returns whether a save was started."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      force=force)


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """Leaf shapes keyed by "a/b/0" paths (orbax metadata turns attributes into dict keys)."""
  def name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_compatible(path: str, stored: PyTree, target: PyTree) -> None:
  """Raises CheckpointError unless `stored` has the structure and shapes of `target`."""
  stored_shapes, target_shapes = _shapes(stored), _shapes(target)
  if stored_shapes != target_shapes:
    missing = sorted(set(target_shapes) - set(stored_shapes))[:3]
    extra = sorted(set(stored_shapes) - set(target_shapes))[:3]
    wrong = sorted(k for k in set(stored_shapes) & set(target_shapes)
                   if stored_shapes[k] != target_shapes[k])[:3]
    raise CheckpointError(
        f"Checkpoint {path} does not match the current config's train state "
        f"(missing: {missing}, unexpected: {extra}, shape mismatch: "
        f"{[(k, stored_shapes[k], target_shapes[k]) for k in wrong]}). It was left untouched; "
        "use the config it was written with, or a new --workdir.")


def restore_latest(manager: ocp.CheckpointManager, target: PyTree) -> PyTree | None:
  """Restores the latest checkpoint into the structure/shardings of `target`, or None.

  `target` is the freshly initialised state (sharded arrays); its leaves give shapes, dtypes
  and shardings. Any failure names the checkpoint path and leaves the files as they are.
  """
  step = manager.latest_step()
  if step is None:
    return None
  path = _step_dir(manager, step)
  try:
    stored = manager.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CheckpointError(
        f"Cannot read checkpoint metadata at {path}: {type(e).__name__}: {e}. The checkpoint "
        "is corrupt or was written by an incompatible version; it was left untouched. Move "
        "it away to restart from the previous one, or use a new --workdir.") from e
  if stored is None:
    raise CheckpointError(f"Checkpoint {path} has no 'state' item; it was left untouched.")
  _check_compatible(path, stored, target)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CheckpointError(
        f"Cannot restore checkpoint {path}: {type(e).__name__}: {e}. The checkpoint is "
        "corrupt or incompatible; it was left untouched. Move it away to restart from the "
        "previous one, or use a new --workdir.") from e
  restored_step = int(np.asarray(jax.device_get(restored.step)))
  if restored_step != step:
    raise CheckpointError(
        f"Checkpoint {path} holds step {restored_step}, not {step}; it was left untouched.")
  return restored
