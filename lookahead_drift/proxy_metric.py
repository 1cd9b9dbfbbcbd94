"""A fast sample-quality proxy: Fréchet distance and KID in a small classifier's feature space.

An Inception FID costs ~5 min per 2,000 images on a 2-core CPU; this costs seconds. The
feature net is a LeNet-style classifier (5×5 convs of 20 and 50 channels, max pooling, ReLU, a
256-d hidden layer) that no training config drifts in: its own architecture, seed and
training, frozen once trained, and its weights' SHA-256 goes into every score so numbers from
different nets are never compared. How well it agrees with Inception FID is measured in
experiments/fashion_mnist/recipe/README.md.

  proxy_metric.train(data_dir, out_path)        # ~7 min on one core
  scorer = proxy_metric.load(out_path)
  scores = scorer.score(samples_uint8, scorer.features(test_uint8))
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lookahead_drift import fid_kid
from lookahead_drift import input_pipeline
from lookahead_drift import progress as progress_lib


class ProxyNet(nn.Module):
  """LeNet-style classifier; `features` is the 256-d hidden layer the distances use."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, features_only: bool = False) -> jax.Array:
    pool = lambda h: nn.max_pool(h, (2, 2), strides=(2, 2))
    h = pool(nn.relu(nn.Conv(20, (5, 5))(x)))
    h = pool(nn.relu(nn.Conv(50, (5, 5))(h)))
    h = nn.relu(nn.Dense(256)(h.reshape(h.shape[0], -1)))
    return h if features_only else nn.Dense(self.num_classes)(h)


def _flat(params: Any) -> dict[str, np.ndarray]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def _sha256(flat: dict[str, np.ndarray]) -> str:
  """Digest of names, shapes and float32 bytes, in name order."""
  h = hashlib.sha256()
  for name in sorted(flat):
    value = np.ascontiguousarray(flat[name], np.float32)
    h.update(f"{name}:{value.shape}\n".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Random horizontal flips and shifts of up to 2 pixels (uint8 [B, 28, 28, 1])."""
  flip = rng.random(len(images)) < 0.5
  images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  dy, dx = rng.integers(0, 5, size=2)
  return padded[:, dy:dy + 28, dx:dx + 28]


def train(data_dir: str | None, out_path: str, *, seed: int = 1234, num_steps: int = 3000,
          batch_size: int = 128, learning_rate: float = 2e-3) -> dict[str, Any]:
  """Trains ProxyNet on the Fashion-MNIST train split, saves it (.npz) and returns its record
  (test accuracy, SHA-256). The seed is not any training config's."""
  data = dict(name="fashion_mnist", data_dir=data_dir, source="files")
  images, labels = input_pipeline.load_images({**data, "split": "train"})
  model = ProxyNet()
  params = model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(200, num_steps // 10),
                                                num_steps)
  optimizer = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  meter = progress_lib.Progress(num_steps)
  for i in range(1, num_steps + 1):
    idx = rng.integers(0, len(images), batch_size)
    x = input_pipeline.to_float(_augment(images[idx], rng))
    params, opt_state, loss = step(params, opt_state, x, labels[idx])
    if i % 500 == 0 or i == num_steps:
      meter.update(i)
      print(f"proxy net step {i}/{num_steps} loss {float(loss):.4f} {meter.rate_and_eta()}",
            flush=True)
  flat = _flat(params)
  test_images, test_labels = input_pipeline.load_images({**data, "split": "test"})
  scorer = Scorer(model, params, _sha256(flat), 0.0)
  accuracy = float(np.mean(scorer.classify(test_images) == test_labels))
  record = dict(sha256=scorer.sha256, test_accuracy=accuracy, seed=seed, num_steps=num_steps)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  np.savez(out_path, **{f"param:{k}": v for k, v in flat.items()},
           test_accuracy=accuracy, seed=seed, num_steps=num_steps)
  print(f"proxy net: test accuracy {accuracy:.4f}, sha256 {scorer.sha256[:16]}…, "
        f"saved to {out_path}", flush=True)
  return record


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A frozen ProxyNet: features, classes and the proxy scores of uint8 images."""
  model: ProxyNet
  params: Any
  sha256: str
  test_accuracy: float

  def _apply(self, images: np.ndarray, features_only: bool) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (28, 28, 1):
      raise ValueError(f"proxy net: expected uint8 images [N, 28, 28, 1], got "
                       f"{images.dtype} {images.shape}.")
    fn = _jitted(self.model, features_only)
    return np.concatenate([np.asarray(fn(self.params, input_pipeline.to_float(
        images[i:i + 1000]))) for i in range(0, len(images), 1000)])

  def features(self, images: np.ndarray) -> np.ndarray:
    """[N, 256] hidden-layer features (float32)."""
    return self._apply(images, True)

  def classify(self, images: np.ndarray) -> np.ndarray:
    """[N] predicted labels."""
    return self._apply(images, False).argmax(-1)

  def score(self, images: np.ndarray, reference_features: np.ndarray, *,
            kid_subsets: int = 100) -> dict[str, Any]:
    """Proxy FD and KID of `images` against reference features, with the net's digest."""
    feats = self.features(images)
    fd = fid_kid.fid_from_stats(fid_kid.stats_from_features(feats),
                                fid_kid.stats_from_features(reference_features))
    kid_mean, kid_std = fid_kid.kid(feats, reference_features, num_subsets=kid_subsets)
    return dict(proxy_fd=float(fd), proxy_kid=kid_mean, proxy_kid_std=kid_std,
                proxy_num_samples=len(images), proxy_num_reference=len(reference_features),
                proxy_sha256=self.sha256)


_JITTED: dict[tuple[int, bool], Any] = {}


def _jitted(model: ProxyNet, features_only: bool):
  key = (id(model), features_only)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(lambda p, x: model.apply(p, x, features_only=features_only))
  return _JITTED[key]


def load(path: str) -> Scorer:
  """The ProxyNet saved by `train`; ValueError if the file is not one."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No proxy net at {path!r}: train one with "
                            "`python experiments/fashion_mnist/recipe/train_proxy.py "
                            "--out=PATH`.")
  with open(path, "rb") as f:
    data = np.load(io.BytesIO(f.read()))
  flat = {k[len("param:"):]: data[k] for k in data.files if k.startswith("param:")}
  model = ProxyNet()
  template = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  expected = _flat(template)
  if set(flat) != set(expected) or any(flat[k].shape != expected[k].shape for k in flat):
    raise ValueError(f"{path!r} does not hold ProxyNet weights.")
  treedef = jax.tree_util.tree_structure(template)
  leaves = [jnp.asarray(flat[k]) for k in _flat(template)]  # same (flatten) order
  params = jax.tree_util.tree_unflatten(treedef, leaves)
  return Scorer(model, params, _sha256(flat), float(data["test_accuracy"]))
