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


def create_manager(directory: str, *, max_to_keep: int | None, save_every: int,
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


def open_for_reading(directory: str) -> ocp.CheckpointManager:
  """A manager that only reads `directory` (keeps every step; a CheckpointError if missing)."""
  return create_manager(directory, max_to_keep=None, save_every=1, async_save=False,
                        create=False)


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
  return step_dir_of(str(manager.directory), step)


def step_dir_of(directory: str, step: int) -> str:
  """The directory of checkpoint `step` in a checkpoint folder."""
  return os.path.join(os.path.abspath(directory), str(step))


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """Leaf shapes keyed by "a/b/0" paths (orbax metadata turns attributes into dict keys)."""
  def name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_compatible(path: str, stored: PyTree, target: PyTree, what: str = "train state"
                     ) -> None:
  """Raises CheckpointError unless `stored` has the structure and shapes of `target`."""
  stored_shapes, target_shapes = _shapes(stored), _shapes(target)
  if stored_shapes != target_shapes:
    missing = sorted(set(target_shapes) - set(stored_shapes))[:3]
    extra = sorted(set(stored_shapes) - set(target_shapes))[:3]
    wrong = sorted(k for k in set(stored_shapes) & set(target_shapes)
                   if stored_shapes[k] != target_shapes[k])[:3]
    raise CheckpointError(
        f"Checkpoint {path} does not match the current config's {what} "
        f"(missing: {missing}, unexpected: {extra}, shape mismatch: "
        f"{[(k, stored_shapes[k], target_shapes[k]) for k in wrong]}). It was left untouched; "
        "use the config it was written with, or a new --workdir.")


def _first_line(error: Exception, limit: int = 300) -> str:
  """The error's type and first line, without tensorstore's spec dump, at most `limit` chars."""
  text = (str(error).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
  text = text if len(text) <= limit else text[:limit] + " ..."
  return f"{type(error).__name__}: {text}"


def _verify(path: str, restored: PyTree, integrity: dict[str, Any] | None, *,
            prefix: bool = False) -> None:
  """Raises CorruptCheckpointError unless the arrays are finite and match their checksums.

  With `prefix`, `restored` holds only the first leaves of the saved state (the inference
  items), checked against the first checksums.
  """
  checksums, finite = fingerprint(restored)
  stored = (integrity or {}).get("checksums") or []
  if integrity is not None and (stored[:len(checksums)] if prefix else stored) != checksums:
    names = list(_shapes(restored))
    bad = [n for n, a, b in zip(names, checksums, stored) if a != b] or names
    raise CorruptCheckpointError(
        f"Checkpoint {path} fails its checksum ({len(bad)} of {len(names)} arrays differ from "
        f"when it was saved, e.g. {bad[:2]}): its files were changed or damaged.")
  if not finite:
    raise CorruptCheckpointError(f"Checkpoint {path} holds non-finite values (NaN or inf).")


_ADVICE = ("It was left untouched; move it away to restart from the previous one, or use a "
           "new --workdir.")


def _read(manager: ocp.CheckpointManager, step: int | None, target: PyTree | None
          ) -> tuple[str, PyTree, dict[str, Any] | None] | None:
  """(path, state, integrity item) of checkpoint `step` (None: the latest), or None if none.

  With a `target` (a state of sharded arrays) the state is restored into its structure and
  shardings, after checking that the stored shapes match it; without one it is restored as
  stored (a dict of arrays on the default device). Nothing is verified here.
  """
  if step is None:
    step = manager.latest_step()
    if step is None:
      return None
  elif step not in manager.all_steps():
    raise CheckpointError(f"No checkpoint for step {step} in {manager.directory}; there are "
                          f"{sorted(manager.all_steps())}.")
  path = step_dir(manager, step)
  metadata_file = os.path.join(path, "state", "_METADATA")
  if not os.path.isfile(metadata_file):
    raise CorruptCheckpointError(f"Checkpoint {path} is incomplete: {metadata_file} is "
                                 f"missing. {_ADVICE}")
  try:
    stored = manager.item_metadata(step)["state"]
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CorruptCheckpointError(
        f"Cannot read checkpoint metadata at {path} ({_first_line(e)}): it is corrupt or was "
        f"written by an incompatible version. {_ADVICE}") from e
  if stored is None:
    raise CorruptCheckpointError(f"Checkpoint {path} has no readable 'state' item. {_ADVICE}")
  if target is None:
    items = {"state": ocp.args.StandardRestore()}
  else:
    check_compatible(path, stored, target)
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
        f"{_ADVICE}") from e
  state = restored["state"]
  saved_step = state["step"] if isinstance(state, dict) else state.step
  restored_step = int(np.asarray(jax.device_get(saved_step)))
  if restored_step != step:
    raise CorruptCheckpointError(
        f"Checkpoint {path} holds step {restored_step}, not {step}. {_ADVICE}")
  return path, state, restored[INTEGRITY] if has_integrity else None


def _checked(path: str, tree: PyTree, integrity: dict[str, Any] | None, *,
             prefix: bool = False) -> None:
  """`_verify` with the advice appended to its error."""
  try:
    _verify(path, tree, integrity, prefix=prefix)
  except CorruptCheckpointError as e:
    raise CorruptCheckpointError(f"{e} {_ADVICE}") from None


def restore_with_extra(manager: ocp.CheckpointManager, target: PyTree,
                       step: int | None = None) -> tuple[PyTree, dict[str, Any]] | None:
  """(state, extra saved with it) of checkpoint `step` (default: the latest), or None if none.

  `target` is the freshly initialised state (sharded arrays); its leaves give shapes, dtypes
  and shardings. Any failure names the checkpoint path and leaves the files as they are:
  CorruptCheckpointError for damaged files, CheckpointError for a different train state.
  """
  read = _read(manager, step, target)
  if read is None:
    return None
  path, state, integrity = read
  _checked(path, state, integrity)
  return state, dict((integrity or {}).get("extra") or {})


def restore(manager: ocp.CheckpointManager, target: PyTree,
            step: int | None = None) -> PyTree | None:
  """Restores checkpoint `step` (default: the latest) into the structure of `target`, or None."""
  restored = restore_with_extra(manager, target, step)
  return None if restored is None else restored[0]


# The train-state fields sampling needs; they are the first fields of the saved state, so their
# leaves are the first of its checksums.
INFERENCE_ITEMS = ("step", "params", "ema_params")


def restore_for_inference(manager: ocp.CheckpointManager, step: int | None = None
                          ) -> dict[str, Any] | None:
  """{"step", "params", "ema_params"} of checkpoint `step`, or None if there is none.

  Needs no train state to restore into (no optimizer, no encoder): the arrays are read as
  stored and checked against their checksums. Without `step`, the newest checkpoint that
  verifies; newer damaged ones are reported and skipped (never moved: this is read-only).
  """
  def read_one(s: int | None) -> dict[str, Any] | None:
    read = _read(manager, s, None)
    if read is None:
      return None
    path, state, integrity = read
    picked = {k: state[k] for k in INFERENCE_ITEMS}
    _checked(path, tuple(picked[k] for k in INFERENCE_ITEMS), integrity, prefix=True)
    return picked

  if step is not None:
    return read_one(step)
  restored, failures = _newest_good(manager, read_one)
  for _, error in failures:
    logging.warning("%s\nUsing the older checkpoint %s.", error,
                    step_dir(manager, int(restored["step"])))
  return restored


def _newest_good(manager: ocp.CheckpointManager, read_one: Any
                 ) -> tuple[Any, list[tuple[int, CorruptCheckpointError]]]:
  """(the first `read_one(step)` that succeeds, newest step first; the corrupt ones skipped).

  (None, []) when there is no checkpoint; if none is good, the newest one's error is raised.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return read_one(step), failures
    except CorruptCheckpointError as e:
      failures.append((step, e))
  if failures:
    raise failures[0][1]
  return None, []


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
  restored, failures = _newest_good(
      manager, lambda step: (step, restore_with_extra(manager, target, step)))
  if restored is None:
    return None
  good_step, restored = restored
  for bad_step, error in failures:
    dest = step_dir(manager, bad_step)
    if jax.process_index() == 0:
      dest = _set_aside(dest, quarantine_dir)
    logging.error("%s\nMoved it to %s; resuming from %s.", error, dest,
                  step_dir(manager, good_step))
  if failures:
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoint_quarantine")
    manager.reload()
  return restored
