"""experiments/fashion_mnist/fit.py's nearest-neighbour distances, and the class grid it draws."""

import importlib.util
import pathlib

import numpy as np

from lookahead_drift import pictures

PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "fashion_mnist" / "fit.py"


def load_fit():
  spec = importlib.util.spec_from_file_location("fashion_mnist_fit", PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_nearest_distances_match_brute_force():
  fit = load_fit()
  rng = np.random.default_rng(0)
  bank = rng.integers(0, 256, (37, 5, 4, 1), dtype=np.uint8)
  queries = np.concatenate([bank[:3], rng.integers(0, 256, (8, 5, 4, 1), dtype=np.uint8)])
  got = fit.nearest_distances(queries, bank, chunk=4)
  q = queries.reshape(len(queries), -1) / 255.0
  b = bank.reshape(len(bank), -1) / 255.0
  want = np.sqrt(((q[:, None] - b[None]) ** 2).sum(-1)).min(1)
  np.testing.assert_allclose(got, want, atol=1e-3)
  assert np.all(got[:3] < 1e-3)  # copies of bank images are found at distance 0


def test_class_grid_puts_each_class_on_its_row():
  images = np.stack([np.full((2, 3, 1), 10 * k, np.uint8) for k in range(10)] * 2)
  labels = np.array(list(range(10)) * 2)
  labels[labels == 4] = 3  # class 4 gets no sample: its row stays blank
  grid = pictures.class_rows(images, labels, per_row=3, classes=range(10))
  assert grid.shape == (10 * 3 + 1, 3 * 4 + 1, 1)
  rows = [grid[1 + r * 3:1 + r * 3 + 2, 1:4, 0] for r in range(10)]
  assert np.all(rows[7] == 70) and np.all(rows[4] == 0)
  # Row 3 holds samples 3, 4 (relabelled 3) and 13, in order: values 30, 40, 30.
  assert [int(grid[1 + 3 * 3, 1 + c * 4, 0]) for c in range(3)] == [30, 40, 30]


def test_label_agreement_counts_samples_classified_as_their_label():
  fit = load_fit()
  labels = np.array([0, 1, 2, 0, 1, 2])
  predicted = np.array([0, 1, 0, 0, 2, 2])
  got = fit.label_agreement(predicted, labels, 3)
  assert got["all"] == 4 / 6
  assert got["T-shirt/top"] == 1.0 and got["Trouser"] == 0.5 and got["Pullover"] == 0.5
