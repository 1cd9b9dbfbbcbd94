"""The training loop around `experiment.train_step`: resume, log, checkpoint, sample, stop.

`run(config, workdir)` trains (resuming from the latest good checkpoint in WORKDIR/checkpoints,
so metrics.jsonl reads as if the run had never stopped) and returns the final state; every
numeric config field is checked against its range first (`NUMERIC_FIELDS`). One run
per workdir (a lock); a resume with a config that changes the run's meaning is refused unless
`allow_config_change`. SIGTERM/SIGINT save and raise cli.Preempted; a non-finite loss or
gradient stops the run (cli.NonFiniteError) or, with config.nonfinite="skip", skips the step.
Multi-process: each process feeds its share of the global batch.
"""

import dataclasses
import json
import math
import os
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lookahead_drift import checkpoint
from lookahead_drift import cli
from lookahead_drift import experiment as experiment_lib
from lookahead_drift import inference
from lookahead_drift import input_pipeline
from lookahead_drift import metrics_io
from lookahead_drift import pictures
from lookahead_drift import progress as progress_lib
from lookahead_drift import sharding
from lookahead_drift import workdir as workdir_lib
from lookahead_drift.experiment import Experiment, TrainState

PyTree = Any
ConfigDict = ml_collections.ConfigDict
NONFINITE_METRICS = experiment_lib.NONFINITE_METRICS
# config.nonfinite (read with this default): "stop" the run at the next log or save step, or
# "skip" bad steps (params, EMA and optimizer state stay as before the step; counted).
NONFINITE_POLICIES = ("stop", "skip")
NONFINITE_DEFAULT = "stop"


def _real_reference(config: ConfigDict, num: int) -> np.ndarray:
  """Real samples to draw next to generated ones (fixed seed; local data only)."""
  if config.data.name in input_pipeline.TOY_DATASETS:
    return np.asarray(input_pipeline.sample_toy(config.data.name, num,
                                                np.random.default_rng(12345)))
  images = []
  for batch in input_pipeline.create_dataset(config.data, seed=config.seed + 1):
    images.append(np.asarray(batch["image"]))
    if sum(len(x) for x in images) >= num:
      break
  return np.concatenate(images, 0)[:num]


class _StopRequest:
  """Turns SIGTERM and SIGINT into a flag checked by the loop (which then saves and exits 3).

  A second SIGINT interrupts at once. Multi-process runs agree on the flag at logging steps
  (one small all-gather), so all processes stop, and save, at the same step.
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("%s received: saving a checkpoint, then exiting with code %d%s.",
                    signal.Signals(signum).name, cli.EXIT_PREEMPTED,
                    " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else "")
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    self.requested = True

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)

  def any_process(self) -> bool:
    """True on all processes if any of them was asked to stop (a collective if multi-process)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))


def empty_window(metric_shapes: dict[str, Any]) -> dict[str, Any]:
  """Zero running sums of one logging window (numpy), for metrics of these shapes."""
  return {"sums": {k: np.zeros(v.shape, np.float32) for k, v in metric_shapes.items()
                   if k != "nonfinite"},
          "steps": np.int32(0), "nonfinite_steps": np.int32(0),
          "first_nonfinite_step": np.int32(-1), "first_nonfinite": np.int32(0)}


@jax.jit
def accumulate_window(window: dict[str, Any], metrics: dict[str, jax.Array],
                      step: jax.Array) -> dict[str, Any]:
  """Adds one step's metrics (good steps only) and notes the window's first non-finite step."""
  good = metrics["nonfinite"] == 0
  first = (window["first_nonfinite_step"] < 0) & ~good
  return {"sums": {k: s + jnp.where(good, metrics[k].astype(jnp.float32), 0.0)
                   for k, s in window["sums"].items()},
          "steps": window["steps"] + good.astype(jnp.int32),
          "nonfinite_steps": window["nonfinite_steps"] + (~good).astype(jnp.int32),
          "first_nonfinite_step": jnp.where(first, step, window["first_nonfinite_step"]),
          "first_nonfinite": jnp.where(first, metrics["nonfinite"], window["first_nonfinite"])}


def window_scalars(window: dict[str, Any]) -> dict[str, Any]:
  """What a window logs: each metric's mean over its good steps, and the bad-step count."""
  steps = int(window["steps"])
  means = {k: v / steps if steps else np.full_like(v, np.nan) for k, v in window["sums"].items()}
  return {**means, "nonfinite_steps": int(window["nonfinite_steps"])}


def window_to_json(window: dict[str, Any]) -> dict[str, Any]:
  return jax.tree.map(lambda x: np.asarray(x).tolist(), window)


def window_from_json(saved: Any, template: dict[str, Any]) -> dict[str, Any] | None:
  """A window saved by `window_to_json` in the template's structure, or None if it differs."""
  try:
    return jax.tree.map(lambda t, v: np.asarray(v, t.dtype).reshape(t.shape), template, saved)
  except (ValueError, TypeError, KeyError):
    return None


def nonfinite_error(window: dict[str, Any], step: int, last_checkpoint: str | None,
                    policy: str) -> cli.NonFiniteError:
  """The error that stops a run on the window's first non-finite step."""
  flags = int(window["first_nonfinite"])
  what = ", ".join(k for i, k in enumerate(NONFINITE_METRICS) if flags >> i & 1)
  hint = ("pass --nonfinite=skip to skip such steps" if policy == "stop" else
          "every step of the logging window was skipped")
  return cli.NonFiniteError(
      f"non-finite {what} at step {int(window['first_nonfinite_step'])} "
      f"({int(window['nonfinite_steps'])} non-finite step(s) up to step {step}); stopped "
      f"without saving. Last good checkpoint: {last_checkpoint or 'none'}. Lower the learning "
      f"rate, or {hint}.")


def _write_samples(exp: Experiment, state: TrainState, step: int, real: np.ndarray,
                   writer: metrics_io.MetricWriter, workdir: str) -> str | None:
  """Generates with the EMA params and writes WORKDIR/samples/step_N.png (process 0)."""
  config = exp.config
  ema = sharding.to_host(state.ema_params)
  generated = inference.generate(config, ema, config.sample.num_png,
                              jax.random.PRNGKey(config.seed + 7))
  if jax.process_index() != 0:
    return None
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pictures.save_samples_png(path, generated, real)
  if generated.ndim == 4:
    writer.write_images(step, {"samples": pictures.image_grid(
        pictures.to_uint8(generated[:64]))[None]})
  return path


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a numeric config field may take: an integer or a finite number between
  `low` and `high` (`low` allowed unless low_open, `high` excluded unless high_closed)."""
  integer: bool = False
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_closed: bool = False
  optional: bool = False  # may be missing or None (a default applies)
  sequence: bool = False  # a non-empty list of such values (or one value)

  def accepts(self, value: Any) -> bool:
    if self.sequence and isinstance(value, (list, tuple)):
      return bool(value) and all(self.scalar().accepts(v) for v in value)
    number = (int, np.integer) if self.integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, number):
      return False
    return (math.isfinite(value) and (value > self.low if self.low_open else value >= self.low)
            and (value <= self.high if self.high_closed else value < self.high))

  def scalar(self) -> "Range":
    return dataclasses.replace(self, sequence=False)

  def describe(self) -> str:
    kind = "integer" if self.integer else "finite number"
    what = (f"a non-empty list of {kind}s" if self.sequence else
            f"an {kind}" if self.integer else f"a {kind}")
    if math.isinf(self.low) and math.isinf(self.high):
      return what
    if math.isinf(self.high):
      return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
    return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{']' if self.high_closed else ')'}")


_COUNT, _SIZE = Range(integer=True, low=1), Range(integer=True, low=0)
_POSITIVE, _NON_NEGATIVE = Range(low=0, low_open=True), Range(low=0)
_DECAY = Range(low=0, high=1)
_optional = lambda r: dataclasses.replace(r, optional=True)
# Every numeric field of a training config outside the data, model and encoder sections
# (checked where they are built), with its range: `validate_config` checks them all before
# any work, so a NaN learning rate or an EMA decay of 2 fails in one line, not hours later.
NUMERIC_FIELDS = {
    "seed": Range(integer=True), "num_steps": _COUNT, "log_every": _COUNT,
    "data.batch_size": _COUNT,
    "gen_batch_size": _optional(_SIZE),  # generated samples per step; 0: data.batch_size
    "ema_decay": _DECAY,
    "optimizer.learning_rate": _POSITIVE, "optimizer.end_value": _optional(_NON_NEGATIVE),
    "optimizer.warmup_steps": _SIZE, "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.b1": _DECAY, "optimizer.b2": _DECAY,
    "optimizer.grad_clip": _optional(_NON_NEGATIVE),  # 0 or None: no clipping
    # drift.LossConfig's numeric fields (its defaults apply to missing ones)
    "loss.temperatures": Range(low=0, low_open=True, optional=True, sequence=True),
    "loss.step_size": _optional(_POSITIVE), "loss.floor": _optional(_DECAY),
    "loss.num_lookahead": _optional(_SIZE), "loss.memory_budget_mb": _optional(_NON_NEGATIVE),
    "loss.term_weights": Range(optional=True, sequence=True),
    "loss.group_chunk": _optional(_SIZE), "loss.block_size": _optional(_COUNT),
    "mesh.num_model": _COUNT,
    "checkpoint.every": _COUNT, "checkpoint.keep": _COUNT,
    "sample.every": _COUNT, "sample.num_png": _COUNT, "sample.batch_size": _optional(_COUNT),
    # class-conditional runs only (guidance.Guidance checks how they fit together)
    "conditional.labels_per_step": _optional(_SIZE),
    "conditional.gen_per_label": _optional(Range(integer=True, low=2)),
    "conditional.neg_per_label": _optional(_SIZE),
    "conditional.cfg_min": _optional(Range(low=1)),
    "conditional.cfg_max": _optional(Range(low=1)),
    "conditional.cfg_power": _optional(Range()),
    "conditional.no_cfg_fraction": _optional(Range(low=0, high=1, high_closed=True)),
}


def _lookup(config: ConfigDict, key: str) -> Any:
  """config's dotted `key`, or None where a part is missing."""
  value = config
  for part in key.split("."):
    value = value.get(part) if isinstance(value, (dict, ConfigDict)) else None
  return value


def validate_config(config: ConfigDict) -> str:
  """UserError naming the first config value no run can use; returns the non-finite policy."""
  for key, allowed in NUMERIC_FIELDS.items():
    value = _lookup(config, key)
    if allowed.optional and value is None:
      continue
    if not allowed.accepts(value):
      raise cli.UserError(f"config.{key}={value!r}: expected {allowed.describe()}.")
  policy = config.get("nonfinite", NONFINITE_DEFAULT)
  if policy not in NONFINITE_POLICIES:
    raise cli.UserError(f"config.nonfinite={policy!r}: expected one of {NONFINITE_POLICIES}.")
  return policy


def _checked_inputs(config: ConfigDict) -> tuple[Experiment, dict[str, Any], np.ndarray]:
  """Builds everything from the config and traces the step, so bad inputs fail before any
  file is written: (experiment, an empty metric window, real reference samples)."""
  exp = experiment_lib.create_experiment(config)
  probe = experiment_lib.train_inputs(next(experiment_lib.create_dataset(config, 0)))
  batch = {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(), *v.shape[1:]), v.dtype)
           for k, v in probe.items()}
  _, metric_shapes = jax.eval_shape(exp.step_fn, exp.state, batch, exp.encoder_params)
  return exp, empty_window(metric_shapes), _real_reference(config, config.sample.num_png)


def schedule_change(saved: dict[str, Any], config: ConfigDict, step: int) -> str:
  """", and ..." when a resume at `step` changes num_steps under a cosine schedule: the decay
  spans num_steps, so it is stretched (or shortened) and the learning rate jumps."""
  old_steps = saved.get("num_steps")
  if (not step or not isinstance(old_steps, int) or old_steps == config.num_steps
      or config.optimizer.schedule != "cosine"):
    return ""
  old, new = (float(experiment_lib.create_optimizer(c)[1](step))
              for c in (ConfigDict(saved), config))
  how = "stretched" if config.num_steps > old_steps else "shortened"
  return (f", and the learning-rate schedule changes: the cosine decay is {how} from "
          f"{old_steps} to {config.num_steps} steps (learning rate at step {step}: "
          f"{old:.3g} -> {new:.3g})")


def _has_checkpoints(ckpt_dir: str) -> bool:
  return os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))


def run(config: ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> TrainState:
  """Trains (resuming from the latest good checkpoint in WORKDIR) and returns the final state.

  Raises (see `cli`) UserError or CheckpointError for bad inputs, before writing anything;
  NonFiniteError on a non-finite step with config.nonfinite="stop"; Preempted after saving
  on SIGTERM/SIGINT.
  """
  policy = validate_config(config)
  exp, window_template, real = _checked_inputs(config)
  config_json = config.to_json_best_effort(indent=2)
  lead = jax.process_index() == 0
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise cli.UserError(
        f"cannot create --workdir {workdir}: {e.strerror} ({e.filename}).") from e
  lock = workdir_lib.acquire_lock(workdir) if lead else None
  try:
    return _train_locked(exp, workdir, policy, window_template, real, config_json,
                         allow_config_change)
  finally:
    if lock is not None:
      workdir_lib.release_lock(lock)


def _train_locked(exp: Experiment, workdir: str, policy: str,
                  window_template: dict[str, Any], real: np.ndarray, config_json: str,
                  allow_config_change: bool) -> TrainState:
  """`run` once the inputs are checked and the workdir is locked."""
  config, lead = exp.config, jax.process_index() == 0
  ckpt_dir = os.path.join(workdir, "checkpoints")
  saved_config = workdir_lib.read_config(workdir)
  changes = workdir_lib.check_config(
      saved_config, json.loads(config_json),
      resuming=_has_checkpoints(ckpt_dir), allow_change=allow_config_change, workdir=workdir)
  manager = checkpoint.create_manager(ckpt_dir, max_to_keep=config.checkpoint.keep,
                                      save_every=config.checkpoint.every,
                                      async_save=config.checkpoint.get("async_save", True))
  window = window_template
  restored = checkpoint.restore_latest_good(manager, exp.state,
                                            os.path.join(workdir, "corrupt_checkpoints"))
  if restored is None:
    state, start = exp.state, 0
  else:
    state, extra = restored
    start = int(jax.device_get(state.step))
    saved_window = window_from_json(extra.get("window"), window_template)
    if saved_window is None and start % config.log_every:
      logging.warning("The checkpoint has no metric window: the first log averages the "
                      "steps after %d only.", start)
    window = window_template if saved_window is None else saved_window
    logging.info("Resumed from %s at step %d.", ckpt_dir, start)

  writer_path = os.path.join(workdir, "metrics.jsonl")
  if lead:
    dropped = metrics_io.truncate_after(writer_path, start)
    if dropped:
      logging.info("Dropped %d records past step %d from %s.", dropped, start, writer_path)
    kept = workdir_lib.write_config(workdir, config_json, start)
    if changes:
      logging.warning("Config changed since the last run (%s)%s; the old one is in %s.",
                      "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()),
                      schedule_change(saved_config, config, start), kept)
  writer = metrics_io.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
  dataset = experiment_lib.create_dataset(config, start)
  num_steps = config.num_steps
  png = None
  step = start
  meter = progress_lib.Progress(num_steps, done=start)

  def stop_if_nonfinite(host_window: dict[str, Any], whole_window: bool) -> None:
    if host_window["nonfinite_steps"] and (policy == "stop" or (
        whole_window and not host_window["steps"])):
      manager.wait_until_finished()
      latest = manager.latest_step()
      raise nonfinite_error(host_window, step,
                            None if latest is None else checkpoint.step_dir(manager, latest),
                            policy)

  def save(force: bool = False) -> None:
    host_window = jax.device_get(window)
    stop_if_nonfinite(host_window, whole_window=False)
    checkpoint.save(manager, step, state, force=force,
                    extra={"window": window_to_json(host_window)})

  stopped = False
  try:
    with _StopRequest() as stop:
      while step < num_steps:
        batch = sharding.global_batch(experiment_lib.train_inputs(next(dataset)), exp.mesh)
        state, metrics = exp.step_fn(state, batch, exp.encoder_params)
        step += 1
        window = accumulate_window(window, metrics, np.int32(step))

        if step % config.log_every == 0 or step == num_steps:
          host_window = jax.device_get(window)
          scalars = window_scalars(host_window)
          rate = meter.update(step)
          writer.write_scalars(step, {**scalars, "steps_per_sec": rate})
          logging.info("step %d/%d | loss %.5f | %s", step, num_steps, float(scalars["loss"]),
                       meter.rate_and_eta())
          stop_if_nonfinite(host_window, whole_window=True)
          if step % config.log_every == 0:
            window = window_template
        if step % config.checkpoint.every == 0:
          save()
        if step % config.sample.every == 0 or step == num_steps:
          png = _write_samples(exp, state, step, real, writer, workdir) or png
        stopped = stop.requested if jax.process_count() == 1 else (
            step % config.log_every == 0 and stop.any_process())
        if stopped:
          break
      manager.wait_until_finished()
      if manager.latest_step() != step:
        save(force=True)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
  if stopped and step < num_steps:
    raise cli.Preempted(f"preempted at step {step} of {num_steps}; relaunch the same command "
                        "to continue.")
  if lead:
    print(f"Finished at step {step}.\n  checkpoints: {ckpt_dir}\n  metrics:     {writer.path}"
          f"\n  samples:     {png}", flush=True)
  return state
