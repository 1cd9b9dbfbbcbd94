"""A trained generator from a workdir: its config and weights, and one-step samples.

`restore(workdir)` reads the run's config (WORKDIR/config.json, written by the train loop) and
`{step, params, ema_params}` of a checkpoint, without building the optimizer or loading the
feature encoder, which sampling does not need. `generate` draws samples; `write_samples` is
what `python -m lookahead_drift.sample` does.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lookahead_drift import checkpoint
from lookahead_drift import models
from lookahead_drift import pictures
from lookahead_drift import workdir as workdir_lib

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TrainedGenerator:
  """A checkpoint's generator weights and the config they were trained with."""
  config: ml_collections.ConfigDict
  step: int
  params: PyTree
  ema_params: PyTree

  def weights(self, use_ema: bool = True) -> PyTree:
    """The EMA parameters (the default, what the run's PNGs show) or the raw ones."""
    return self.ema_params if use_ema else self.params


def run_config(workdir: str, override: ml_collections.ConfigDict | None = None
               ) -> ml_collections.ConfigDict:
  """WORKDIR/config.json, or `override` when given (a warning names model fields it changes)."""
  if override is None:
    return workdir_lib.load_config(workdir)
  saved = workdir_lib.read_config(workdir)
  if saved is not None:
    changed = {k: v for k, v in workdir_lib.config_changes(
        saved, json.loads(override.to_json_best_effort())).items() if k.startswith("model.")}
    if changed:
      logging.warning("--config changes the model the run was trained with (%s); the "
                      "checkpoint may not fit it.",
                      "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
  return override


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints, where the train loop saves."""
  return os.path.join(workdir, "checkpoints")


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of WORKDIR's checkpoints, oldest first ([] if there are none)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  manager = checkpoint.open_for_reading(checkpoint_dir(workdir))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def restore(workdir: str, *, step: int | None = None,
            config: ml_collections.ConfigDict | None = None) -> TrainedGenerator:
  """Checkpoint `step` of WORKDIR (default: the newest good one) with the run's config.

  `config` replaces the saved config (see `run_config`). Raises checkpoint.CheckpointError
  when there is no such checkpoint, CorruptCheckpointError when it fails its checksums.
  """
  config = run_config(workdir, config)
  manager = checkpoint.open_for_reading(checkpoint_dir(workdir))
  try:
    restored = checkpoint.restore_for_inference(manager, step)
  finally:
    manager.close()
  if restored is None:
    raise checkpoint.CheckpointError(f"No checkpoint found in {checkpoint_dir(workdir)}.")
  got_step = int(np.asarray(restored["step"]))
  # The raw restore takes any shapes: check them against the config's generator here.
  module, noise_shape = models.create_generator(config.model)
  expected = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, *noise_shape), jnp.float32))
  checkpoint.check_compatible(checkpoint.step_dir_of(checkpoint_dir(workdir), got_step),
                              restored["params"], expected, what="generator")
  return TrainedGenerator(config, got_step, restored["params"], restored["ema_params"])


_GENERATORS: dict[str, tuple[Any, tuple[int, ...]]] = {}


def _generator(model_config: ml_collections.ConfigDict) -> tuple[Any, tuple[int, ...]]:
  """(jitted apply, noise shape) for a model config, built once per distinct config."""
  key = model_config.to_json()
  if key not in _GENERATORS:
    module, noise_shape = models.create_generator(model_config)
    _GENERATORS[key] = (jax.jit(module.apply), tuple(noise_shape))
  return _GENERATORS[key]


def generate(config: ml_collections.ConfigDict, params: PyTree, num: int,
             rng: jax.Array, *, batch_size: int | None = None) -> np.ndarray:
  """`num` one-step samples of the generator in `config` with `params` (float32 numpy).

  Conditional models (config.model.num_classes > 0) get labels 0, 1, 2, ... cycling.
  Generation runs in chunks of `batch_size` (default config.sample.batch_size) to bound memory.
  """
  apply, noise_shape = _generator(config.model)
  num_classes = config.model.get("num_classes", 0) or 0
  batch_size = batch_size or config.get("sample", {}).get("batch_size", 1024)
  out = []
  for i, start in enumerate(range(0, num, batch_size)):
    n = min(batch_size, num - start)
    noise = jax.random.normal(jax.random.fold_in(rng, i), (n, *noise_shape), jnp.float32)
    labels = (jnp.arange(start, start + n) % num_classes).astype(jnp.int32) if num_classes else None
    out.append(np.asarray(apply(params, noise, labels=labels), np.float32))
  return np.concatenate(out, 0) if out else np.zeros((0,), np.float32)




def write_samples(workdir: str, *, num_samples: int, out: str | None = None,
                  use_ema: bool = True, seed: int = 0,
                  config: ml_collections.ConfigDict | None = None) -> str:
  """Samples of WORKDIR's newest good checkpoint to an .npz (default WORKDIR/samples.npz)
  and a PNG beside it; prints where, and returns the .npz path."""
  if num_samples < 1:
    raise ValueError(f"--num_samples={num_samples}: expected >= 1.")
  trained = restore(workdir, config=config)
  samples = generate(trained.config, trained.weights(use_ema), num_samples,
                     jax.random.PRNGKey(seed))
  out = out or os.path.join(workdir, "samples.npz")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  pictures.save_npz(out, samples)
  png = os.path.splitext(out)[0] + ".png"
  pictures.save_samples_png(png, samples)
  print(f"Wrote {samples.shape[0]} samples from step {trained.step} "
        f"({'EMA' if use_ema else 'raw'} params) to {out} and {png}", flush=True)
  return out
