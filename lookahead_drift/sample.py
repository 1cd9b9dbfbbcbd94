"""One-step sampling from a trained generator, and PNG pictures of samples.

  python -m lookahead_drift.sample --config=configs/toy2d.py --workdir=DIR \
      --num_samples=10000 --out=DIR/samples.npz

writes `samples` (float, 2-D data) or `images` (uint8 NHWC) to the .npz, and a PNG next to it.
"""

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

PyTree = Any


_GENERATORS: dict[str, tuple[Any, tuple[int, ...]]] = {}


def _generator(model_config: ml_collections.ConfigDict) -> tuple[Any, tuple[int, ...]]:
  """(jitted apply, noise shape) for a model config, built once per distinct config."""
  key = model_config.to_json()
  if key not in _GENERATORS:
    from lookahead_drift import models  # pylint: disable=g-import-not-at-top
    module, noise_shape = models.create_generator(model_config)
    _GENERATORS[key] = (jax.jit(module.apply), tuple(noise_shape))
  return _GENERATORS[key]


def generate(config: ml_collections.ConfigDict, params: PyTree, num: int,
             rng: jax.Array, *, labels: Any = None, alpha: float = 1.0,
             batch_size: int | None = None) -> np.ndarray:
  """`num` one-step samples of the generator in `config` with `params` (float32 numpy).

  Conditional models (config.model.num_classes > 0) take `labels` [num] (default 0, 1, 2, ...
  cycling); models conditioned on the guidance scale take `alpha` (1: no guidance).
  Generation runs in chunks of `batch_size` (default config.sample.batch_size) to bound memory.
  """
  apply, noise_shape = _generator(config.model)
  num_classes = config.model.get("num_classes", 0) or 0
  if num_classes:
    labels = np.arange(num) % num_classes if labels is None else np.asarray(labels)
    if labels.shape != (num,):
      raise ValueError(f"labels: expected [{num}] (one per sample), got {labels.shape}")
  use_alpha = config.model.get("alpha_conditioning", False)
  batch_size = batch_size or config.get("sample", {}).get("batch_size", 1024)
  out = []
  for i, start in enumerate(range(0, num, batch_size)):
    n = min(batch_size, num - start)
    noise = jax.random.normal(jax.random.fold_in(rng, i), (n, *noise_shape), jnp.float32)
    kw = {}
    if num_classes:
      kw["labels"] = jnp.asarray(labels[start:start + n], jnp.int32)
    if use_alpha:
      kw["alpha"] = jnp.full((n,), alpha, jnp.float32)
    out.append(np.asarray(apply(params, noise, **kw), np.float32))
  return np.concatenate(out, 0) if out else np.zeros((0,), np.float32)


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


def save_npz(path: str, samples: np.ndarray) -> None:
  """`images` uint8 NHWC for image data, `samples` float32 for vectors."""
  if samples.ndim == 2:
    np.savez(path, samples=samples.astype(np.float32))
  else:
    np.savez(path, images=to_uint8(samples))


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from lookahead_drift import train  # pylint: disable=g-import-not-at-top
  del argv
  from lookahead_drift import cli  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS
  config = flag_values.config
  if flag_values.num_samples < 1:
    raise cli.UserError(f"--num_samples={flag_values.num_samples}: expected >= 1.")
  state = train.restore_for_eval(config, flag_values.workdir)
  params = state.ema_params if flag_values.use_ema else state.params
  samples = generate(config, params, flag_values.num_samples,
                     jax.random.PRNGKey(flag_values.seed))
  out = flag_values.out or os.path.join(flag_values.workdir, "samples.npz")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  save_npz(out, samples)
  png = os.path.splitext(out)[0] + ".png"
  save_samples_png(png, samples)
  print(f"Wrote {samples.shape[0]} samples from step {int(state.step)} "
        f"({'EMA' if flag_values.use_ema else 'raw'} params) to {out} and {png}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
  flags.DEFINE_integer("num_samples", 10_000, "How many samples to generate.")
  flags.DEFINE_string("out", None, "Output .npz path (default: WORKDIR/samples.npz).")
  flags.DEFINE_bool("use_ema", True, "Use the EMA parameters (else the raw ones).")
  flags.DEFINE_integer("seed", 0, "Noise seed.")
  flags.mark_flags_as_required(["config", "workdir"])
  from lookahead_drift import cli  # pylint: disable=g-import-not-at-top
  cli.run_absl(main)
