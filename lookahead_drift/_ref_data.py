"""Small private readers of the raw data sets FID reference statistics are computed on.

Fashion-MNIST IDX `.gz` files (Debian's `dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist/) and the original CIFAR-10 archives (python or binary
version, as `.tar.gz` or extracted). Only numpy, gzip, tarfile and pickle: no TensorFlow.
"""

from __future__ import annotations

import gzip
import pathlib
import pickle
import tarfile

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def parse_idx_images(data: bytes, name: str = "IDX data") -> np.ndarray:
  """uint8 IDX (magic 0x00000803) bytes -> uint8 [N, H, W, 1]."""
  if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
    raise ValueError(f"{name} is not a uint8 3-D IDX image file (magic {data[:4].hex()})")
  n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
  if len(data) != 16 + n * h * w:
    raise ValueError(f"{name}: header says {n}x{h}x{w} images but holds {len(data) - 16} bytes")
  return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w, 1)


def read_idx_images(path: str | pathlib.Path) -> np.ndarray:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no IDX file at {path}")
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    return parse_idx_images(f.read(), str(path))


def fashion_mnist(data_dir: str | pathlib.Path | None = None, split: str = "train") -> np.ndarray:
  """Fashion-MNIST images of one split as uint8 [N, 28, 28, 1]."""
  if split not in _FASHION_MNIST_FILES:
    raise ValueError(f"split must be one of {tuple(_FASHION_MNIST_FILES)}, got {split!r}")
  data_dir = pathlib.Path(data_dir or FASHION_MNIST_DIR)
  for name in (_FASHION_MNIST_FILES[split] + ".gz", _FASHION_MNIST_FILES[split]):
    if (data_dir / name).is_file():
      return read_idx_images(data_dir / name)
  raise FileNotFoundError(
      f"no {_FASHION_MNIST_FILES[split]}[.gz] in {data_dir}: `apt-get install -y "
      "dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist/ (or pass --data_dir)")


def _cifar_python_batch(data: bytes, name: str) -> np.ndarray:
  batch = pickle.loads(data, encoding="bytes")  # The official archive's format.
  flat = np.asarray(batch[b"data"], np.uint8)
  return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _cifar_binary_batch(data: bytes, name: str) -> np.ndarray:
  if len(data) % 3073:
    raise ValueError(f"{name}: {len(data)} bytes is not a whole number of 3073-byte records")
  records = np.frombuffer(data, np.uint8).reshape(-1, 3073)
  return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # Byte 0 is the label.


def _cifar_files(path: pathlib.Path) -> dict[str, bytes]:
  """Basename -> contents of the CIFAR-10 train batch files in a directory or tar archive."""
  wanted = set(_CIFAR_TRAIN_BATCHES) | {b + ".bin" for b in _CIFAR_TRAIN_BATCHES}
  found = {}
  if path.is_dir():
    for p in path.rglob("data_batch_*"):
      if p.name in wanted:
        found[p.name] = p.read_bytes()
  elif tarfile.is_tarfile(path):
    with tarfile.open(path) as tar:
      for member in tar.getmembers():
        base = member.name.rsplit("/", 1)[-1]
        if member.isfile() and base in wanted:
          found[base] = tar.extractfile(member).read()
  return found


def cifar10_train(path: str | pathlib.Path) -> np.ndarray:
  """The 50k CIFAR-10 training images as uint8 [50000, 32, 32, 3], in batch order.

  `path`: `cifar-10-python.tar.gz` or `cifar-10-binary.tar.gz`, or a directory holding the
  extracted `data_batch_1..5` (python) or `data_batch_1..5.bin` (binary) files.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no CIFAR-10 data at {path}")
  files = _cifar_files(path)
  if all(b in files for b in _CIFAR_TRAIN_BATCHES):
    return np.concatenate([_cifar_python_batch(files[b], b) for b in _CIFAR_TRAIN_BATCHES])
  if all(b + ".bin" in files for b in _CIFAR_TRAIN_BATCHES):
    return np.concatenate([_cifar_binary_batch(files[b + ".bin"], b + ".bin")
                           for b in _CIFAR_TRAIN_BATCHES])
  raise ValueError(f"{path} holds neither data_batch_1..5 (python version) nor "
                   f"data_batch_1..5.bin (binary version) of CIFAR-10; found {sorted(files)}")
