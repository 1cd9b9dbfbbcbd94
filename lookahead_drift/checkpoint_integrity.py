"""Checksums of a train state's arrays, keyed by each array's path in the state.

`checkpoint.save` stores them beside the state and `checkpoint.restore` recomputes them on
the arrays it returns: a path key ("params/params/Dense_0/kernel") names the array that
changed, and holds whichever fields or order the state is restored into.
"""

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
# The train-state fields in the order of checkpoints written before checksums were keyed by
# path (they were a list, one per leaf in this order): read to restore those checkpoints.
_LEGACY_ORDER = ("step", "params", "ema_params", "opt_state", "rng")


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_paths(tree: PyTree) -> list[str]:
  """Each leaf's "a/b/0" path, in leaf order; attributes and dict keys read alike, so a
  dataclass state and the dict orbax restores it as have the same paths."""
  return ["/".join(_key_name(k) for k in path)
          for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


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


def fingerprint(tree: PyTree) -> tuple[dict[str, int], bool]:
  """({leaf path: checksum}, whether every float leaf is finite), computed on device."""
  sums, finite = jax.device_get(_fingerprint(tree))
  return dict(zip(leaf_paths(tree), (int(s) for s in sums))), bool(finite)


def stored_checksums(integrity: dict[str, Any], state: PyTree) -> dict[str, int]:
  """{leaf path: checksum} saved with `state` (the whole restored state). Checkpoints written
  before the path keys hold a list in the leaf order of the fields in _LEGACY_ORDER."""
  stored = integrity.get("checksums") or {}
  if isinstance(stored, dict):
    return stored
  field = (lambda k: state[k]) if isinstance(state, dict) else (lambda k: getattr(state, k))
  paths = ["/".join(filter(None, (name, p)))
           for name in _LEGACY_ORDER for p in leaf_paths(field(name))]
  return dict(zip(paths, stored))
