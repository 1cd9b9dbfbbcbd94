"""Orbax checkpointing of the train state: async saves, keep last N, resume, clear errors.

The whole train state (step, params, EMA params, optimizer state, RNG) is one pytree; the
data position is the step, so restoring it is all a relaunch needs to continue exactly.
Each checkpoint also holds an "integrity" JSON item: a checksum per array (computed on
device when saving) and any small extra data (the training loop's metric window). A restore
recomputes the checksums and refuses a checkpoint whose arrays changed or are not finite;
a non-finite state is never saved.
"""

import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from lookahead_drift import cli

PyTree = Any
INTEGRITY = "integrity"


class CheckpointError(ValueError):
  """A checkpoint exists but cannot be restored into the current train state."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint whose files are unreadable, incomplete, or fail the integrity check."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """A position-weighted sum of the leaf's bits (uint32, wrapping; exact in any order)."""
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  bits = bits.ravel()
  weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def _fingerprint(tree: PyTree) -> tuple[list[jax.Array], jax.Array]:
  leaves = jax.tree.leaves(tree)
  finite = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
  return [_leaf_checksum(x) for x in leaves], jnp.all(jnp.stack(finite or [jnp.bool_(True)]))


def fingerprint(tree: PyTree) -> tuple[list[int], bool]:
  """(checksum per leaf, whether every float leaf is finite), computed on device."""
  sums, finite = jax.device_get(_fingerprint(tree))
  return [int(s) for s in sums], bool(finite)


def create_manager(directory: str, *, max_to_keep: int, save_every: int,
                   async_save: bool = True, create: bool = True) -> ocp.CheckpointManager:
  """A manager that saves the "state" item every `save_every` steps and keeps the last few.

  With `create=False` a missing `directory` is a CheckpointError (nothing is created).
  """
  if not create and not os.path.isdir(directory):
    raise CheckpointError(f"No checkpoints: {os.path.abspath(directory)} does not exist "
                          "(is --workdir the training run's folder?).")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_every,
      enable_async_checkpointing=async_save,
      create=create,
      cleanup_tmp_directories=False,  # never delete anything a user may want to inspect
  )
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     INTEGRITY: ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, *,
         force: bool = False, extra: dict[str, Any] | None = None) -> bool:
  """Starts an (async) save of `state` (and JSON-able `extra`) at `step`; whether it started.

  Raises cli.NonFiniteError rather than save a state with a NaN or infinity.
  """
  if not force and not manager.should_save(step):
    return False
  checksums, finite = fingerprint(state)
  if not finite:
    raise cli.NonFiniteError(f"refusing to save a non-finite train state at step {step}.")
  integrity = {"checksums": checksums, "extra": extra or {}}
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), **{INTEGRITY: ocp.args.JsonSave(integrity)}),
      force=force)


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  """The directory of checkpoint `step`."""
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


def _first_line(error: Exception, limit: int = 300) -> str:
  """The error's type and first line, without tensorstore's spec dump, at most `limit` chars."""
  text = (str(error).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
  text = text if len(text) <= limit else text[:limit] + " ..."
  return f"{type(error).__name__}: {text}"


def _verify(path: str, restored: PyTree, integrity: dict[str, Any] | None) -> None:
  """Raises CorruptCheckpointError unless the arrays are finite and match their checksums."""
  checksums, finite = fingerprint(restored)
  if integrity is not None and integrity.get("checksums") != checksums:
    names = list(_shapes(restored))
    stored = integrity.get("checksums") or []
    bad = [n for n, a, b in zip(names, checksums, stored) if a != b] or names
    raise CorruptCheckpointError(
        f"Checkpoint {path} fails its checksum ({len(bad)} of {len(names)} arrays differ from "
        f"when it was saved, e.g. {bad[:2]}): its files were changed or damaged.")
  if not finite:
    raise CorruptCheckpointError(f"Checkpoint {path} holds non-finite values (NaN or inf).")


def restore_with_extra(manager: ocp.CheckpointManager, target: PyTree,
                       step: int | None = None) -> tuple[PyTree, dict[str, Any]] | None:
  """(state, extra saved with it) of checkpoint `step` (default: the latest), or None if none.

  `target` is the freshly initialised state (sharded arrays); its leaves give shapes, dtypes
  and shardings. Any failure names the checkpoint path and leaves the files as they are:
  CorruptCheckpointError for damaged files, CheckpointError for a different train state.
  """
  if step is None:
    step = manager.latest_step()
    if step is None:
      return None
  elif step not in manager.all_steps():
    raise CheckpointError(f"No checkpoint for step {step} in {manager.directory}; there are "
                          f"{sorted(manager.all_steps())}.")
  path = step_dir(manager, step)
  advice = ("It was left untouched; move it away to restart from the previous one, or use a "
            "new --workdir.")
  metadata_file = os.path.join(path, "state", "_METADATA")
  if not os.path.isfile(metadata_file):
    raise CorruptCheckpointError(f"Checkpoint {path} is incomplete: {metadata_file} is "
                                 f"missing. {advice}")
  try:
    stored = manager.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CorruptCheckpointError(
        f"Cannot read checkpoint metadata at {path} ({_first_line(e)}): it is corrupt or was "
        f"written by an incompatible version. {advice}") from e
  if stored is None:
    raise CorruptCheckpointError(f"Checkpoint {path} has no readable 'state' item. {advice}")
  _check_compatible(path, stored, target)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
  items = {"state": ocp.args.StandardRestore(abstract)}
  has_integrity = os.path.isdir(os.path.join(path, INTEGRITY))
  if has_integrity:
    items[INTEGRITY] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CorruptCheckpointError(
        f"Cannot restore checkpoint {path} ({_first_line(e)}): it is corrupt or incompatible. "
        f"{advice}") from e
  integrity = restored[INTEGRITY] if has_integrity else None
  try:
    _verify(path, restored["state"], integrity)
  except CorruptCheckpointError as e:
    raise CorruptCheckpointError(f"{e} {advice}") from None
  restored_step = int(np.asarray(jax.device_get(restored["state"].step)))
  if restored_step != step:
    raise CorruptCheckpointError(
        f"Checkpoint {path} holds step {restored_step}, not {step}. {advice}")
  return restored["state"], dict((integrity or {}).get("extra") or {})


def restore(manager: ocp.CheckpointManager, target: PyTree,
            step: int | None = None) -> PyTree | None:
  """Restores checkpoint `step` (default: the latest) into the structure of `target`, or None."""
  restored = restore_with_extra(manager, target, step)
  return None if restored is None else restored[0]


def _set_aside(path: str, quarantine_dir: str) -> str:
  """Moves a bad step directory into `quarantine_dir` (never deletes it); the new path."""
  os.makedirs(quarantine_dir, exist_ok=True)
  dest = os.path.join(quarantine_dir, os.path.basename(path))
  if os.path.exists(dest):
    dest = f"{dest}.{time.strftime('%Y%m%d-%H%M%S')}"
  shutil.move(path, dest)
  return dest


def restore_latest_good(manager: ocp.CheckpointManager, target: PyTree, quarantine_dir: str
                        ) -> tuple[PyTree, dict[str, Any]] | None:
  """The newest checkpoint that restores and verifies, with its extra; None if there is none.

  Newer corrupt checkpoints are moved to `quarantine_dir` (and reported) only when an older
  one is good; if none is, the newest one's error is raised and nothing is moved. A
  checkpoint of a different train state (CheckpointError) is raised at once.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = restore_with_extra(manager, target, step)
    except CorruptCheckpointError as e:
      failures.append((step, e))
      continue
    for bad_step, error in failures:
      dest = step_dir(manager, bad_step)
      if jax.process_index() == 0:
        dest = _set_aside(dest, quarantine_dir)
      logging.error("%s\nMoved it to %s; resuming from %s.", error, dest,
                    step_dir(manager, step))
    if failures:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("checkpoint_quarantine")
      manager.reload()
    return restored
  if failures:
    raise failures[0][1]
  return None
