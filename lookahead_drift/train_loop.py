"""The training loop around `experiment.train_step`: resume, log, checkpoint, sample, stop.

`run(config, workdir)` trains (resuming from the newest good checkpoint in WORKDIR/checkpoints,
so metrics.jsonl reads as if the run had never stopped) and returns the final state; every
numeric config field is checked against its range first (`NUMERIC_FIELDS`). One run
per workdir (a lock); a resume with a config that changes the run's meaning is refused unless
`allow_config_change`. As in flax's examples, the loop keeps each step's metrics until the
next log step, which writes their means; the steps since then (the metric window) are saved
with each checkpoint, so that a resumed run logs the same means. SIGTERM/SIGINT save and
raise cli.Preempted; a non-finite loss or gradient stops the run (cli.NonFiniteError) or, with
config.nonfinite="skip", skips the step (`check_finite`). Multi-process: each process feeds
its share of the global batch.
"""

import dataclasses
import itertools
import json
import math
import os
import signal
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lookahead_drift import checkpoint
from lookahead_drift import cli
from lookahead_drift import drift
from lookahead_drift import experiment as experiment_lib
from lookahead_drift import inference
from lookahead_drift import input_pipeline
from lookahead_drift import metrics_io
from lookahead_drift import pictures
from lookahead_drift import progress as progress_lib
from lookahead_drift import sharding
from lookahead_drift import workdir as workdir_lib
from lookahead_drift.experiment import Experiment, TrainState

ConfigDict = ml_collections.ConfigDict
Window = list[dict[str, Any]]  # one {metric name: value} per step since the last log step
NONFINITE_METRICS = experiment_lib.NONFINITE_METRICS
# config.nonfinite (read with this default): "stop" the run at the next log or save step, or
# "skip" bad steps (params, EMA and optimizer state stay as before the step; counted).
NONFINITE_POLICIES = ("stop", "skip")
NONFINITE_DEFAULT = "stop"


def window_means(window: Window) -> dict[str, Any]:
  """What a log step writes: each metric's mean over the window's good steps (NaN if there
  are none) and the number of bad steps (metrics["nonfinite"] != 0, see train_step)."""
  good = [m for m in window if not m["nonfinite"]]
  means = {k: np.mean([m[k] for m in good], axis=0) if good else np.full(np.shape(v), np.nan)
           for k, v in window[0].items() if k != "nonfinite"}
  return {**means, "nonfinite_steps": len(window) - len(good)}


def check_finite(window: Window, step: int, policy: str, manager: Any, *,
                 logged: bool) -> None:
  """The non-finite policy, applied to the window (on the host) at log and save steps.

  Raises cli.NonFiniteError, naming the last good checkpoint of `manager`, so that nothing
  more is saved, if the window holds a bad step and the policy is "stop", or if a `logged`
  window holds nothing else ("skip").
  """
  bad = [i for i, m in enumerate(window) if m["nonfinite"]]
  if not bad or (policy == "skip" and not (logged and len(bad) == len(window))):
    return
  checkpoint.wait(manager)  # a save in flight may be the last good checkpoint
  latest = manager.latest_step()
  last = "none" if latest is None else checkpoint.step_dir_of(str(manager.directory), latest)
  flags = int(window[bad[0]]["nonfinite"])
  what = ", ".join(k for i, k in enumerate(NONFINITE_METRICS) if flags >> i & 1)
  hint = ("pass --nonfinite=skip to skip such steps" if policy == "stop" else
          "every step of the logging window was skipped")
  raise cli.NonFiniteError(
      f"non-finite {what} at step {step - len(window) + 1 + bad[0]} ({len(bad)} non-finite "
      f"step(s) up to step {step}); stopped without saving. Last good checkpoint: "
      f"{last}. Lower the learning rate, or {hint}.")


def window_from_json(saved: Any, metric_shapes: dict[str, Any]) -> Window | None:
  """A window saved with a checkpoint, in this run's metric shapes and dtypes (null: NaN);
  None if it does not fit (none saved, other metrics, or a version that saved sums)."""
  try:
    return jax.tree.map(lambda s, v: np.asarray(v, s.dtype).reshape(s.shape),
                        [metric_shapes] * len(saved), saved)
  except (ValueError, TypeError, KeyError):
    return None


def _save(manager: Any, step: int, state: TrainState, window: Window, policy: str,
          config: dict[str, Any], *, force: bool = False) -> None:
  """Checkpoints `state` with its metric window and the run's `config` (so that a resume
  checks it even without config.json), unless the non-finite policy stops first."""
  window = jax.device_get(window)
  check_finite(window, step, policy, manager, logged=False)
  checkpoint.save(manager, step, state, force=force,
                  extra={"window": jax.tree.map(metrics_io.to_python, window),
                         "config": config})


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

  def agreed(self, step: int, log_every: int) -> bool:
    """Whether every process stops after `step`: at once in one process; multi-process, at
    logging steps, if any process was asked (a collective)."""
    if jax.process_count() == 1:
      return self.requested
    if step % log_every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def _real_reference(config: ConfigDict, num: int) -> np.ndarray:
  """Real samples to draw next to generated ones (a fixed draw from the local data)."""
  rng = np.random.default_rng(12345)
  if config.data.name in input_pipeline.TOY_DATASETS:
    return np.asarray(input_pipeline.sample_toy(config.data.name, num, rng))
  images, _ = input_pipeline.load_images(config.data)
  return input_pipeline.to_float(images[rng.permutation(len(images))[:num]])


def _write_samples(exp: Experiment, state: TrainState, step: int, real: np.ndarray,
                   writer: metrics_io.MetricWriter, workdir: str) -> str | None:
  """Generates with the experiment's generator and on-device EMA params, and writes
  WORKDIR/samples/step_N.png (process 0)."""
  config = exp.config
  generated = inference.generate(config, state.ema_params, config.sample.num_png,
                                 jax.random.PRNGKey(config.seed + 7),
                                 generator=(exp.generate_fn, exp.noise_shape))
  if jax.process_index() != 0:
    return None
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pictures.save_samples_png(path, generated, real)
  if generated.ndim == 4:
    writer.write_images(step, {"samples": pictures.image_grid(
        pictures.to_uint8(generated[:64]))[None]})
  return path


def _newest_png(directory: str) -> str | None:
  """The newest step_N.png in `directory` (what a relaunch of a finished run reports)."""
  names = sorted(n for n in os.listdir(directory) if n.startswith("step_")
                 and n.endswith(".png")) if os.path.isdir(directory) else []
  return os.path.join(directory, names[-1]) if names else None


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
    "generator_chunks": _optional(_COUNT),
    "ema_decay": _DECAY,
    "optimizer.learning_rate": _POSITIVE, "optimizer.end_value": _optional(_NON_NEGATIVE),
    "optimizer.warmup_steps": _SIZE, "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.b1": _DECAY, "optimizer.b2": _DECAY,
    "optimizer.grad_clip": _optional(_NON_NEGATIVE),  # 0 or None: no clipping
    # drift.LossConfig's numeric fields (its defaults apply to missing ones)
    "loss.temperatures": Range(low=0, low_open=True, optional=True, sequence=True),
    "loss.step_size": _optional(_POSITIVE), "loss.floor": _optional(_DECAY),
    "loss.num_lookahead": _optional(_SIZE), "loss.memory_budget_mb": _optional(_NON_NEGATIVE),
    "loss.norm_momentum": _optional(_DECAY), "loss.lookahead_tol": _optional(_NON_NEGATIVE),
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
  """Whether `ckpt_dir` holds step directories. Unlike the folder itself, which process 0
  creates, these appear only after a step of all processes, so all of them agree on this."""
  return os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))


def _metric_shapes(exp: Experiment, local_batch: dict[str, np.ndarray]) -> dict[str, Any]:
  """Traces the step (no compute) on the global shapes of a local batch: the shapes of its
  metrics. Inputs that do not fit the model, encoder or loss fail here."""
  batch = {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(), *v.shape[1:]), v.dtype)
           for k, v in experiment_lib.train_inputs(local_batch).items()}
  return jax.eval_shape(exp.step_fn, exp.state, batch, exp.encoder_params)[1]


def run(config: ConfigDict, workdir: str, *, allow_config_change: bool = False) -> TrainState:
  """Trains (resuming from the newest good checkpoint in WORKDIR) and returns the final state.

  Raises (see `cli`) UserError or CheckpointError for bad inputs, before writing anything;
  NonFiniteError on a non-finite step with config.nonfinite="stop"; Preempted after saving
  on SIGTERM/SIGINT.
  """
  policy = validate_config(config)
  exp = experiment_lib.create_experiment(config)
  # The data starts at the newest checkpoint (rebuilt below if that one is bad); its first
  # batch traces the step, so bad inputs fail before any file is written.
  ckpt_dir = os.path.join(workdir, "checkpoints")
  planned = max(checkpoint.steps(ckpt_dir), default=0) if _has_checkpoints(ckpt_dir) else 0
  dataset = experiment_lib.create_dataset(config, planned)
  first = next(dataset)
  metric_shapes = _metric_shapes(exp, first)
  dataset = itertools.chain([first], dataset)
  real = _real_reference(config, config.sample.num_png)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise cli.UserError(
        f"cannot create --workdir {workdir}: {e.strerror} ({e.filename}).") from e
  lock = workdir_lib.acquire_lock(workdir) if jax.process_index() == 0 else None
  try:
    state, window = _resume(exp, workdir, metric_shapes, allow_config_change)
    start = int(jax.device_get(state.step))
    if start != planned:
      dataset = experiment_lib.create_dataset(config, start)
    return _train(exp, workdir, policy, state, window, dataset, real)
  finally:
    if lock is not None:
      workdir_lib.release_lock(lock)


def _with_new_loss_fields(saved: dict[str, Any] | None) -> dict[str, Any] | None:
  """The saved config with the drift.LossConfig fields it predates at their defaults (which
  compute what the run computed before they existed), so that a resume sees no change."""
  if not saved or not isinstance(saved.get("loss"), dict):
    return saved
  defaults = json.loads(json.dumps(dataclasses.asdict(drift.LossConfig())))
  return {**saved, "loss": {**{k: v for k, v in defaults.items() if v is not None},
                            **saved["loss"]}}


def _resume(exp: Experiment, workdir: str, metric_shapes: dict[str, Any],
            allow_config_change: bool) -> tuple[TrainState, Window]:
  """(state, metric window) to train on from: the newest good checkpoint's (newer corrupt
  ones go to WORKDIR/corrupt_checkpoints), or the initial state. The config is checked
  against the saved one first; then (process 0) config.json is written and metrics.jsonl
  loses its records past the resumed step."""
  config, ckpt_dir = exp.config, os.path.join(workdir, "checkpoints")
  config_json = config.to_json_best_effort(indent=2)
  saved_config, saved_where = workdir_lib.read_config(workdir), None
  resuming = _has_checkpoints(ckpt_dir)
  if saved_config is None and resuming:  # config.json lost: the newest checkpoint's config
    found = checkpoint.saved_extra(ckpt_dir)
    if found is not None and isinstance(found[1].get("config"), dict):
      saved_config = found[1]["config"]
      saved_where = f"config (stored with checkpoint {found[0]}; config.json is missing)"
  saved_config = _with_new_loss_fields(saved_config)
  changes = workdir_lib.check_config(saved_config, json.loads(config_json), resuming=resuming,
                                     allow_change=allow_config_change, workdir=workdir,
                                     saved_where=saved_where)
  quarantine = os.path.join(workdir, "corrupt_checkpoints")
  restored = (checkpoint.newest_good(ckpt_dir, exp.state, quarantine_dir=quarantine)
              if resuming else None)
  state, start, window = exp.state, 0, []
  if restored is not None:
    state, start = restored.state, restored.step
    window = window_from_json(restored.extra.get("window"), metric_shapes)
    if window is None and start % config.log_every:
      logging.warning("The checkpoint has no metric window: the first log averages the "
                      "steps after %d only.", start)
    window = window or []
    logging.info("Resumed from %s at step %d.", ckpt_dir, start)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "metrics.jsonl")
    dropped = metrics_io.truncate_after(path, start)
    if dropped:
      logging.info("Dropped %d records past step %d from %s.", dropped, start, path)
    kept = workdir_lib.write_config(workdir, config_json, start)
    if changes:
      logging.warning("Config changed since the last run (%s)%s; the old one is %s.",
                      "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()),
                      schedule_change(saved_config, config, start),
                      f"in {kept}" if kept else f"the {saved_where}")
  return state, window


def _train(exp: Experiment, workdir: str, policy: str, state: TrainState, window: Window,
           dataset: Any, real: np.ndarray) -> TrainState:
  """The loop: steps from `state` (and its metric window) to config.num_steps or a stop."""
  config, ckpt_dir = exp.config, os.path.join(workdir, "checkpoints")
  step, num_steps = int(jax.device_get(state.step)), config.num_steps
  manager = checkpoint.create_manager(
      ckpt_dir, max_to_keep=config.checkpoint.keep,
      save_every=config.checkpoint.every, async_save=config.checkpoint.get("async_save", True))
  writer = metrics_io.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
  meter = progress_lib.Progress(num_steps, done=step)
  png, stopped = None, False
  saved = json.loads(config.to_json_best_effort())  # stored with each checkpoint
  try:
    with _StopRequest() as stop:
      while step < num_steps and not stopped:
        batch = sharding.global_batch(experiment_lib.train_inputs(next(dataset)), exp.mesh)
        state, metrics = exp.step_fn(state, batch, exp.encoder_params)
        step += 1
        window.append(metrics)
        if step % config.log_every == 0 or step == num_steps:
          window = jax.device_get(window)
          scalars = {**window_means(window), "steps_per_sec": meter.update(step)}
          writer.write_scalars(step, scalars)
          logging.info("step %d/%d | loss %.5f | %s", step, num_steps, float(scalars["loss"]),
                       meter.rate_and_eta())
          check_finite(window, step, policy, manager, logged=True)
          if step % config.log_every == 0:  # a last, partial window is saved for a longer run
            window = []
        if step % config.checkpoint.every == 0:
          _save(manager, step, state, window, policy, saved)
        if step % config.sample.every == 0 or step == num_steps:
          png = _write_samples(exp, state, step, real, writer, workdir) or png
        stopped = stop.agreed(step, config.log_every)
        checkpoint.check_saves(manager, step, config.log_every)  # a failed save: stop
      checkpoint.wait(manager)
      if manager.latest_step() != step:
        _save(manager, step, state, window, policy, saved, force=True)
      checkpoint.wait(manager)
  except BaseException:
    checkpoint.close(manager, quiet=True)  # the error in flight is the one to report
    writer.close()
    raise
  checkpoint.close(manager)
  writer.close()
  if stopped and step < num_steps:
    raise cli.Preempted(f"preempted at step {step} of {num_steps}; relaunch the same command "
                        "to continue.")
  if jax.process_index() == 0:
    png = png or _newest_png(os.path.join(workdir, "samples"))
    print(f"Finished at step {step}.\n  checkpoints: {ckpt_dir}\n  metrics:     "
          f"{writer.path}" + (f"\n  samples:     {png}" if png else ""), flush=True)
  return state
