"""Training the ConvEncoder that the image configs drift in (`python -m
lookahead_drift.train_encoder` runs `train_and_save`).

`config.objective` picks what the encoder learns: "classifier" (default; linear head on the
pooled last stage, cross-entropy on the labels, evaluated by test accuracy) or "mae" (masked
autoencoder: random patches are zeroed and a small decoder reconstructs them from the last
stage only, evaluated by masked-pixel MSE with a fixed mask seed). Both share one optimizer,
schedule, jitted step and logging loop; an objective supplies only the model, loss and eval.

Writes DIR/encoder/{params/, config.json} (read by `encoder.create_feature_fn` with
kind="conv", checkpoint=DIR/encoder). A classifier is also kept whole in DIR/classifier
(`load_classifier`), to judge the classes of generated samples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from lookahead_drift import encoder as encoder_lib
from lookahead_drift import input_pipeline
from lookahead_drift import progress as progress_lib

OBJECTIVES = ("classifier", "mae")
_MAE_DEFAULTS = dict(patch_size=4, mask_ratio=0.6, eval_mask_seed=0)


class Classifier(nn.Module):
  """ConvEncoder, global average pool of its last stage, linear head."""

  widths: Sequence[int]
  blocks_per_stage: int
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = encoder_lib.ConvEncoder(self.widths, self.blocks_per_stage, name="encoder")(x)
    return nn.Dense(self.num_classes, name="head")(features[-1].mean(axis=(1, 2)))


# ----------------------------------------------------------------------------- MAE


def check_patch_size(h: int, w: int, patch: int) -> None:
  """ValueError unless patch x patch tiles cover an h x w image exactly."""
  if patch <= 0 or h % patch or w % patch:
    raise ValueError(f"config.mae.patch_size={patch} must divide the image size {h}x{w}.")


def random_patch_mask(key: jax.Array, batch: int, h: int, w: int, patch: int,
                      ratio: float) -> jax.Array:
  """[B, H, W, 1] bool, True on exactly round(ratio * num_patches) random patches per image.

  Patches are the non-overlapping patch x patch tiles; H and W must be multiples of patch.
  """
  check_patch_size(h, w, patch)
  gh, gw = h // patch, w // patch
  num_masked = round(ratio * gh * gw)
  # Ranks of i.i.d. uniforms are a uniform random permutation: the lowest num_masked ranks
  # give an exact count per image.
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, gh * gw)), axis=1), axis=1)
  grid = (ranks < num_masked).reshape(batch, gh, 1, gw, 1)
  return jnp.broadcast_to(grid, (batch, gh, patch, gw, patch)).reshape(batch, h, w, 1)


def masked_squared_error(prediction: jax.Array, target: jax.Array, mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
  """Per image: (sum of squared errors over masked pixels, number of masked values), [B] each."""
  weight = jnp.broadcast_to(mask, target.shape).astype(jnp.float32)
  sq = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)) * weight
  return sq.sum(axis=(1, 2, 3)), weight.sum(axis=(1, 2, 3))


def masked_mse(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over masked pixels (all channels) only; mask is [B, H, W, 1] bool."""
  sq, count = masked_squared_error(prediction, target, mask)
  return sq.sum() / jnp.maximum(count.sum(), 1.0)


class MaeDecoder(nn.Module):
  """Conv + nearest x2 upsampling from the last stage back to the input size, C outputs."""

  widths: Sequence[int]  # Encoder widths; the decoder walks them in reverse.
  out_shape: tuple[int, int, int]  # (H, W, C) of the images.

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    def conv_norm_act(y, width):
      y = nn.Conv(width, (3, 3))(y)
      return nn.silu(nn.GroupNorm(num_groups=math.gcd(width, 8))(y))

    height, width, channels = self.out_shape
    h = conv_norm_act(h, self.widths[-1])
    for stage_width in reversed(self.widths[:-1]):
      h = conv_norm_act(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2), stage_width)
    if h.shape[1:3] != (height, width):  # e.g. 4 stages: 28->14->7->4, back 4->8->16->32.
      h = jax.image.resize(h, (h.shape[0], height, width, h.shape[-1]), "nearest")
    return nn.Conv(channels, (3, 3))(h)


class MaskedAutoencoder(nn.Module):
  """Zeroes masked pixels, encodes with ConvEncoder, decodes from the last stage only.

  Decoding from the coarsest map alone (no skips) forces the encoder to carry the content.
  """

  widths: Sequence[int]
  blocks_per_stage: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    visible = jnp.where(mask, 0.0, x)
    features = encoder_lib.ConvEncoder(self.widths, self.blocks_per_stage,
                                       name="encoder")(visible)
    return MaeDecoder(tuple(self.widths), tuple(x.shape[1:]), name="decoder")(features[-1])


# ----------------------------------------------------------------------------- objectives


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a training objective supplies to the shared loop.

  init(key, images) -> params; loss(params, batch, key) -> (loss, {metric: value});
  evaluate(params, images, labels) -> {record key: value}; describe(results) -> log line.
  """

  name: str
  init: Callable[..., Any]
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  evaluate: Callable[..., dict[str, float]]
  describe: Callable[[dict[str, float]], str]


def objective_name(config: Any) -> str:
  """config.objective ("classifier" when absent); raises ValueError for anything else."""
  name = config.get("objective", None) or "classifier"
  if name not in OBJECTIVES:
    raise ValueError(f"config.objective={name!r}; expected one of {list(OBJECTIVES)}.")
  return name


def mae_settings(config: Any) -> dict[str, Any]:
  """config.mae with defaults (patch_size 4, mask_ratio 0.6, eval_mask_seed 0), checked."""
  given = config.get("mae", None)
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given or {})
  unknown = set(given) - set(_MAE_DEFAULTS)
  if unknown:
    raise ValueError(f"config.mae has unknown fields {sorted(unknown)}; expected "
                     f"{sorted(_MAE_DEFAULTS)}.")
  settings = {**_MAE_DEFAULTS, **given}
  if not 0.0 < float(settings["mask_ratio"]) <= 1.0:
    raise ValueError(f"config.mae.mask_ratio={settings['mask_ratio']!r}; expected in (0, 1].")
  if int(settings["patch_size"]) <= 0:
    raise ValueError(f"config.mae.patch_size={settings['patch_size']!r}; expected > 0.")
  return settings


def _padded_batches(images: np.ndarray, batch_size: int):
  """Yields (index, float batch padded to batch_size, number of real rows)."""
  for index, start in enumerate(range(0, len(images), batch_size)):
    chunk = input_pipeline.to_float(images[start:start + batch_size])
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]),
                                              chunk.dtype)])
    yield index, chunk, n


def classifier_accuracy(model: Classifier, params: Any, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> float:
  """Top-1 accuracy over a whole split (the last partial batch is padded, then dropped)."""
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply(p, x), axis=-1))
  correct = 0
  for index, chunk, n in _padded_batches(images, batch_size):
    start = index * batch_size
    correct += int((np.asarray(predict(params, chunk))[:n] == labels[start:start + n]).sum())
  return correct / len(images)


def mae_masked_mse(model: MaskedAutoencoder, params: Any, images: np.ndarray, batch_size: int,
                 patch: int, ratio: float, seed: int) -> float:
  """Masked-pixel MSE over a whole split; batch i's mask comes from fold_in(key(seed), i)."""
  key = jax.random.key(seed)

  @jax.jit
  def per_image(p, x, index):
    mask = random_patch_mask(jax.random.fold_in(key, index), *x.shape[:3], patch, ratio)
    return masked_squared_error(model.apply(p, x, mask), x, mask)

  total, count = 0.0, 0.0
  for index, chunk, n in _padded_batches(images, batch_size):
    sq, weight = per_image(params, chunk, index)
    total += float(np.asarray(sq)[:n].sum())
    count += float(np.asarray(weight)[:n].sum())
  return total / count


def _classifier_objective(config: Any) -> Objective:
  model = Classifier(tuple(config.encoder.widths), int(config.encoder.blocks_per_stage),
                     int(config.num_classes))

  def loss(params, batch, key):
    del key
    logits = model.apply(params, batch["image"])
    value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return value, {"train acc": (jnp.argmax(logits, -1) == batch["label"]).mean()}

  def run_eval(params, images, labels):
    return {"eval_accuracy": classifier_accuracy(model, params, images, labels,
                                      int(config.eval_batch_size))}

  return Objective(
      "classifier", lambda key, images: model.init(key, images), loss, run_eval,
      lambda r: f"accuracy {r['eval_accuracy']:.4f}")


def _mae_objective(config: Any) -> Objective:
  settings = mae_settings(config)
  patch, ratio = int(settings["patch_size"]), float(settings["mask_ratio"])
  model = MaskedAutoencoder(tuple(config.encoder.widths), int(config.encoder.blocks_per_stage))

  def loss(params, batch, key):
    images = batch["image"]
    mask = random_patch_mask(key, *images.shape[:3], patch, ratio)
    return masked_mse(model.apply(params, images, mask), images, mask), {}

  def init(key, images):
    check_patch_size(*images.shape[1:3], patch)
    return model.init(key, images, jnp.zeros((*images.shape[:3], 1), bool))

  def run_eval(params, images, labels):
    del labels
    return {"eval_mae_mse": mae_masked_mse(model, params, images, int(config.eval_batch_size),
                                         patch, ratio, int(settings["eval_mask_seed"]))}

  return Objective(
      "mae", init, loss, run_eval,
      lambda r: (f"masked-pixel MSE {r['eval_mae_mse']:.4f} (patch {patch}, mask ratio "
                 f"{ratio}, mask seed {settings['eval_mask_seed']})"))


def make_objective(config: Any) -> Objective:
  """The Objective for config.objective; ValueError for an unknown one."""
  name = objective_name(config)
  return _classifier_objective(config) if name == "classifier" else _mae_objective(config)


# ----------------------------------------------------------------------------- training


def train_and_save(config: Any, workdir: str) -> dict[str, Any]:
  """Trains per `config`, saves to workdir/encoder and returns the saved record (a dict)."""
  objective = make_objective(config)  # Validates the objective before loading anything.
  if not 0 <= config.warmup_steps < config.num_steps:  # optax's cosine needs decay steps > 0.
    raise ValueError(f"config.warmup_steps={config.warmup_steps} must be >= 0 and less than "
                     f"config.num_steps={config.num_steps}.")
  data = input_pipeline.create_dataset(config.data, seed=config.seed)
  first = next(data)
  image_shape = tuple(int(s) for s in first["image"].shape[1:])
  root_key = jax.random.key(config.seed)
  params = jax.jit(objective.init)(root_key, first["image"])
  step_key = jax.random.fold_in(root_key, 1)  # Per-step randomness (MAE masks).
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                                config.warmup_steps, config.num_steps)
  optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, batch, step):
    key = jax.random.fold_in(step_key, step)
    (loss, metrics), grads = jax.value_and_grad(objective.loss, has_aux=True)(
        params, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

  batch, sums = first, {}
  meter = progress_lib.Progress(config.num_steps)
  for step in range(1, config.num_steps + 1):
    params, opt_state, metrics = train_step(params, opt_state, batch, step)
    for name, value in metrics.items():
      sums[name] = sums.get(name, 0.0) + float(value)
    if step % config.log_every == 0 or step == config.num_steps:
      n = config.log_every if step % config.log_every == 0 else step % config.log_every
      meter.update(step)
      shown = "  ".join(f"{name} {total / n:.4f}" for name, total in sums.items())
      print(f"step {step}/{config.num_steps}  {shown}  {meter.rate_and_eta()}", flush=True)
      sums = {}
    batch = next(data)

  eval_config = config.data.to_dict()
  eval_config["split"] = config.eval_split
  images, labels = input_pipeline.load_images(eval_config)
  results = objective.evaluate(params, images, labels)
  print(f"{config.eval_split} {objective.describe(results)} on {len(images)} images",
        flush=True)

  record = dict(widths=list(config.encoder.widths),
                blocks_per_stage=int(config.encoder.blocks_per_stage),
                image_shape=list(image_shape), dataset=config.data.name,
                objective=objective.name, num_steps=int(config.num_steps),
                seed=int(config.seed), eval_split=config.eval_split, **results,
                train_config=config.to_dict())
  directory = encoder_lib.save_encoder(os.path.join(workdir, "encoder"),
                                       {"params": params["params"]["encoder"]}, record)
  if objective.name == "classifier":  # whole model: it also judges samples' classes
    encoder_lib.save_encoder(os.path.join(workdir, "classifier"), params,
                             {**record, "num_classes": int(config.num_classes)})
  print(f"Saved encoder to {directory} (use encoder.kind='conv', "
        f"encoder.checkpoint='{directory}')", flush=True)
  return record


def load_classifier(directory: str) -> Callable[[np.ndarray], np.ndarray]:
  """The classifier that `train_and_save` kept in DIR/classifier, as uint8 images -> labels."""
  path = os.path.join(os.path.abspath(directory), "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No classifier at {directory!r} (train_encoder with objective "
                            "'classifier' writes WORKDIR/classifier).")
  with open(path) as f:
    record = json.load(f)
  model = Classifier(tuple(record["widths"]), int(record["blocks_per_stage"]),
                     int(record["num_classes"]))
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, *record["image_shape"]), jnp.float32))
  params = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"), abstract)
  predict = jax.jit(lambda x: jnp.argmax(model.apply(params, x), axis=-1))

  def classify(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float32) / 127.5 - 1.0
    return np.concatenate([np.asarray(predict(x[i:i + 1000])) for i in range(0, len(x), 1000)])

  return classify
