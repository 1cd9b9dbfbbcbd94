"""Argument checks of the public entry points, each naming the argument it rejects.

Traced values (a vmapped temperature) cannot be inspected and are left alone.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
  if not isinstance(value, jax.core.Tracer) and not np.all(np.asarray(value) > 0):
    raise ValueError(f"{name} must be > 0, got {value!r}")


def check_shape(name: str, arr: Any, shape: tuple[int | None, ...], what: str) -> None:
  """`arr` has len(shape) axes and matches every non-None entry of `shape`."""
  got = jnp.shape(arr)
  if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
    want = ", ".join("*" if s is None else str(s) for s in shape)
    raise ValueError(f"{name} must have shape [{want}] ({what}), got {got}")
