"""What the studies write next to their results: the machine a run used, and JSON files that
accept numpy values."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from typing import Any

import jax
import numpy as np


def machine_info() -> dict[str, Any]:
  """CPU model, cores, git commit, CPU affinity, jax version and device, load average."""
  try:
    cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
               if l.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    cpu = platform.processor() or "unknown"
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.abspath(__file__))
                            ).stdout.strip()
  except OSError:
    commit = "unknown"
  return {"cpu": cpu, "cores": os.cpu_count(), "git": commit,
          "affinity": sorted(os.sched_getaffinity(0)), "jax": jax.__version__,
          "device": str(jax.devices()[0]), "load": [round(v, 2) for v in os.getloadavg()]}


def jsonable(tree: Any) -> Any:
  """`tree` with numpy scalars and arrays as Python numbers and lists, keys as strings."""
  if isinstance(tree, dict):
    return {str(k): jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [jsonable(v) for v in tree]
  if isinstance(tree, (np.floating, np.integer)):
    return tree.item()
  if isinstance(tree, np.ndarray):
    return tree.tolist()
  return tree


def write_json(path: str, obj: Any) -> None:
  with open(path, "w") as fh:
    json.dump(jsonable(obj), fh, indent=1)


def read_json(path: str) -> Any:
  with open(path) as fh:
    return json.load(fh)
