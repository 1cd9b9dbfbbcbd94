"""Small data files in the real formats, shared by the tests (helpers, not tests)."""

import gzip
import os

import ml_collections
import numpy as np


def write_idx(path, array, compress=True):
  """Writes uint8 `array` as an IDX file, the Fashion-MNIST format (magic 0x0000080N,
  big-endian dims), gzipped unless compress is False."""
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  blob = header + np.ascontiguousarray(array, np.uint8).tobytes()
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(blob)


def fashion_files(directory, n_train=37, n_test=11, compress=True):
  """A Fashion-MNIST folder of random images and labels; returns {prefix: (images, labels)}."""
  rng = np.random.default_rng(0)
  arrays = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images,
              compress)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels,
              compress)
    arrays[prefix] = (images, labels)
  return arrays


def data_config(**kwargs):
  """config.data for input_pipeline, split "train" unless given."""
  return ml_collections.ConfigDict({"split": "train", **kwargs})
