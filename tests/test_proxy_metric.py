"""The proxy metric's net: trains, saves with its digest, loads the same, scores sensibly."""

import numpy as np
import pytest

from lookahead_drift import input_pipeline
from lookahead_drift import proxy_metric


@pytest.fixture
def trained(stripes_dir, tmp_path):
  path = str(tmp_path / "proxy.npz")
  record = proxy_metric.train(str(stripes_dir), path, num_steps=60, batch_size=16,
                              learning_rate=3e-3)
  return path, record, stripes_dir


def _split(data_dir, split):
  return input_pipeline.load_images(dict(name="fashion_mnist", data_dir=str(data_dir),
                                         split=split))


def test_train_load_round_trip(trained):
  path, record, data_dir = trained
  assert record["test_accuracy"] > 0.9  # horizontal vs vertical stripes
  scorer = proxy_metric.load(path)
  assert scorer.sha256 == record["sha256"]
  assert scorer.test_accuracy == pytest.approx(record["test_accuracy"])
  test, labels = _split(data_dir, "test")
  np.testing.assert_array_equal(scorer.classify(test), proxy_metric.load(path).classify(test))
  assert scorer.features(test).shape == (40, 256)
  assert np.mean(scorer.classify(test) == labels) == pytest.approx(record["test_accuracy"])


def test_scores_order_near_and_far_sets(trained):
  path, _, data_dir = trained
  scorer = proxy_metric.load(path)
  train, _ = _split(data_dir, "train")
  test, _ = _split(data_dir, "test")
  reference = scorer.features(train)
  same = scorer.score(train, reference, kid_subsets=5)
  real = scorer.score(test, reference, kid_subsets=5)
  blank = scorer.score(np.full_like(test, 128), reference, kid_subsets=5)
  assert same["proxy_fd"] == pytest.approx(0.0, abs=1e-4)
  assert 0 < real["proxy_fd"] < blank["proxy_fd"]
  assert real["proxy_kid"] < blank["proxy_kid"]
  assert same["proxy_sha256"] == scorer.sha256 and same["proxy_num_samples"] == 64


def test_digest_follows_the_weights(trained, tmp_path):
  path, record, _ = trained
  data = dict(np.load(path))
  key = next(k for k in data if k.startswith("param:"))
  data[key] = data[key] + 1e-3
  changed = str(tmp_path / "changed.npz")
  np.savez(changed, **data)
  assert proxy_metric.load(changed).sha256 != record["sha256"]


def test_bad_inputs(trained, tmp_path):
  path, _, _ = trained
  with pytest.raises(FileNotFoundError, match="No proxy net"):
    proxy_metric.load(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match="does not hold ProxyNet weights"):
    proxy_metric.load(str(tmp_path / "other.npz"))
  with pytest.raises(ValueError, match="uint8 images"):
    proxy_metric.load(path).features(np.zeros((2, 28, 28, 1), np.float32))
