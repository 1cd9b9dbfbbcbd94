"""A training workdir: one run at a time (WORKDIR/lock), and the config a resume must keep.

The lock is a file holding the owner's host and pid, held with `flock` while the run lives;
the kernel drops the flock when the process dies, so a lock left by a dead process on this
host is taken over (with a warning). A lock naming another host is never taken over.

On resume, fields that change what the run computes (data, model, encoder, loss, seed,
optimizer, EMA, ...) must equal the saved WORKDIR/config.json (or, if it is missing, the
config saved with the newest checkpoint) unless changes are allowed; HARMLESS fields (logging, checkpoint and sample cadence, num_steps, TensorBoard, mesh, the
non-finite policy) may change, though a new num_steps stretches or shortens a cosine
learning-rate schedule (the resume warning says so, with the rate before and after). Every
change is recorded: the old config.json goes to WORKDIR/config_history/ and the new one
replaces it.
"""

import dataclasses
import fcntl
import json
import os
import socket
import time
from typing import Any

import ml_collections
from absl import logging

from lookahead_drift import cli

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"
HISTORY_DIR = "config_history"
HARMLESS = ("log_every", "num_steps", "tensorboard", "nonfinite", "checkpoint", "sample",
            "mesh")


@dataclasses.dataclass
class Lock:
  """A held workdir lock (see `acquire_lock`)."""
  path: str
  fd: int


def _read_holder(fd: int) -> dict[str, Any]:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    holder = json.loads(os.read(fd, 4096).decode() or "{}")
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
          f"{holder.get('started', '?')}")


def acquire_lock(workdir: str) -> Lock:
  """Locks `workdir` for this process; a UserError if another live run holds it."""
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise cli.UserError(
          f"{workdir} is in use by another run ({_describe(holder)}; lock {path}). Wait for "
          "it to finish, stop it, or use another --workdir.") from None
    try:
      same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same_file = False
    if same_file:
      break
    os.close(fd)  # the previous owner removed the file between our open and flock
  holder, host = _read_holder(fd), socket.gethostname()
  if holder and holder.get("host") != host:
    os.close(fd)
    raise cli.UserError(
        f"{workdir} is locked by a run on another host ({_describe(holder)}; lock {path}). "
        "If that run is dead, delete the lock file and relaunch.")
  if holder:
    logging.warning("Taking over the lock of %s left by a process that is no longer "
                    "running (%s).", workdir, _describe(holder))
  me = {"host": host, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(me).encode(), 0)
  os.fsync(fd)
  return Lock(path, fd)


def release_lock(lock: Lock) -> None:
  """Removes the lock file and drops the lock."""
  try:
    if os.stat(lock.path).st_ino == os.fstat(lock.fd).st_ino:
      os.unlink(lock.path)
  except FileNotFoundError:
    pass
  os.close(lock.fd)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{"a.b": (old, new)} for every flattened field that differs (a missing one is None)."""
  flat_old, flat_new = _flatten(old), _flatten(new)
  return {k: (flat_old.get(k), flat_new.get(k)) for k in sorted(set(flat_old) | set(flat_new))
          if flat_old.get(k) != flat_new.get(k)}


def is_harmless(key: str) -> bool:
  """Whether changing config field `key` on resume leaves the run's meaning as it was."""
  return key.split(".")[0] in HARMLESS


def read_config(workdir: str) -> dict[str, Any] | None:
  """The saved WORKDIR/config.json, or None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise cli.UserError(f"{path} is not valid JSON ({e}); restore it or delete it.") from None


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config as saved in WORKDIR/config.json; a UserError if there is none."""
  saved = read_config(workdir)
  if saved is None:
    raise cli.UserError(
        f"{os.path.join(workdir, CONFIG_FILE)} does not exist (is --workdir a training run's "
        "folder?); pass --config=the training config to use instead.")
  return ml_collections.ConfigDict(saved)


def check_config(saved: dict[str, Any] | None, new: dict[str, Any], *, resuming: bool,
                 allow_change: bool, workdir: str, saved_where: str | None = None
                 ) -> dict[str, tuple[Any, Any]]:
  """The changes from the saved config; a UserError if resuming changes a meaningful field.
  `saved_where` names where `saved` came from (default: WORKDIR/config.json)."""
  if saved is None:
    return {}
  changes = config_changes(saved, new)
  meaningful = {k: v for k, v in changes.items() if not is_harmless(k)}
  if resuming and meaningful and not allow_change:
    diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in meaningful.items())
    raise cli.UserError(
        f"Resuming {workdir} with a different config ({diff}). Use the saved "
        f"{saved_where or os.path.join(workdir, CONFIG_FILE)}, a new --workdir, or pass "
        "--allow_config_change to continue anyway (the change is recorded).")
  return changes


def write_config(workdir: str, config_json: str, step: int) -> str | None:
  """Writes WORKDIR/config.json; a different old one is kept in config_history/. Its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  kept = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = f.read()
    if old == config_json:
      return None
    os.makedirs(os.path.join(workdir, HISTORY_DIR), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = os.path.join(workdir, HISTORY_DIR, f"config_step{step:07d}_{stamp}.json")
    os.replace(path, kept)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(config_json)
  os.replace(tmp, path)
  return kept
