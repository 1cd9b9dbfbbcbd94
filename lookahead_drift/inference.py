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
from lookahead_drift import cli
from lookahead_drift import guidance
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
  directory = checkpoint_dir(workdir)
  return checkpoint.steps(directory) if os.path.isdir(directory) else []


# The train-state fields sampling reads back (and verifies) from a checkpoint.
INFERENCE_ITEMS = ("step", "params", "ema_params")


def restore(workdir: str, *, step: int | None = None,
            config: ml_collections.ConfigDict | None = None) -> TrainedGenerator:
  """Checkpoint `step` of WORKDIR (default: the newest good one) with the run's config.

  `config` replaces the saved config (see `run_config`). Raises checkpoint.CheckpointError
  when there is no such checkpoint, CorruptCheckpointError when it fails its checksums.
  Newer damaged checkpoints are reported and skipped, never moved (this is read-only).
  """
  config = run_config(workdir, config)
  directory = checkpoint_dir(workdir)
  if step is None:
    restored = checkpoint.newest_good(directory, items=INFERENCE_ITEMS)
  else:
    restored = checkpoint.restore(directory, step=step, items=INFERENCE_ITEMS)
  if restored is None:
    raise checkpoint.CheckpointError(f"No checkpoint found in {directory}.")
  # The raw restore takes any shapes: check them against the config's generator here.
  module, noise_shape = models.create_generator(config.model)
  expected = jax.eval_shape(lambda rng: module.init(
      rng, jnp.zeros((1, *noise_shape), jnp.float32),
      **models.example_conditions(config.model, 1)), jax.random.PRNGKey(0))
  params, ema_params = restored.state["params"], restored.state["ema_params"]
  checkpoint.check_compatible(restored.path, params, expected, what="generator")
  return TrainedGenerator(config, restored.step, params, ema_params)


_GENERATORS: dict[str, tuple[Any, tuple[int, ...]]] = {}


def _generator(model_config: ml_collections.ConfigDict) -> tuple[Any, tuple[int, ...]]:
  """(jitted apply, noise shape) for a model config, built once per distinct config."""
  key = model_config.to_json()
  if key not in _GENERATORS:
    module, noise_shape = models.create_generator(model_config)
    _GENERATORS[key] = (jax.jit(module.apply), tuple(noise_shape))
  return _GENERATORS[key]


def cycling_labels(num: int, num_classes: int) -> np.ndarray:
  """The default labels of `num` conditional samples: 0, 1, ..., num_classes - 1, 0, 1, ..."""
  return (np.arange(num) % num_classes).astype(np.int32)


def generate(config: ml_collections.ConfigDict, params: PyTree, num: int,
             rng: jax.Array, *, labels: Any = None, alpha: float = 1.0,
             batch_size: int | None = None,
             generator: tuple[Any, tuple[int, ...]] | None = None) -> np.ndarray:
  """`num` one-step samples of the generator in `config` with `params` (float32 numpy).

  Conditional models (config.model.num_classes > 0) take `labels` [num] (default 0, 1, 2, ...
  cycling); models conditioned on the guidance scale take `alpha` (1: no guidance).
  Generation runs in chunks of `batch_size` (default config.sample.batch_size) to bound memory.
  `generator`: (jitted apply, noise shape), e.g. a training experiment's own, whose params
  stay on its devices; default: config.model's, built once.
  """
  apply, noise_shape = generator or _generator(config.model)
  num_classes = config.model.get("num_classes", 0) or 0
  if num_classes:
    labels = cycling_labels(num, num_classes) if labels is None else np.asarray(labels)
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


def conditions(config: ml_collections.ConfigDict, num: int, labels: Any = None,
               cfg_scale: float = 1.0) -> tuple[np.ndarray | None, float]:
  """(labels [num] or None, α) to sample a run with, checked against what it was trained for.

  Conditional runs: `labels` (a list) split `num` evenly, label-major (default: every class
  in turn); α must be 1 or within the trained [cfg_min, cfg_max]. Unconditional runs take
  neither. Raises cli.UserError naming the bad value.
  """
  g = guidance.from_config(config)
  if g is None:
    if labels is not None or cfg_scale != 1.0:
      raise cli.UserError("--labels/--cfg_scale: this run is unconditional (its config has no "
                          "conditional.labels_per_step).")
    return None, 1.0
  try:
    if labels is None:
      chosen = cycling_labels(num, g.num_classes)
    else:
      wanted = guidance.check_labels([int(v) for v in labels], g.num_classes)
      if not wanted.size:
        raise ValueError("--labels is empty")
      chosen = np.repeat(wanted, -(-num // wanted.size))[:num]
    return chosen.astype(np.int32), guidance.check_alpha(cfg_scale, g)
  except ValueError as e:
    raise cli.UserError(str(e)) from e


def available_memory() -> int | None:
  """Bytes of memory available to a new allocation (MemAvailable), None if unknown."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
    return int(psutil.virtual_memory().available)
  except ImportError:
    pass
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


# Host copies of the samples a `write_samples` holds at once (the chunks, the concatenated
# float32 array, and the uint8 images or the archive written from it), and the share of the
# available memory they may take.
_SAMPLE_COPIES, _MEMORY_SHARE = 3, 0.8


def check_memory(num_samples: int, sample_shape: tuple[int, ...],
                 available: int | None = None) -> None:
  """cli.UserError, before any work, if `num_samples` float32 samples of `sample_shape` do
  not fit in the available memory (`available` bytes; default: this machine's)."""
  available = available_memory() if available is None else available
  per_sample = 4 * int(np.prod(sample_shape)) * _SAMPLE_COPIES
  if available is None or num_samples * per_sample <= _MEMORY_SHARE * available:
    return
  fits = int(_MEMORY_SHARE * available // per_sample)
  raise cli.UserError(
      f"--num_samples={num_samples}: {num_samples} samples of shape {tuple(sample_shape)} "
      f"need about {num_samples * per_sample / 2**30:.3g} GiB, more than the "
      f"{available / 2**30:.3g} GiB of memory available; ask for at most {fits}.")


def write_samples(workdir: str, *, num_samples: int, out: str | None = None,
                  use_ema: bool = True, seed: int = 0,
                  config: ml_collections.ConfigDict | None = None, labels: Any = None,
                  cfg_scale: float = 1.0) -> str:
  """Samples of WORKDIR's newest good checkpoint to an .npz (default WORKDIR/samples.npz)
  and a PNG beside it (conditional runs: one class per row); prints where, returns the .npz.
  `labels`, `cfg_scale`: see `conditions`. A `num_samples` that does not fit in memory is a
  cli.UserError (before generating); non-finite samples raise cli.NonFiniteError and write
  nothing."""
  if num_samples < 1:
    raise ValueError(f"--num_samples={num_samples}: expected >= 1.")
  out = out or os.path.join(workdir, "samples.npz")
  if not out.endswith(".npz"):  # np.savez would append ".npz" to any other name
    raise cli.UserError(f"--out={out}: expected a path ending in .npz (the samples are an "
                        ".npz archive; the PNG goes beside it).")
  trained = restore(workdir, config=config)
  apply, noise_shape = _generator(trained.config.model)
  sample = jax.eval_shape(apply, trained.params, jax.ShapeDtypeStruct((1, *noise_shape),
                                                                      jnp.float32),
                          **models.example_conditions(trained.config.model, 1))
  check_memory(num_samples, sample.shape[1:])
  chosen, alpha = conditions(trained.config, num_samples, labels, cfg_scale)
  samples = generate(trained.config, trained.weights(use_ema), num_samples,
                     jax.random.PRNGKey(seed), labels=chosen, alpha=alpha)
  bad = int(np.sum(~np.isfinite(samples)))
  if bad:
    raise cli.NonFiniteError(
        f"the generator of step {trained.step} ({'EMA' if use_ema else 'raw'} params) gave "
        f"{bad} non-finite values of {samples.size}; nothing written"
        f"{' (try --use_ema=false)' if use_ema else ''}.")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  pictures.save_npz(out, samples, labels=chosen)
  png = os.path.splitext(out)[0] + ".png"
  if chosen is not None and samples.ndim == 4:
    pictures.save_class_rows_png(png, pictures.to_uint8(samples), chosen)
  else:
    pictures.save_samples_png(png, samples)
  what = "" if chosen is None else f", α = {alpha:g}, labels {sorted(set(chosen.tolist()))}"
  print(f"Wrote {samples.shape[0]} samples from step {trained.step} "
        f"({'EMA' if use_ema else 'raw'} params{what}) to {out} and {png}", flush=True)
  return out
