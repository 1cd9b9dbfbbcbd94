"""Deterministic, resumable host-side input pipelines (toy 2-D, Fashion-MNIST, CIFAR-10).

The batch at step t is a pure function of (seed, t, process_index): the global batch is
slice [t*B, (t+1)*B) of an endless stream of per-epoch permutations (images) or a sample drawn
from a generator seeded by (seed, t) (toy data), and process p takes rows
[p*B_local, (p+1)*B_local) of it. Restarting at `start_step` therefore replays the same stream,
and the processes' shares are disjoint and together form the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from lookahead_drift import config_util
from lookahead_drift import image_files

TOY_DATASETS = ("eight_gaussians", "checkerboard", "swiss_roll")
IMAGE_DATASETS = ("fashion_mnist", "cifar10")
DATASETS = TOY_DATASETS + IMAGE_DATASETS
# Classes of each data set: the toy labels are the modes / filled squares (swiss roll: one).
NUM_CLASSES = {"eight_gaussians": 8, "checkerboard": 8, "swiss_roll": 1, "fashion_mnist": 10,
               "cifar10": 10}


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


# ----------------------------------------------------------------------------- image splits


@functools.lru_cache(maxsize=4)
def _load_images_cached(name: str, split: str, data_dir: str | None,
                        source: str) -> tuple[np.ndarray, np.ndarray]:
  if source == "tfds":
    return image_files.load_tfds(name, split, data_dir)
  if source != "files":
    raise ValueError(f"data_config.source={source!r}; expected 'files' or 'tfds'.")
  if name == "fashion_mnist":
    return image_files.load_fashion_mnist(data_dir or image_files.FASHION_MNIST_DIR, split)
  return image_files.load_cifar10_files(data_dir, split)


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
  A generator: the arguments are checked (and images loaded) at the first batch.
  """
  name = config_util.field(data_config, "name")
  _check_class_batches(name, labels_per_step, pos_per_label, neg_per_label, process_count,
                       start_step)
  local = labels_per_step // process_count
  shape = _ClassBatches(NUM_CLASSES[name], labels_per_step, pos_per_label, neg_per_label,
                        slice(process_index * local, (process_index + 1) * local))
  if name in TOY_DATASETS:
    yield from _toy_class_stream(name, shape, seed, start_step)
  else:
    yield from _image_class_stream(data_config, shape, seed, start_step)


@dataclasses.dataclass(frozen=True)
class _ClassBatches:
  """The shape of a step's class-conditional batch, and this process's labels in it."""
  num_classes: int
  labels_per_step: int
  pos_per_label: int
  neg_per_label: int
  rows: slice  # this process's labels of the step


def _check_class_batches(name: str, labels_per_step: int, pos_per_label: int,
                         neg_per_label: int, process_count: int, start_step: int) -> None:
  """A ValueError naming the argument unless create_class_dataset can serve them."""
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


def _step_labels(seed: int, step: int, shape: _ClassBatches
                 ) -> tuple[np.ndarray, np.random.Generator]:
  """The whole step's sorted labels, and the generator they were drawn from (toy negatives
  draw on from it)."""
  rng = np.random.default_rng([seed, step, 0xC1A55])
  labels = (np.arange(shape.num_classes) if shape.labels_per_step == shape.num_classes
            else np.sort(rng.choice(shape.num_classes, shape.labels_per_step, replace=False)))
  return labels, rng


def _toy_class_stream(name: str, shape: _ClassBatches, seed: int, step: int
                      ) -> Iterator[dict]:
  """create_class_dataset's batches of a toy data set, from `step` on."""
  def draw(labels, key):
    return _sample_toy_with_labels(name, labels.size, key, labels.reshape(-1))[0].reshape(
        labels.shape + (2,))

  while True:
    labels, rng = _step_labels(seed, step, shape)
    # Cheap: the whole step is drawn, then this process's rows.
    pos = draw(np.repeat(labels[:, None], shape.pos_per_label, 1), [seed, step, 0xC2])
    neg = draw(rng.integers(0, shape.num_classes, (shape.labels_per_step, shape.neg_per_label)),
               [seed, step, 0xC3])
    yield {"label": labels[shape.rows].astype(np.int32), "image": pos[shape.rows],
           "neg_image": neg[shape.rows]}
    step += 1


def _image_class_stream(data_config: Any, shape: _ClassBatches, seed: int, step: int
                        ) -> Iterator[dict]:
  """create_class_dataset's batches of an image data set, from `step` on (loads it first)."""
  name = config_util.field(data_config, "name")
  flip = bool(config_util.field(data_config, "random_flip", False))
  images, all_labels = load_images(data_config)
  by_class = [np.flatnonzero(all_labels == c) for c in range(shape.num_classes)]
  if min(len(i) for i in by_class) < shape.pos_per_label:
    raise ValueError(f"pos_per_label={shape.pos_per_label}: the smallest class of {name} has "
                     f"only {min(len(i) for i in by_class)} examples.")
  while True:
    labels = _step_labels(seed, step, shape)[0][shape.rows]
    # Each class draws from its own stream, so a label's positives do not depend on which
    # other labels (or processes) share the step.
    pos_idx = np.stack([by_class[c][np.random.default_rng([seed, step, 0xC2, c]).choice(
        len(by_class[c]), shape.pos_per_label, replace=False)] for c in labels])
    neg_idx = np.random.default_rng([seed, step, 0xC3]).integers(
        0, len(images), (shape.labels_per_step, shape.neg_per_label))[shape.rows]
    pos, neg = to_float(images[pos_idx]), to_float(images[neg_idx])
    if flip:  # drawn per label / for the whole step: independent of the process count
      pos = _flip(pos, np.stack([np.random.default_rng([seed, step, 0xF2, c]).random(
          shape.pos_per_label) for c in labels]))
      neg = _flip(neg, np.random.default_rng([seed, step, 0xF3]).random(
          (shape.labels_per_step, shape.neg_per_label))[shape.rows])
    yield {"label": labels.astype(np.int32), "image": pos, "neg_image": neg}
    step += 1


def _flip(batch: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Left-right flips of the NHWC images [..., H, W, C] whose uniform draw u [...] is < 1/2."""
  return np.where((u < 0.5)[..., None, None, None], batch[..., :, ::-1, :], batch)
