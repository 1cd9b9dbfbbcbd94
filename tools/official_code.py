"""Loading Python files that are not part of this package: the official drifting code's
`drift_loss.py` (read from a checkout the user names, never copied here) and an older copy of
our own loss for before/after benchmarks. Used by tools/benchmark.py and tools/compare_official.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import types
from typing import Any

import jax.numpy as jnp


def load_module(name: str, path: str) -> Any:
  """The module in the file `path`, registered as sys.modules[name]."""
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"no Python file at {path!r}")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while it is executed
  spec.loader.exec_module(module)
  return module


def load_drift_before(path: str) -> Any:
  """An earlier version of our loss, as "drift_before": one file (the monolithic drift.py of
  before the split) or a copy of the lookahead_drift/drift package folder (e.g. `git archive
  REV lookahead_drift/drift | tar -x -C /tmp/before`), whose imports of itself are renamed in
  a temporary copy so that it loads beside the current package."""
  if os.path.isfile(path):
    return load_module("drift_before", path)
  if not os.path.isfile(os.path.join(path, "__init__.py")):
    raise FileNotFoundError(f"no Python file or package folder at {path!r}")
  root = tempfile.mkdtemp(prefix="drift_before_")
  shutil.copytree(path, os.path.join(root, "drift_before"))
  for name in os.listdir(os.path.join(root, "drift_before")):
    if name.endswith(".py"):
      file = os.path.join(root, "drift_before", name)
      with open(file, encoding="utf-8") as f:
        text = re.sub(r"\blookahead_drift\.drift\b", "drift_before", f.read())
      with open(file, "w", encoding="utf-8") as f:
        f.write(text)
  sys.path.insert(0, root)
  try:
    return importlib.import_module("drift_before")
  finally:
    sys.path.remove(root)


class _JnpWithOldClip:
  """jax.numpy, but clip takes the a_min/a_max keywords that jax 0.10 removed and that the
  official code uses; they mean min/max. Nothing else differs."""

  def __getattr__(self, name: str) -> Any:
    return getattr(jnp, name)

  @staticmethod
  def clip(x: Any, a_min: Any = None, a_max: Any = None) -> Any:
    return jnp.clip(x, min=a_min, max=a_max)


def load_drift_loss(folder: str) -> Any:
  """The official `drift_loss` module from `folder`, with its two shims: its own `jnp` takes
  clip's old keywords (jax's global module is left alone), and einops, which it imports but
  `drift_loss` does not use, need not be installed."""
  if importlib.util.find_spec("einops") is None:
    sys.modules.setdefault("einops", types.SimpleNamespace(repeat=None))
  module = load_module("official_drift_loss", os.path.join(folder, "drift_loss.py"))
  module.jnp = _JnpWithOldClip()
  return module
