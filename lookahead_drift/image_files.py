"""Reading the image data sets from disk: Fashion-MNIST's IDX files, CIFAR-10's archives (or
their extracted folders, python or binary batches) and prepared tfds data sets.

Each reader returns a whole split as (uint8 images [N, H, W, C], int32 labels [N]) and names
the file and the fix in its error; `input_pipeline.load_images` picks one and caches it.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from typing import Any

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_HOWTO = (
    "Install it with `apt-get install -y dataset-fashion-mnist` (files go to "
    f"{FASHION_MNIST_DIR}) or point data_config.data_dir at a folder holding the four "
    "original IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; uncompressed also accepted).")
_CIFAR_HOWTO = (
    "Put the original cifar-10-python.tar.gz or cifar-10-binary.tar.gz (or their extracted "
    "cifar-10-batches-py / cifar-10-batches-bin folders) in data_config.data_dir, or set "
    "data_config.source = 'tfds' to read a prepared tfds `cifar10`.")


def _open_maybe_gz(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f"Could not read {path!r} ({e}); the file looks damaged. "
                     + _FASHION_MNIST_HOWTO) from e


def _read_idx(path: str, expected_ndim: int) -> np.ndarray:
  """Parses an IDX file of unsigned bytes (magic 0x0000080N, big-endian int32 dims)."""
  data = _open_maybe_gz(path)
  if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != expected_ndim:
    raise ValueError(f"{path!r} is not an IDX uint8 file with {expected_ndim} dims "
                     f"(header {data[:4]!r}). " + _FASHION_MNIST_HOWTO)
  header = 4 + 4 * expected_ndim
  shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">i4"))
  if len(data) != header + int(np.prod(shape)):
    raise ValueError(f"{path!r} holds {len(data) - header} bytes of data but its header "
                     f"says shape {shape}; the file is truncated or damaged. "
                     + _FASHION_MNIST_HOWTO)
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_file(data_dir: str, stem: str) -> str:
  for name in (stem + ".gz", stem):
    if os.path.exists(os.path.join(data_dir, name)):
      return os.path.join(data_dir, name)
  raise FileNotFoundError(f"Expected Fashion-MNIST file {stem}.gz (or {stem}) in "
                          f"data_dir={data_dir!r}, not found. " + _FASHION_MNIST_HOWTO)


def load_fashion_mnist(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  prefix = {"train": "train", "test": "t10k"}[split]
  images = _read_idx(_find_file(data_dir, f"{prefix}-images-idx3-ubyte"), 3)
  labels = _read_idx(_find_file(data_dir, f"{prefix}-labels-idx1-ubyte"), 1)
  if len(images) != len(labels):
    raise ValueError(f"Fashion-MNIST {split} in {data_dir!r}: {len(images)} images but "
                     f"{len(labels)} labels. " + _FASHION_MNIST_HOWTO)
  return images[..., None], labels.astype(np.int32)


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles CIFAR batches (dicts, lists, numpy arrays) and refuses any other global."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                          "_reconstruct"),
              ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
              ("numpy", "ndarray"), ("numpy", "dtype"),
              ("_codecs", "encode")}  # Protocol-2 pickles written by Python 3 encode bytes.

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
    return super().find_class(module, name)


_CIFAR_PY_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_BIN_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                    "test": ["test_batch.bin"]}


def _parse_cifar_py(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    batch = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int32)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  except Exception as e:  # Any parse failure means a damaged or foreign file.
    raise ValueError(f"Could not parse CIFAR-10 python batch {where} ({e}). "
                     + _CIFAR_HOWTO) from e
  if len(images) != len(labels):
    raise ValueError(f"CIFAR-10 batch {where}: {len(images)} images, {len(labels)} labels.")
  return images, labels


def _parse_cifar_bin(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  if len(blob) % 3073:
    raise ValueError(f"CIFAR-10 binary batch {where} has {len(blob)} bytes, not a multiple "
                     "of 3073 (1 label byte + 3072 pixel bytes per record). " + _CIFAR_HOWTO)
  records = np.frombuffer(blob, np.uint8).reshape(-1, 3073)
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, records[:, 0].astype(np.int32)


def _read_cifar_members(source: str, names: list[str]) -> list[tuple[bytes, str]]:
  """Reads batch files by base name from an extracted folder or a .tar.gz archive."""
  if os.path.isdir(source):
    out = []
    for name in names:
      path = os.path.join(source, name)
      if not os.path.exists(path):
        raise FileNotFoundError(f"Expected CIFAR-10 batch file {path!r}, not found. "
                                + _CIFAR_HOWTO)
      with open(path, "rb") as f:
        out.append((f.read(), path))
    return out
  try:
    with tarfile.open(source, "r:*") as tar:
      members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
      out = []
      for name in names:
        if name not in members:
          raise ValueError(f"Archive {source!r} has no member {name!r}; expected the original "
                           "CIFAR-10 archive layout. " + _CIFAR_HOWTO)
        out.append((tar.extractfile(members[name]).read(), f"{source}:{name}"))
      return out
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ValueError(f"Could not read CIFAR-10 archive {source!r} ({e}); it looks damaged. "
                     + _CIFAR_HOWTO) from e


def load_cifar10_files(data_dir: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
  if not data_dir:
    raise ValueError("CIFAR-10 needs data_config.data_dir (or data_config.source='tfds'). "
                     + _CIFAR_HOWTO)
  candidates = [("py", "cifar-10-batches-py"), ("py", "cifar-10-python.tar.gz"),
                ("bin", "cifar-10-batches-bin"), ("bin", "cifar-10-binary.tar.gz")]
  for kind, name in candidates:
    source = os.path.join(data_dir, name)
    if os.path.exists(source):
      break
  else:
    # data_dir may itself be an archive or an extracted batch folder.
    source = data_dir
    if os.path.isdir(data_dir) and os.path.exists(os.path.join(data_dir, "test_batch")):
      kind = "py"
    elif os.path.isdir(data_dir) and os.path.exists(os.path.join(data_dir, "test_batch.bin")):
      kind = "bin"
    elif os.path.isfile(data_dir) and "binary" in os.path.basename(data_dir):
      kind = "bin"
    elif os.path.isfile(data_dir):
      kind = "py"
    else:
      raise FileNotFoundError(
          f"Expected one of {[n for _, n in candidates]} in data_dir={data_dir!r}, "
          "found none. " + _CIFAR_HOWTO)
  names = (_CIFAR_PY_FILES if kind == "py" else _CIFAR_BIN_FILES)[split]
  parse = _parse_cifar_py if kind == "py" else _parse_cifar_bin
  parts = [parse(blob, where) for blob, where in _read_cifar_members(source, names)]
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]).astype(np.int32))


def load_tfds(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a prepared tfds data set through `tfds.data_source` (no TensorFlow needed)."""
  import tensorflow_datasets as tfds  # Imported lazily: slow, and only this path needs it.
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:
    raise FileNotFoundError(
        f"Could not open a prepared tfds {name!r} split {split!r} (data_dir={data_dir!r}): "
        f"{e}. Prepare it with `tfds build {name}` on a machine that has TensorFlow, or use "
        "the original archive files with data_config.source='files'.") from e
  records = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  labels = np.asarray([r["label"] for r in records], np.int32)
  return images, labels
