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


# ----------------------------------------------------------------------------- coverage metrics


def test_knn_radii_match_brute_force():
  x = _rng(10).normal(size=(300, 2))
  d = cdist(x, x)
  np.fill_diagonal(d, np.inf)
  ref = np.sort(d, axis=1)[:, 2] ** 2  # 3rd nearest other point
  np.testing.assert_allclose(toy_metrics.knn_radii(x, k=3, chunk=64), ref, rtol=1e-12)


def test_manifold_coverage_on_constructed_points():
  # Reference: 0, 1, 2, 3, 10 on a line; k = 1 radii: 1, 1, 1, 1, 7.
  ref = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
  queries = np.array([[-1.0], [4.0], [-2.0], [-1.01], [17.0], [17.1]])  # boundary counts
  assert toy_metrics.manifold_coverage(queries, ref, k=1, chunk=2) == pytest.approx(3 / 6)


def test_precision_recall_near_one_for_one_distribution():
  from lookahead_drift import input_pipeline
  for name in input_pipeline.TOY_DATASETS:
    a = input_pipeline.sample_toy(name, 4000, [1, 0])
    b = input_pipeline.sample_toy(name, 4000, [2, 0])
    p, r = toy_metrics.precision_recall(a, b, k=3)
    assert 0.95 <= p <= 1.0 and 0.95 <= r <= 1.0, (name, p, r)


def test_precision_low_for_a_shifted_set_recall_low_when_modes_are_dropped():
  from lookahead_drift import input_pipeline
  real = input_pipeline.sample_toy("eight_gaussians", 4000, [3, 0])
  gen = input_pipeline.sample_toy("eight_gaussians", 4000, [4, 0])
  centers = input_pipeline.eight_gaussians_centers()
  nearest = np.argmin(cdist(gen, centers), axis=1)
  # Every mode moved outward by 1.2 (4.8 sigma): the same shape, in the wrong place.
  p, r = toy_metrics.precision_recall(gen + 0.4 * centers[nearest], real)
  assert p < 0.25 and r < 0.25, (p, r)  # only the tails of the shifted modes overlap
  kept = gen[np.isin(nearest, [0, 1, 2, 3])]  # 4 of 8 modes, every kept sample is realistic
  p, r = toy_metrics.precision_recall(kept, real)
  assert p > 0.95 and 0.4 < r < 0.55, (p, r)


def test_in_mode_share_exact_on_constructed_points():
  centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  sigma = 0.5  # balls of radius 1.5
  points = np.array([[0.0, 1.5],     # on the boundary of mode 0: inside
                     [1.0, 1.0],     # |.| = 1.414: mode 0
                     [10.0, -1.49],  # mode 1
                     [0.0, 8.0],     # 2 from mode 2: outside
                     [5.0, 5.0],     # far from all
                     [1.1, 1.1]])    # 1.556: outside
  overall, per_mode = toy_metrics.in_mode_share(points, centers, sigma)
  assert overall == pytest.approx(3 / 6)
  np.testing.assert_allclose(per_mode, [2 / 6, 1 / 6, 0.0])
  assert toy_metrics.in_mode_share(points, centers, sigma, num_sigma=4.1)[0] == pytest.approx(5 / 6)


def test_in_mode_share_of_the_data_is_the_gaussian_mass_within_three_sigma():
  from lookahead_drift import input_pipeline
  pts = input_pipeline.sample_toy("eight_gaussians", 20000, 11)
  overall, per_mode = toy_metrics.in_mode_share(pts, input_pipeline.eight_gaussians_centers(),
                                                input_pipeline.EIGHT_GAUSSIANS_STD)
  assert overall == pytest.approx(1 - np.exp(-4.5), abs=0.004)  # P(|N(0, I_2)| <= 3)
  np.testing.assert_allclose(per_mode, overall / 8, atol=0.01)
