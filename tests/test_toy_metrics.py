"""toy_metrics against independent float64 numpy/scipy computations and closed forms."""

import jax
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist

from lookahead_drift import toy_metrics


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_energy_distance_matches_scipy_in_1d():
  rng = _rng(0)
  u = rng.normal(0.0, 1.0, 300)
  v = rng.normal(0.4, 1.5, 200)  # different sizes
  got = toy_metrics.energy_distance(u[:, None].astype(np.float32), v[:, None].astype(np.float32))
  np.testing.assert_allclose(float(got), stats.energy_distance(u, v), rtol=1e-4)


def test_energy_distance_matches_float64_reference_in_2d():
  rng = _rng(1)
  x = rng.normal(size=(250, 2))
  y = rng.standard_t(3, size=(180, 2)) + np.array([0.3, -0.2])
  ref = np.sqrt(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())
  got = jax.jit(toy_metrics.energy_distance)(x.astype(np.float32), y.astype(np.float32))
  np.testing.assert_allclose(float(got), ref, rtol=1e-4)


def test_metrics_zero_for_identical_sets_positive_and_symmetric_otherwise():
  rng = _rng(2)
  x = rng.normal(size=(128, 2)).astype(np.float32)
  y = (rng.normal(size=(128, 2)) + 0.5).astype(np.float32)
  dirs = toy_metrics.random_directions(jax.random.PRNGKey(0), 16, 2)
  assert float(toy_metrics.energy_distance(x, x)) < 1e-3  # sqrt of float32 round-off
  assert float(toy_metrics.sliced_wasserstein(x, x[::-1], dirs)) == 0.0  # order is irrelevant
  ed_xy = float(toy_metrics.energy_distance(x, y))
  assert ed_xy > 0.1
  np.testing.assert_allclose(ed_xy, float(toy_metrics.energy_distance(y, x)), rtol=1e-5)
  sw_xy = float(toy_metrics.sliced_wasserstein(x, y, dirs))
  assert sw_xy > 0.1
  np.testing.assert_allclose(sw_xy, float(toy_metrics.sliced_wasserstein(y, x, dirs)), rtol=1e-6)


def test_wasserstein_1d_matches_scipy_w1_and_sorted_w2():
  rng = _rng(3)
  u, v = rng.normal(size=500), rng.exponential(size=500)
  np.testing.assert_allclose(
      float(toy_metrics.wasserstein_1d(u.astype(np.float32), v.astype(np.float32), p=1)),
      stats.wasserstein_distance(u, v), rtol=1e-5)
  w2_ref = np.sqrt(np.mean((np.sort(u) - np.sort(v)) ** 2))
  w2 = float(toy_metrics.wasserstein_1d(u.astype(np.float32), v.astype(np.float32)))
  np.testing.assert_allclose(w2, w2_ref, rtol=1e-5)
  assert w2 >= stats.wasserstein_distance(u, v)  # W1 <= W2


def test_sliced_wasserstein_on_an_axis_is_the_1d_distance():
  rng = _rng(4)
  x, y = rng.normal(size=(300, 2)), rng.uniform(-1, 2, size=(300, 2))
  dirs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  got = float(toy_metrics.sliced_wasserstein(x.astype(np.float32), y.astype(np.float32), dirs))
  per_axis = [np.mean((np.sort(x[:, i]) - np.sort(y[:, i])) ** 2) for i in range(2)]
  np.testing.assert_allclose(got, np.sqrt(np.mean(per_axis)), rtol=1e-5)


def test_sliced_wasserstein_closed_form_for_shifted_and_scaled_gaussians():
  # X ~ N(0, I_d), Y = m + s X ~ N(m, s² I): each projection θ gives N(0, 1) vs N(θ·m, s²), whose
  # W2² is (θ·m)² + (1 − s)². Averaged over θ uniform on the sphere: SW2² = ‖m‖²/d + (1 − s)².
  d, n = 2, 4000
  rng = _rng(5)
  x = rng.normal(size=(n, d))
  m, s = np.array([1.5, -0.5]), 1.3
  y = m + s * x
  # Evenly spaced angles: the average of (θ·m)² over them is exactly ‖m‖²/2.
  phi = np.arange(90) * np.pi / 90
  dirs = np.stack([np.cos(phi), np.sin(phi)], 1).astype(np.float32)
  got = float(jax.jit(toy_metrics.sliced_wasserstein)(x.astype(np.float32),
                                                     y.astype(np.float32), dirs))
  # The same directions, float64, with y coupled to x: exact up to the finite sample.
  theta = np.asarray(dirs, np.float64)
  px, py = np.sort(x @ theta.T, 0), np.sort(y @ theta.T, 0)
  np.testing.assert_allclose(got, np.sqrt(np.mean((px - py) ** 2)), rtol=1e-4)
  # Closed form; 4000 samples leave about 1% sampling error.
  closed = np.sqrt(m @ m / d + (1 - s) ** 2)
  np.testing.assert_allclose(got, closed, rtol=0.03)
  # A pure shift gives the per-direction projection of m exactly.
  got_shift = float(toy_metrics.sliced_wasserstein(x.astype(np.float32),
                                                   (x + m).astype(np.float32), dirs))
  np.testing.assert_allclose(got_shift, np.sqrt(np.mean((theta @ m) ** 2)), rtol=1e-4)


def test_random_directions_are_unit_vectors():
  dirs = np.asarray(toy_metrics.random_directions(jax.random.PRNGKey(2), 64, 3))
  assert dirs.shape == (64, 3)
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, rtol=1e-6)


def test_metrics_vmap_over_runs():
  rng = _rng(6)
  x = rng.normal(size=(3, 64, 2)).astype(np.float32)
  y = rng.normal(size=(3, 64, 2)).astype(np.float32) + 1
  dirs = toy_metrics.random_directions(jax.random.PRNGKey(3), 8, 2)
  ed = jax.vmap(toy_metrics.energy_distance)(x, y)
  sw = jax.vmap(toy_metrics.sliced_wasserstein, in_axes=(0, 0, None))(x, y, dirs)
  for i in range(3):
    np.testing.assert_allclose(ed[i], toy_metrics.energy_distance(x[i], y[i]), rtol=1e-5)
    np.testing.assert_allclose(sw[i], toy_metrics.sliced_wasserstein(x[i], y[i], dirs), rtol=1e-5)


def test_bad_shapes_raise_value_errors():
  x = np.zeros((10, 2), np.float32)
  with pytest.raises(ValueError, match="dimension"):
    toy_metrics.energy_distance(x, np.zeros((10, 3), np.float32))
  with pytest.raises(ValueError, match="shape"):
    toy_metrics.energy_distance(x[:, 0], x)
  dirs = np.ones((4, 2), np.float32) / np.sqrt(2)
  with pytest.raises(ValueError, match="same number of samples"):
    toy_metrics.sliced_wasserstein(x, x[:5], dirs)
  with pytest.raises(ValueError, match="directions"):
    toy_metrics.sliced_wasserstein(x, x, dirs[:, :1])
  with pytest.raises(ValueError, match="equal size"):
    toy_metrics.wasserstein_1d(x[:, 0], x[:5, 0])
