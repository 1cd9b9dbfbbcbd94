"""Samples as pictures and files: uint8 images, image grids, 2-D scatter plots, PNG and .npz.

Used by the train loop (a PNG per sample step), the sample binary and the studies.
"""

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] -> uint8 [0, 255] (clipped)."""
  return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*H, cols*W, C] picture with 1-pixel gaps."""
  n, h, w, c = images.shape
  cols = cols or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  return grid


def _scatter_panel(points: np.ndarray, lo: np.ndarray, hi: np.ndarray, size: int,
                   color: tuple[int, int, int], title: str) -> Image.Image:
  panel = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(panel)
  xy = (points[:, :2] - lo) / (hi - lo)
  for x, y in xy:
    if 0 <= x <= 1 and 0 <= y <= 1:
      px, py = 4 + x * (size - 8), 4 + (1 - y) * (size - 8)
      draw.ellipse((px - 1, py - 1, px + 1, py + 1), fill=color)
  draw.rectangle((0, 0, size - 1, size - 1), outline=(128, 128, 128))
  draw.text((8, 6), title, fill=(0, 0, 0))
  return panel


def save_scatter_png(path: str, generated: np.ndarray, real: np.ndarray | None = None,
                     size: int = 400) -> None:
  """Side-by-side scatter plots of 2-D generated (and real) samples on the same axes."""
  both = generated if real is None else np.concatenate([generated, real], 0)
  both = both[np.all(np.isfinite(both), axis=1)]
  lo, hi = np.percentile(both[:, :2], 0.5, axis=0), np.percentile(both[:, :2], 99.5, axis=0)
  pad = 0.1 * (hi - lo) + 1e-6
  lo, hi = lo - pad, hi + pad
  panels = [_scatter_panel(generated, lo, hi, size, (200, 40, 40), "generated")]
  if real is not None:
    panels.append(_scatter_panel(real, lo, hi, size, (30, 60, 200), "real"))
  canvas = Image.new("RGB", (size * len(panels), size), "white")
  for i, p in enumerate(panels):
    canvas.paste(p, (i * size, 0))
  canvas.save(path)


def save_samples_png(path: str, generated: np.ndarray, real: np.ndarray | None = None,
                     max_images: int = 64) -> None:
  """A scatter (2-D samples) or an image grid (generated, then real below) as PNG."""
  if generated.ndim == 2:
    save_scatter_png(path, generated, real)
    return
  grids = [image_grid(to_uint8(generated[:max_images]))]
  if real is not None:
    grids.append(image_grid(to_uint8(real[:max_images])))
  width = max(g.shape[1] for g in grids)
  grids = [np.pad(g, ((0, 4), (0, width - g.shape[1]), (0, 0)), constant_values=255)
           for g in grids]
  picture = np.concatenate(grids, 0)
  Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(path)


def save_npz(path: str, samples: np.ndarray, labels: np.ndarray | None = None) -> None:
  """`images` uint8 NHWC for image data, `samples` float32 for vectors; `labels` int32 for
  the classes they were generated for (conditional runs)."""
  extra = {} if labels is None else {"labels": np.asarray(labels, np.int32)}
  if samples.ndim == 2:
    np.savez(path, samples=samples.astype(np.float32), **extra)
  else:
    np.savez(path, images=to_uint8(samples), **extra)


def class_rows(images: np.ndarray, labels: np.ndarray, per_row: int = 10,
               classes: Any = None) -> np.ndarray:
  """uint8 grid of uint8 images, one row per class of `classes` (default: the labels present,
  ascending) holding its first `per_row` images; a class with fewer is padded with black."""
  rows = []
  for label in np.unique(labels) if classes is None else classes:
    picked = images[labels == label][:per_row]
    blank = np.zeros((per_row - len(picked), *images.shape[1:]), np.uint8)
    rows.append(np.concatenate([picked, blank]))
  return image_grid(np.concatenate(rows), cols=per_row)


def save_class_rows_png(path: str, images: np.ndarray, labels: np.ndarray,
                        per_row: int = 10, classes: Any = None) -> None:
  """`class_rows` of uint8 images as PNG, scaled 3x (28-pixel images are small at 1x)."""
  grid = class_rows(images, labels, per_row, classes)
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  picture.resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)