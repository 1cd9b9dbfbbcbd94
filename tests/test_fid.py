"""FID/KID maths, statistics files, data readers and input checks (no torch, no weights)."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from lookahead_drift import fid_kid

REPO = pathlib.Path(__file__).resolve().parents[1]


def _random_spd(rng, d, rank=None):
  a = rng.normal(size=(d, rank or 2 * d))
  return a @ a.T / a.shape[1]


def _reference_fid(mu1, s1, mu2, s2):
  # Independent route: tr (s1 s2)^½ = tr (s1^½ s2 s1^½)^½ with principal square roots.
  r = scipy.linalg.sqrtm(s1)
  inner = scipy.linalg.sqrtm(r @ s2 @ r)
  return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(inner).real


@pytest.mark.parametrize("method", fid_kid.FID_METHODS)
def test_frechet_distance_matches_independent_computation(method):
  rng = np.random.default_rng(0)
  d = 24
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_spd(rng, d), 3 * _random_spd(rng, d)
  got = fid_kid.frechet_distance(mu1, s1, mu2, s2, method=method)
  np.testing.assert_allclose(got, _reference_fid(mu1, s1, mu2, s2), rtol=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(1)
  a, b = rng.uniform(0.1, 4, 10), rng.uniform(0.1, 4, 10)
  mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  for method in fid_kid.FID_METHODS:
    got = fid_kid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_methods_agree_on_rank_deficient_covariances():
  # Fewer samples than dimensions, as with small evaluation sets.
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(10, 40)), rng.normal(1.0, 2.0, size=(12, 40))
  a, b = fid_kid.stats_from_features(x), fid_kid.stats_from_features(y)
  eigh = fid_kid.fid_from_stats(a, b, method="eigh")
  sqrtm = fid_kid.fid_from_stats(a, b, method="sqrtm")
  np.testing.assert_allclose(eigh, sqrtm, rtol=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
  rng = np.random.default_rng(3)
  feats = rng.gamma(2.0, size=(300, 64))
  s = fid_kid.stats_from_features(feats)
  assert abs(fid_kid.fid_from_stats(s, s)) < 1e-9 * np.trace(s.sigma)
  shifted = fid_kid.stats_from_features(feats + 0.5)
  np.testing.assert_allclose(fid_kid.fid_from_stats(s, shifted), 64 * 0.25, rtol=1e-9)


def test_streaming_stats_match_numpy_in_float64():
  rng = np.random.default_rng(4)
  feats = (rng.normal(size=(517, 16)) + 1e4).astype(np.float32)  # Large offset on purpose.
  acc = fid_kid.StatsAccumulator()
  for start, stop in ((0, 1), (1, 200), (200, 200), (200, 517)):
    acc.update(feats[start:stop])
  s = acc.result("abc", "tf1")
  f64 = feats.astype(np.float64)
  assert s.count == 517 and s.mu.dtype == np.float64
  np.testing.assert_allclose(s.mu, f64.mean(0), rtol=1e-14)
  np.testing.assert_allclose(s.sigma, np.cov(f64, rowvar=False), rtol=1e-9, atol=1e-12)


def _reference_kid(x, y):
  # Unbiased MMD² with k(a, b) = (a·b/d + 1)³, by explicit pairs.
  d, m = x.shape[1], len(x)
  k = lambda a, b: (a @ b / d + 1) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return (xx + yy) / (m * (m - 1)) - 2 * xy / m**2


def test_kid_matches_independent_float64_computation():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(20, 8)).astype(np.float32)
  y = rng.normal(0.3, 1.2, size=(20, 8)).astype(np.float32)
  # Subsets of all 20 samples are permutations, which MMD² does not see: std must be 0.
  mean, std = fid_kid.kid(x, y, num_subsets=5, max_subset_size=50)
  np.testing.assert_allclose(mean, _reference_kid(x.astype(np.float64), y.astype(np.float64)),
                             rtol=1e-10)
  assert std < 1e-12


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
  same, same_std = fid_kid.kid(x, y, num_subsets=20, max_subset_size=100)
  diff, _ = fid_kid.kid(x, y + 0.5, num_subsets=20, max_subset_size=100)
  assert abs(same) < 3 * same_std + 1e-3
  assert diff > 10 * abs(same) and diff > 0.01


def test_stats_roundtrip_and_compatibility(tmp_path):
  rng = np.random.default_rng(7)
  s = fid_kid.stats_from_features(rng.normal(size=(30, 5)), "sha-a", "tf1")
  fid_kid.save_stats(tmp_path / "s.npz", s)
  t = fid_kid.load_stats(tmp_path / "s.npz")
  assert (t.count, t.weights_sha256, t.resize) == (30, "sha-a", "tf1")
  np.testing.assert_array_equal(t.sigma, s.sigma)
  other = fid_kid.Stats(s.mu, s.sigma, 30, "sha-b", "tf1")
  with pytest.raises(ValueError, match="weights_sha256"):
    fid_kid.fid_from_stats(s, other)
  with pytest.raises(ValueError, match="resize"):
    fid_kid.fid_from_stats(s, fid_kid.Stats(s.mu, s.sigma, 30, "sha-a", "half_pixel"))


def test_cli_on_statistics_files(tmp_path):
  rng = np.random.default_rng(8)
  a = fid_kid.stats_from_features(rng.normal(size=(50, 6)))
  b = fid_kid.stats_from_features(rng.normal(0.2, 1.0, size=(60, 6)))
  fid_kid.save_stats(tmp_path / "a.npz", a)
  fid_kid.save_stats(tmp_path / "b.npz", b)
  # The documented command line (absl flags), in a process of its own.
  proc = subprocess.run(
      [sys.executable, "-m", "lookahead_drift.fid", str(tmp_path / "a.npz"),
       str(tmp_path / "b.npz"), "--fid_method", "sqrtm"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join(
          p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)))
  assert proc.returncode == 0, proc.stderr[-2000:]
  last = proc.stdout.strip().splitlines()[-1]
  name, value = last.split()
  assert name == "FID"
  np.testing.assert_allclose(float(value), _reference_fid(a.mu, a.sigma, b.mu, b.sigma),
                             rtol=1e-5)


def test_bad_inputs_raise_clear_errors(tmp_path):
  rng = np.random.default_rng(9)
  with pytest.raises(ValueError, match="same dimension"):
    fid_kid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="sigma1"):
    fid_kid.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="method"):
    fid_kid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3), method="svd")
  with pytest.raises(ValueError, match="at least 2"):
    fid_kid.stats_from_features(rng.normal(size=(1, 4)))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    fid_kid.kid(rng.normal(size=(5,)), rng.normal(size=(5, 1)))
  with pytest.raises(ValueError, match="at least 2"):
    fid_kid.kid(rng.normal(size=(1, 3)), rng.normal(size=(5, 3)))
  with pytest.raises(ValueError, match="at least 2"):
    fid_kid.StatsAccumulator().result()
  np.savez(tmp_path / "nothing.npz", pixels=np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="neither an 'images'"):
    fid_kid.run([str(tmp_path / "nothing.npz"), str(tmp_path / "nothing.npz")])
  bad = {"float.npz": np.zeros((4, 8, 8, 3), np.float32),
         "rank.npz": np.zeros((4, 8, 8), np.uint8),
         "one.npz": np.zeros((1, 8, 8, 3), np.uint8)}
  for name, images in bad.items():
    np.savez(tmp_path / name, images=images)
  with pytest.raises(ValueError, match="uint8"):
    fid_kid.run([str(tmp_path / "float.npz"), str(tmp_path / "rank.npz")])
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    fid_kid.run([str(tmp_path / "rank.npz"), str(tmp_path / "float.npz")])
  with pytest.raises(ValueError, match="at least 2 images"):
    fid_kid.run([str(tmp_path / "one.npz"), str(tmp_path / "one.npz")])
  with pytest.raises(ValueError, match="two inputs"):
    fid_kid.run([str(tmp_path / "one.npz")])
  with pytest.raises(ValueError, match="--out"):
    fid_kid.run([], ref="fashion_mnist")


NAN, EYE3 = float("nan"), np.eye(3)
BAD_STATS = {
    "nan_mu": (np.array([NAN, 0, 0]), EYE3, 10, "mu has 1 non-finite value(s)"),
    "inf_sigma": (np.zeros(3), np.diag([1.0, np.inf, 1.0]), 10,
                  "sigma has 1 non-finite value(s)"),
    "minus_identity": (np.zeros(3), -EYE3, 10, "sigma is not positive semi-definite"),
    "indefinite": (np.zeros(3), np.array([[1.0, 2, 0], [2, 1, 0], [0, 0, 1]]), 10,
                   "sigma is not positive semi-definite (smallest eigenvalue -1"),
    "asymmetric": (np.zeros(3), np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]), 10,
                   "sigma is not symmetric"),
    "count_0": (np.zeros(3), EYE3, 0, "count=0: expected an integer >= 2"),
    "count_nan": (np.zeros(3), EYE3, NAN, "count=nan: expected an integer >= 2"),
    "count_text": (np.zeros(3), EYE3, "many", "count='many': expected an integer >= 2"),
}


@pytest.mark.parametrize("name", sorted(BAD_STATS))
def test_statistics_files_are_checked_on_load_naming_the_file(tmp_path, name):
  mu, sigma, count, expected = BAD_STATS[name]
  path = tmp_path / f"{name}.npz"
  np.savez(path, mu=mu, sigma=sigma, count=count)
  good = tmp_path / "good.npz"
  np.savez(good, mu=np.zeros(3), sigma=EYE3, count=10)
  with pytest.raises(ValueError) as error:
    fid_kid.load_stats(path)
  assert str(error.value).startswith(f"{path}: ") and expected in str(error.value), error.value
  with pytest.raises(ValueError, match=re.escape(str(path))):
    fid_kid.run([str(good), str(path)])


def test_statistics_within_round_off_of_a_covariance_load(tmp_path):
  rng = np.random.default_rng(3)
  few = fid_kid.stats_from_features(rng.normal(size=(4, 40)) * 1e3)  # rank 3 of 40
  feats = rng.normal(size=(100, 64)).astype(np.float32)
  float32 = fid_kid.Stats(feats.mean(0), np.cov(feats, rowvar=False, dtype=np.float32), 100)
  for name, stats in (("few", few), ("float32", float32)):
    fid_kid.save_stats(tmp_path / f"{name}.npz", stats)
    loaded = fid_kid.load_stats(tmp_path / f"{name}.npz")
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)


def test_statistics_dimension_is_checked_before_any_inception_work(tmp_path):
  fid_kid.save_stats(tmp_path / "s6.npz", fid_kid.Stats(np.zeros(6), np.eye(6), 10))
  fid_kid.save_stats(tmp_path / "s5.npz", fid_kid.Stats(np.zeros(5), np.eye(5), 10))
  np.savez(tmp_path / "images.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
  no_network = lambda: pytest.fail("the Inception network was built")
  with pytest.raises(ValueError, match=f"{tmp_path}/s6.npz holds 6-dimensional statistics, "
                     "but images give 2048-dimensional"):
    fid_kid.compare([str(tmp_path / "images.npz"), str(tmp_path / "s6.npz")], no_network)
  with pytest.raises(ValueError, match=f"statistics of {tmp_path}/s6.npz and {tmp_path}/s5.npz "
                     "have different dimensions: 6 and 5"):
    fid_kid.compare([str(tmp_path / "s6.npz"), str(tmp_path / "s5.npz")], no_network)


class _CountingExtractor:
  """Stands in for inception.FeatureExtractor: mean pixel as a 1-d feature, counts images."""

  def __init__(self, weights_sha256="ab" * 32, resize="tf1"):
    self.weights_sha256, self.resize, self.seen = weights_sha256, resize, 0

  def __call__(self, images, progress=False):
    self.seen += len(images)
    return images.reshape(len(images), -1).mean(1, keepdims=True).astype(np.float32)


def test_dataset_features_are_computed_once_and_keyed_by_network_and_count(tmp_path,
                                                                          monkeypatch):
  images = np.random.default_rng(0).integers(0, 256, (12, 4, 4, 1), dtype=np.uint8)
  monkeypatch.setattr(fid_kid, "_reference_images",
                      lambda name, data_dir, split, max_images=None: images[:max_images])
  extractor = _CountingExtractor()
  first = fid_kid.dataset_features("fake", "test", extractor, cache_dir=tmp_path)
  again = fid_kid.dataset_features("fake", "test", extractor, cache_dir=tmp_path)
  assert extractor.seen == 12  # the second call read the cache
  np.testing.assert_array_equal(first, again)
  np.testing.assert_allclose(first[:, 0], images.reshape(12, -1).mean(1), rtol=1e-6)
  # Another network, another resize or another image count never reads those features.
  for other, max_images in ((_CountingExtractor(weights_sha256="cd" * 32), None),
                            (_CountingExtractor(resize="half_pixel"), None),
                            (_CountingExtractor(), 5)):
    feats = fid_kid.dataset_features("fake", "test", other, cache_dir=tmp_path,
                                     max_images=max_images)
    assert other.seen == len(feats) == (max_images or 12)
  assert not list(tmp_path.glob("*.tmp.npz"))  # written atomically
  uncached = _CountingExtractor()
  fid_kid.dataset_features("fake", "test", uncached, cache_dir=None)
  assert uncached.seen == 12
