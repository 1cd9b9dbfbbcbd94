"""Sample-quality metrics for low-dimensional (toy 2-D) distributions, in plain jnp.

Both metrics compare two finite sample sets and are pure functions, so they jit and vmap:

    ed = energy_distance(x, y)                                  # scipy's convention
    sw = sliced_wasserstein(x, y, random_directions(key, 128, 2))  # sliced W2

They form all pairwise differences (energy distance) or sort projections (sliced W2) and are
meant for a few thousand points in a few dimensions, not for image features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_sets(x: Array, y: Array) -> None:
  if jnp.ndim(x) != 2 or jnp.ndim(y) != 2:
    raise ValueError(f"x and y must have shape [num_samples, dim], got {jnp.shape(x)} and "
                     f"{jnp.shape(y)}")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x has dimension {x.shape[1]} but y has {y.shape[1]}: both must match")


def _mean_distance(a: Array, b: Array) -> Array:
  """E‖a_i − b_j‖ over all pairs, zero self-pairs included (a V-statistic)."""
  # Explicit differences rather than ‖a‖² + ‖b‖² − 2a·b: no cancellation, fine in low dim.
  d = jnp.sqrt(jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1))
  return jnp.mean(d)


def energy_distance(x: Array, y: Array) -> Array:
  """sqrt(2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖) between the empirical distributions of x, y.

  x: [N, D], y: [M, D] (N and M may differ). Zero iff the two empirical distributions are equal;
  in 1-D it is scipy.stats.energy_distance. Two independent samples of one distribution give
  a positive value of order 1/sqrt(N): compare against that noise floor.
  """
  _check_sets(x, y)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  sq = 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)
  return jnp.sqrt(jnp.maximum(sq, 0.0))


def wasserstein_1d(u: Array, v: Array, p: float = 2.0) -> Array:
  """W_p between two 1-D empirical distributions of equal size: sorted samples are coupled."""
  if jnp.ndim(u) != 1 or jnp.shape(u) != jnp.shape(v):
    raise ValueError(f"u and v must be 1-D of equal size, got {jnp.shape(u)} and {jnp.shape(v)}")
  diff = jnp.abs(jnp.sort(u) - jnp.sort(v))
  return jnp.mean(diff**p) ** (1.0 / p)


def random_directions(key: Array, num: int, dim: int) -> Array:
  """`num` directions drawn uniformly on the unit sphere in R^dim, [num, dim]."""
  g = jax.random.normal(key, (num, dim), jnp.float32)
  return g / jnp.linalg.norm(g, axis=-1, keepdims=True)


def sliced_wasserstein(x: Array, y: Array, directions: Array, p: float = 2.0) -> Array:
  """Sliced W_p: (mean over directions θ of W_p(θ·X, θ·Y)^p)^(1/p).

  x, y: [N, D] with the same N (quantiles are matched by sorting). directions: [P, D] unit
  vectors (e.g. `random_directions`); keep them fixed to compare runs without extra noise.
  """
  _check_sets(x, y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and "
                     f"{y.shape[0]}")
  if jnp.ndim(directions) != 2 or directions.shape[1] != x.shape[1]:
    raise ValueError(f"directions must have shape [num, {x.shape[1]}], got "
                     f"{jnp.shape(directions)}")
  hp = jax.lax.Precision.HIGHEST
  px = jnp.sort(jnp.matmul(jnp.asarray(x, jnp.float32), directions.T, precision=hp), axis=0)
  py = jnp.sort(jnp.matmul(jnp.asarray(y, jnp.float32), directions.T, precision=hp), axis=0)
  return jnp.mean(jnp.abs(px - py) ** p) ** (1.0 / p)
