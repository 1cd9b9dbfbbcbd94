"""Loading Python files that are not part of this package: the official drifting code's
`drift_loss.py` (read from a checkout the user names, never copied here) and an older copy of
our own loss for before/after benchmarks. Used by tools/benchmark.py and tools/compare_official.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
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
