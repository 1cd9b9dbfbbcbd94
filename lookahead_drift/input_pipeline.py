"""Deterministic, resumable host-side input pipelines (toy 2-D, Fashion-MNIST, CIFAR-10).

The batch at step t is a pure function of (seed, t, process_index): the global batch is
slice [t*B, (t+1)*B) of an endless stream of per-epoch permutations (images) or a sample drawn
from a generator seeded by (seed, t) (toy data), and process p takes rows
[p*B_local, (p+1)*B_local) of it. Restarting at `start_step` therefore replays the same stream,
and the processes' shares are disjoint and together form the global batch.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from lookahead_drift import config_util

TOY_DATASETS = ("eight_gaussians", "checkerboard", "swiss_roll")
IMAGE_DATASETS = ("fashion_mnist", "cifar10")
DATASETS = TOY_DATASETS + IMAGE_DATASETS
# Classes of each data set: the toy labels are the modes / filled squares (swiss roll: one).
NUM_CLASSES = {"eight_gaussians": 8, "checkerboard": 8, "swiss_roll": 1, "fashion_mnist": 10,
               "cifar10": 10}

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


# ----------------------------------------------------------------------------- toy data


EIGHT_GAUSSIANS_RADIUS = 3.0  # the eight modes sit on a circle of this radius
EIGHT_GAUSSIANS_STD = 0.25  # isotropic standard deviation of each mode


def eight_gaussians_centers() -> np.ndarray:
  """[8, 2] float64 mode centres of "eight_gaussians", mode i at angle i·π/4."""
  angles = np.arange(8) * (np.pi / 4)
  return EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def sample_toy(name: str, n: int, rng: np.random.Generator | int) -> np.ndarray:
  """Draws n float32 points [n, 2] from a toy 2-D distribution (scale about [-4, 4])."""
  points, _ = _sample_toy_with_labels(name, n, rng)
  return points


def _sample_toy_with_labels(name: str, n: int, rng: np.random.Generator | int,
                            labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Toy points and labels: the mode index for eight_gaussians, the square for checkerboard.

  `labels` [n]: draw each point from that class instead of drawing the classes.
  """
  rng = np.random.default_rng(rng)
  if name == "eight_gaussians":
    labels = rng.integers(0, 8, size=n) if labels is None else labels
    points = (eight_gaussians_centers()[labels]
              + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2)))
  elif name == "checkerboard":
    # 4x4 board on [-4, 4]^2, the 8 cells with (row + col) even are filled.
    cell = rng.integers(0, 8, size=n) if labels is None else labels
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)
    points = np.stack([col, row], axis=-1) * 2.0 - 4.0 + 2.0 * rng.random((n, 2))
    labels = cell
  elif name == "swiss_roll":
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) / 3.5
    points += 0.1 * rng.standard_normal((n, 2))
    labels = np.zeros(n, np.int64)
  else:
    raise ValueError(f"Unknown toy data set name={name!r}; expected one of {TOY_DATASETS}.")
  return points.astype(np.float32), labels.astype(np.int32)


# ----------------------------------------------------------------------------- file readers


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


def _load_fashion_mnist(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
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


def _load_cifar10_files(data_dir: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
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


def _load_tfds(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
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


@functools.lru_cache(maxsize=4)
def _load_images_cached(name: str, split: str, data_dir: str | None,
                        source: str) -> tuple[np.ndarray, np.ndarray]:
  if source == "tfds":
    return _load_tfds(name, split, data_dir)
  if source != "files":
    raise ValueError(f"data_config.source={source!r}; expected 'files' or 'tfds'.")
  if name == "fashion_mnist":
    return _load_fashion_mnist(data_dir or FASHION_MNIST_DIR, split)
  return _load_cifar10_files(data_dir, split)


def load_images(data_config: Any) -> tuple[np.ndarray, np.ndarray]:
  """Whole split as (uint8 images [N, H, W, C], int32 labels [N]); cached per process."""
  name = config_util.field(data_config, "name")
  if name not in IMAGE_DATASETS:
    raise ValueError(f"load_images: data_config.name={name!r}; expected one of "
                     f"{IMAGE_DATASETS}.")
  split = config_util.field(data_config, "split", "train")
  if split not in ("train", "test"):
    raise ValueError(f"data_config.split={split!r}; expected 'train' or 'test'.")
  images, labels = _load_images_cached(name, split, config_util.field(data_config, "data_dir"),
                                       config_util.field(data_config, "source", "files"))
  images.setflags(write=False)  # Shared by the cache: keep callers from mutating it.
  labels.setflags(write=False)
  return images, labels


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


# ----------------------------------------------------------------------------- batching


def _global_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
  """Rows [step*B, (step+1)*B) of the concatenation of per-epoch permutations."""
  positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):  # At most a couple of epochs per batch.
    perm = _epoch_permutation(seed, int(epoch), num_examples)
    mask = epochs == epoch
    out[mask] = perm[offsets[mask]]
  return out


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def create_dataset(data_config: Any, *, seed: int, process_index: int = 0,
                   process_count: int = 1, start_step: int = 0) -> Iterator[dict]:
  """Endless per-process batches {"image": float32 [B_local, ...], "label": int32 [B_local]}.

  Toy data yields "image" as points [B_local, 2] and "label" as the mode (eight_gaussians),
  the filled square (checkerboard) or 0 (swiss_roll). Images are NHWC in [-1, 1]. Optional
  `data_config.random_flip` flips images left-right, decided per example from (seed, step).
  """
  name = config_util.field(data_config, "name")
  if name not in DATASETS:
    raise ValueError(f"data_config.name={name!r}; expected one of {DATASETS}.")
  batch_size = int(config_util.field(data_config, "batch_size"))
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"data_config.batch_size={batch_size} must be positive and divisible "
                     f"by process_count={process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  local = batch_size // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  if name in TOY_DATASETS:
    return _toy_stream(name, seed, batch_size, rows, start_step)
  images, labels = load_images(data_config)
  return _image_stream(images, labels, seed, batch_size, rows, start_step,
                       bool(config_util.field(data_config, "random_flip", False)))


def _toy_stream(name: str, seed: int, batch_size: int, rows: slice,
                step: int) -> Iterator[dict]:
  while True:
    # The whole global batch is drawn (cheap) so that it does not depend on process_count.
    points, labels = _sample_toy_with_labels(name, batch_size, [seed, step, 0x70])
    yield {"image": points[rows], "label": labels[rows]}
    step += 1


def _image_stream(images: np.ndarray, labels: np.ndarray, seed: int, batch_size: int,
                  rows: slice, step: int, random_flip: bool) -> Iterator[dict]:
  while True:
    idx = _global_indices(seed, step, batch_size, len(images))[rows]
    batch = to_float(images[idx])
    if random_flip:
      flip = np.random.default_rng([seed, step, 0xF1]).random(batch_size)[rows] < 0.5
      batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
    yield {"image": batch, "label": labels[idx]}
    step += 1


# ----------------------------------------------------------------------------- per-class batches


def create_class_dataset(data_config: Any, *, labels_per_step: int, pos_per_label: int,
                         neg_per_label: int, seed: int, process_index: int = 0,
                         process_count: int = 1, start_step: int = 0) -> Iterator[dict]:
  """Endless per-process class-conditional batches, a pure function of (seed, step):

    "label"     int32 [C_local]: distinct classes (every class each step when C = classes);
    "image"     [C_local, pos_per_label, ...]: real samples of each label (the positives);
    "neg_image" [C_local, neg_per_label, ...]: real samples of any class (guidance negatives).

  The labels of a step are split over processes (C_local = C / process_count). Positives are
  drawn without replacement within a class and step, negatives uniformly from the whole set.
  """
  name = config_util.field(data_config, "name")
  if name not in DATASETS:
    raise ValueError(f"data_config.name={name!r}; expected one of {DATASETS}.")
  num_classes = NUM_CLASSES[name]
  if not 1 <= labels_per_step <= num_classes:
    raise ValueError(f"labels_per_step={labels_per_step}: {name} has {num_classes} classes; "
                     f"expected 1..{num_classes}.")
  if labels_per_step % process_count:
    raise ValueError(f"labels_per_step={labels_per_step} must be divisible by "
                     f"process_count={process_count}.")
  if pos_per_label < 1 or neg_per_label < 0 or start_step < 0:
    raise ValueError(f"pos_per_label={pos_per_label} (>= 1), neg_per_label={neg_per_label} "
                     f"(>= 0), start_step={start_step} (>= 0).")
  local = labels_per_step // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  flip = bool(config_util.field(data_config, "random_flip", False))
  if name in TOY_DATASETS:
    def draw(labels, key):
      return _sample_toy_with_labels(name, labels.size, key, labels.reshape(-1))[0].reshape(
          labels.shape + (2,))
  else:
    images, all_labels = load_images(data_config)
    by_class = [np.flatnonzero(all_labels == c) for c in range(num_classes)]
    if min(len(i) for i in by_class) < pos_per_label:
      raise ValueError(f"pos_per_label={pos_per_label}: the smallest class of {name} has only "
                       f"{min(len(i) for i in by_class)} examples.")
  step = start_step
  while True:
    rng = np.random.default_rng([seed, step, 0xC1A55])
    labels = (np.arange(num_classes) if labels_per_step == num_classes
              else np.sort(rng.choice(num_classes, labels_per_step, replace=False)))
    if name in TOY_DATASETS:  # cheap: the whole step is drawn, then this process's rows
      pos = draw(np.repeat(labels[:, None], pos_per_label, 1), [seed, step, 0xC2])[rows]
      neg = draw(rng.integers(0, num_classes, (labels_per_step, neg_per_label)),
                 [seed, step, 0xC3])[rows]
      labels = labels[rows]
    else:
      labels = labels[rows]
      # Each class draws from its own stream, so a label's positives do not depend on which
      # other labels (or processes) share the step.
      pos_idx = np.stack([by_class[c][np.random.default_rng([seed, step, 0xC2, c]).choice(
          len(by_class[c]), pos_per_label, replace=False)] for c in labels])
      neg_idx = np.random.default_rng([seed, step, 0xC3]).integers(
          0, len(images), (labels_per_step, neg_per_label))[rows]
      pos, neg = to_float(images[pos_idx]), to_float(images[neg_idx])
      if flip:  # drawn per label / for the whole step: independent of the process count
        pos = _flip(pos, np.stack([np.random.default_rng([seed, step, 0xF2, c]).random(
            pos_per_label) for c in labels]))
        neg = _flip(neg, np.random.default_rng([seed, step, 0xF3]).random(
            (labels_per_step, neg_per_label))[rows])
    yield {"label": labels.astype(np.int32), "image": pos, "neg_image": neg}
    step += 1


def _flip(batch: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Left-right flips of the NHWC images [..., H, W, C] whose uniform draw u [...] is < 1/2."""
  return np.where((u < 0.5)[..., None, None, None], batch[..., :, ::-1, :], batch)
