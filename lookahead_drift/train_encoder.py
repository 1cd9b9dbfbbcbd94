"""Trains a ConvEncoder as a classifier and saves it as a feature space for the drifting loss.

python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist.py --workdir=DIR

Writes DIR/encoder/{params/, config.json} (read by `encoder.create_feature_fn` with
kind="conv", checkpoint=DIR/encoder). Only the encoder is kept; the linear head is dropped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from lookahead_drift import encoder as encoder_lib
from lookahead_drift import input_pipeline


class Classifier(nn.Module):
  """ConvEncoder, global average pool of its last stage, linear head."""

  widths: Sequence[int]
  blocks_per_stage: int
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = encoder_lib.ConvEncoder(self.widths, self.blocks_per_stage, name="encoder")(x)
    return nn.Dense(self.num_classes, name="head")(features[-1].mean(axis=(1, 2)))


def evaluate(model: Classifier, params: Any, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> float:
  """Top-1 accuracy over a whole split (the last partial batch is padded, then dropped)."""
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply(p, x), axis=-1))
  correct = 0
  for start in range(0, len(images), batch_size):
    chunk = input_pipeline.to_float(images[start:start + batch_size])
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]),
                                              chunk.dtype)])
    correct += int((np.asarray(predict(params, chunk))[:n] == labels[start:start + n]).sum())
  return correct / len(images)


def train_and_save(config: Any, workdir: str) -> dict[str, Any]:
  """Trains per `config`, saves to workdir/encoder and returns the saved record (a dict)."""
  model = Classifier(tuple(config.encoder.widths), int(config.encoder.blocks_per_stage),
                     int(config.num_classes))
  data = input_pipeline.create_dataset(config.data, seed=config.seed)
  first = next(data)
  image_shape = tuple(int(s) for s in first["image"].shape[1:])
  params = jax.jit(model.init)(jax.random.key(config.seed), first["image"])
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                                config.warmup_steps, config.num_steps)
  optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, batch):
    def loss_fn(p):
      logits = model.apply(p, batch["image"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, (jnp.argmax(logits, -1) == batch["label"]).mean()
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  batch, window_start, sums = first, time.perf_counter(), np.zeros(2)
  for step in range(1, config.num_steps + 1):
    params, opt_state, loss, acc = train_step(params, opt_state, batch)
    sums += (float(loss), float(acc))
    if step % config.log_every == 0 or step == config.num_steps:
      n = config.log_every if step % config.log_every == 0 else step % config.log_every
      rate = n / (time.perf_counter() - window_start)
      print(f"step {step}/{config.num_steps}  loss {sums[0] / n:.4f}  "
            f"train acc {sums[1] / n:.4f}  {rate:.1f} steps/s", flush=True)
      window_start, sums = time.perf_counter(), np.zeros(2)
    batch = next(data)

  eval_config = config.data.to_dict()
  eval_config["split"] = config.eval_split
  images, labels = input_pipeline.load_images(eval_config)
  accuracy = evaluate(model, params, images, labels, int(config.eval_batch_size))
  print(f"{config.eval_split} accuracy {accuracy:.4f} on {len(images)} images", flush=True)

  record = dict(widths=list(config.encoder.widths),
                blocks_per_stage=int(config.encoder.blocks_per_stage),
                image_shape=list(image_shape), dataset=config.data.name,
                num_steps=int(config.num_steps), seed=int(config.seed),
                eval_split=config.eval_split, eval_accuracy=accuracy,
                train_config=config.to_dict())
  directory = encoder_lib.save_encoder(os.path.join(workdir, "encoder"),
                                       {"params": params["params"]["encoder"]}, record)
  print(f"Saved encoder to {directory} (use encoder.kind='conv', "
        f"encoder.checkpoint='{directory}')", flush=True)
  return record


_CONFIG = config_flags.DEFINE_config_file("config", None, "Encoder training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; the encoder goes to "
                               "WORKDIR/encoder.")


def main(argv: Sequence[str]) -> None:
  del argv
  train_and_save(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
