"""Orbax checkpointing of the train state: async saves, keep last N, resume, clear errors.

The whole train state (step, params, EMA params, optimizer state, RNG) is one pytree; the
data position is the step, so restoring it is all a relaunch needs to continue exactly.
Each checkpoint also holds an "integrity" JSON item: a checksum per array, keyed by the
array's path in the state ("params/params/Dense_0/kernel"; checkpoint_integrity.py computes
them on device), and any small extra data (the training loop's metric window). `restore`
recomputes the checksums of the arrays it returns and refuses a checkpoint whose arrays
changed or are not finite; `newest_good` is the resume policy (the newest checkpoint that
restores); a non-finite state is never saved.
"""

import dataclasses
import os
import re
import shutil
import time
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from lookahead_drift import cli
from lookahead_drift.checkpoint_integrity import fingerprint, leaf_paths, stored_checksums

PyTree = Any
INTEGRITY = "integrity"


class CheckpointError(ValueError):
  """A checkpoint exists but cannot be restored into the current train state."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint whose files are unreadable, incomplete, or fail the integrity check."""


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


def steps(directory: str) -> list[int]:
  """The steps of the checkpoints in `directory`, oldest first (a CheckpointError if it does
  not exist)."""
  manager = open_for_reading(directory)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


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
  try:
    return manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), **{INTEGRITY: ocp.args.JsonSave(integrity)}),
        force=force)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise _io_fault(manager, e, step) from e  # this save, or the previous (async) one


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight; cli.IOFault if it (or an earlier one) failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise _io_fault(manager, e) from e


def _save_failed(manager: ocp.CheckpointManager) -> bool:
  """Whether an async save has already failed (without waiting for one in flight)."""
  finalize = getattr(manager, "_finalize_thread", None)  # orbax's; else the next save raises
  try:
    return bool(finalize is not None and finalize.map(
        lambda t: t is not None and not t.is_alive() and t.exception is not None))
  except Exception:  # pylint: disable=broad-exception-caught
    return False  # another orbax version: the next save or wait reports the failure


def check_saves(manager: ocp.CheckpointManager, step: int, every: int) -> None:
  """cli.IOFault if an async save has failed: a cheap check after every step, so that a run
  stops at once when its disk is full. Multi-process runs agree on it every `every` steps
  (one small all-gather), so that all processes stop at the same step."""
  failed = _save_failed(manager)
  if jax.process_count() > 1:
    if step % every:
      return
    failed = bool(np.any(multihost_utils.process_allgather(np.array(failed))))
  if failed:
    wait(manager)  # raises this process's failure
    raise cli.IOFault(f"a checkpoint save in {os.path.abspath(str(manager.directory))} "
                      "failed on another process (its error names it); stopped.")


def close(manager: ocp.CheckpointManager, *, quiet: bool = False) -> None:
  """Waits for the save in flight (cli.IOFault if it failed, unless `quiet`: another error is
  being reported) and closes the manager."""
  try:
    if quiet:
      try:
        manager.wait_until_finished()
      except Exception:  # pylint: disable=broad-exception-caught
        pass
    else:
      wait(manager)
  finally:
    manager.close()  # joins orbax's threads: a failed save's other writes may still be going
    _remove_failed_saves(str(manager.directory))


_TMP = ".orbax-checkpoint-tmp"


def _good_steps(directory: str) -> list[int]:
  """The steps of the finished checkpoint directories on disk (orbax's temporary ones, named
  STEP.orbax-checkpoint-tmp..., are renamed to STEP when a save is complete)."""
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def _failed_saves(directory: str) -> list[str]:
  """The temporary directories of saves newer than the newest finished checkpoint: what a
  failed save leaves (an older one may be a user's to inspect)."""
  latest = max(_good_steps(directory), default=-1)
  return [name for name in (sorted(os.listdir(directory)) if os.path.isdir(directory) else [])
          if _TMP in name and name.split(".")[0].isdigit() and int(name.split(".")[0]) > latest]


def _remove_failed_saves(directory: str, settle_s: float = 0.5, tries: int = 20) -> list[int]:
  """Deletes (process 0) what failed saves left in `directory`; their steps. A failed save's
  other writes may still be going (orbax stops waiting at the first error), and recreate
  files: the removal is repeated until the directory stays clean for `settle_s`."""
  steps_seen = set()
  for _ in range(tries):
    names = _failed_saves(directory)
    steps_seen.update(int(n.split(".")[0]) for n in names)
    if not names or jax.process_index() != 0:
      break
    for name in names:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    time.sleep(settle_s)
  return sorted(steps_seen)


def _io_text(error: Exception) -> str:
  """An I/O error in a few words: the OS error ("No space left on device [Errno 28]"), also
  when tensorstore wraps it in a long ValueError; else the error's first line."""
  if isinstance(error, OSError) and error.strerror:
    return f"{error.strerror} [Errno {error.errno}]"
  code = re.search(r"os_error_code='?(\d+)", str(error))
  if code:
    return f"{os.strerror(int(code.group(1)))} [Errno {code.group(1)}]"
  return _first_line(error, limit=200)


def _io_fault(manager: ocp.CheckpointManager, error: Exception, step: int | None = None
              ) -> cli.IOFault:
  """The one-line cli.IOFault for a failed save, after waiting for the other save threads and
  removing what the failed save left (the finished checkpoints stay as they are)."""
  directory = os.path.abspath(str(manager.directory))
  try:
    manager.wait_until_finished()
  except Exception:  # pylint: disable=broad-exception-caught
    pass  # the same failure, raised again
  failed = _remove_failed_saves(directory)
  good = _good_steps(directory)
  where = step_dir_of(directory, failed[0]) if failed else (
      step_dir_of(directory, step) if step is not None else directory)
  last = step_dir_of(directory, good[-1]) if good else "none"
  return cli.IOFault(f"cannot write checkpoint {where}: {_io_text(error)}. Stopped; the last "
                     f"good checkpoint is {last}. Fix the cause (e.g. free disk space) and "
                     "relaunch the same command to continue.")


def step_dir_of(directory: str, step: int) -> str:
  """The directory of checkpoint `step` in a checkpoint folder."""
  return os.path.join(os.path.abspath(directory), str(step))


def check_compatible(path: str, stored: PyTree, target: PyTree, what: str = "train state"
                     ) -> None:
  """Raises CheckpointError unless `stored` has the structure and shapes of `target`."""
  shapes = lambda tree: dict(zip(leaf_paths(tree), (tuple(x.shape) for x in
                                                    jax.tree.leaves(tree))))
  stored_shapes, target_shapes = shapes(stored), shapes(target)
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


_ADVICE = ("It was left untouched; move it away to restart from the previous one, or use a "
           "new --workdir.")


def _without_advice(error: Exception) -> str:
  """A CorruptCheckpointError's message without the advice for a single bad checkpoint."""
  return str(error).replace(f" {_ADVICE}", "")


def _read(manager: ocp.CheckpointManager, step: int, target: PyTree | None
          ) -> tuple[str, PyTree, dict[str, Any] | None]:
  """(path, state, integrity item or None) of checkpoint `step`, not yet verified.

  With a `target` (a state of sharded arrays) the state is restored into its structure and
  shardings, after checking that the stored shapes match it; without one it is restored as
  stored (a dict of arrays on the default device).
  """
  if step not in manager.all_steps():
    raise CheckpointError(f"No checkpoint for step {step} in {manager.directory}; there are "
                          f"{sorted(manager.all_steps())}.")
  path = step_dir_of(str(manager.directory), step)
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
  abstract, absent = None, {}
  if target is not None:
    check_compatible(path, stored, target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    abstract, absent = _without_absent_fields(abstract, stored)
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
  if absent:
    state = target.replace(**state, **absent)
  return path, state, restored[INTEGRITY] if has_integrity else None


def _without_absent_fields(abstract: PyTree, stored: Any) -> tuple[PyTree, dict[str, Any]]:
  """A dataclass target's fields that `stored` has, as a dict, and the array-free fields it
  lacks (e.g. an empty `TrainState.loss_state` against a checkpoint written before that field
  existed; check_compatible already refused any missing arrays). (abstract, {}) if none."""
  if not dataclasses.is_dataclass(abstract) or not hasattr(stored, "keys"):
    return abstract, {}
  names = [f.name for f in dataclasses.fields(abstract)]
  absent = {k: getattr(abstract, k) for k in names if k not in stored.keys()}
  if not absent:
    return abstract, {}
  return {k: getattr(abstract, k) for k in names if k not in absent}, absent


def _verify(path: str, tree: PyTree, checksums: dict[str, int] | None) -> None:
  """Raises CorruptCheckpointError unless `tree`'s arrays are finite and each matches the
  checksum saved under its path (None: a checkpoint without checksums, finiteness only)."""
  computed, finite = fingerprint(tree)
  bad = [p for p, s in computed.items() if checksums is not None and checksums.get(p) != s]
  if bad:
    raise CorruptCheckpointError(
        f"Checkpoint {path} fails its checksum ({len(bad)} of {len(computed)} arrays differ "
        f"from when it was saved, e.g. {bad[:2]}): its files were changed or damaged. "
        f"{_ADVICE}")
  if not finite:
    raise CorruptCheckpointError(
        f"Checkpoint {path} holds non-finite values (NaN or inf). {_ADVICE}")


@dataclasses.dataclass(frozen=True)
class Restored:
  """A verified checkpoint: its step and directory, the state, and the extra saved with it."""
  step: int
  path: str
  state: PyTree
  extra: dict[str, Any]


def restore(directory: str, target: PyTree | None = None, step: int | None = None, *,
            items: Sequence[str] | None = None) -> Restored | None:
  """Checkpoint `step` of `directory` (None: the latest), verified; None if there is none.

  `target`, a state of sharded arrays (e.g. the freshly initialised train state), gives the
  structure, dtypes and shardings to restore into; without it the arrays come back as
  stored, a dict on the default device, of which `items` picks top-level entries (what
  inference needs; only those are returned and verified). Any failure names the checkpoint
  and leaves its files as they are: CorruptCheckpointError for damaged files, CheckpointError
  for a different train state or a missing `directory`.
  """
  manager = open_for_reading(directory)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    path, state, integrity = _read(manager, step, target)
  finally:
    manager.close()
  saved_step = int(np.asarray(jax.device_get(
      state["step"] if isinstance(state, dict) else state.step)))
  if saved_step != step:
    raise CorruptCheckpointError(f"Checkpoint {path} holds step {saved_step}, not {step}. "
                                 f"{_ADVICE}")
  checksums = None if integrity is None else stored_checksums(integrity, state)
  if items is not None:
    state = {k: state[k] for k in items}
  _verify(path, state, checksums)
  return Restored(step, path, state, dict((integrity or {}).get("extra") or {}))


def _set_aside(path: str, quarantine_dir: str) -> str:
  """Moves a bad step directory into `quarantine_dir` (never deletes it); the new path."""
  os.makedirs(quarantine_dir, exist_ok=True)
  dest = os.path.join(quarantine_dir, os.path.basename(path))
  if os.path.exists(dest):
    dest = f"{dest}.{time.strftime('%Y%m%d-%H%M%S')}"
  shutil.move(path, dest)
  return dest


def newest_good(directory: str, target: PyTree | None = None, *,
                items: Sequence[str] | None = None, quarantine_dir: str | None = None
                ) -> Restored | None:
  """The newest checkpoint of `directory` that restores and verifies; None if there is none.

  Newer corrupt ones are reported and skipped; with `quarantine_dir` they are moved there
  (process 0 moves), but only once an older one is good: if none is, the newest one's error
  is raised and nothing is moved. A checkpoint of a different train state (CheckpointError)
  is raised at once, as is a missing `directory`. `target`, `items`: as in `restore`.
  """
  failures = []
  for step in reversed(steps(directory)):
    try:
      restored = restore(directory, target, step, items=items)
    except CorruptCheckpointError as e:
      failures.append((step, e))
      continue
    _report_skipped(directory, failures, restored.path, quarantine_dir)
    return restored
  if failures:
    bad = [step for step, _ in failures]
    raise CorruptCheckpointError(
        f"{_without_advice(failures[0][1])} No checkpoint in {os.path.abspath(directory)} "
        f"restores (damaged: step{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}); "
        "they were left untouched. Move them away to start over, or use a new --workdir."
    ) from failures[0][1]
  return None


def saved_extra(directory: str) -> tuple[str, dict[str, Any]] | None:
  """(path, extra) of the newest checkpoint of `directory` whose extra (the small JSON saved
  with it) reads, without restoring any array; None if there is none."""
  manager = open_for_reading(directory)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      path = step_dir_of(str(manager.directory), step)
      if not os.path.isdir(os.path.join(path, INTEGRITY)):
        continue
      try:
        integrity = manager.restore(step, args=ocp.args.Composite(
            **{INTEGRITY: ocp.args.JsonRestore()}))[INTEGRITY]
      except Exception:  # pylint: disable=broad-exception-caught
        continue  # damaged: newest_good reports it
      return path, dict((integrity or {}).get("extra") or {})
  finally:
    manager.close()
  return None


def _report_skipped(directory: str, failures: list[tuple[int, CorruptCheckpointError]],
                    used: str, quarantine_dir: str | None) -> None:
  """Logs each skipped corrupt checkpoint, moving it to `quarantine_dir` if given."""
  for step, error in failures:
    bad = step_dir_of(directory, step)
    if quarantine_dir is None:
      logging.warning("%s Left it untouched; using the older checkpoint %s.",
                      _without_advice(error), used)
      continue
    if jax.process_index() == 0:
      bad = _set_aside(bad, quarantine_dir)
    logging.error("%s Moved it to %s; resuming from %s.", _without_advice(error), bad, used)
  if failures and quarantine_dir is not None and jax.process_count() > 1:
    multihost_utils.sync_global_devices("checkpoint_quarantine")
