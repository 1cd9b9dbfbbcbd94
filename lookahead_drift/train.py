"""Trains a one-step generator with the (lookahead) drifting loss.

  python -m lookahead_drift.train --config=configs/toy2d.py --workdir=/tmp/toy2d \
      [--config.num_steps=2000 ...]

Relaunching the same command resumes from the latest good checkpoint in WORKDIR/checkpoints
(metrics.jsonl then reads as if the run had never stopped). One run per workdir (a lock); a
resume with a config that changes the run's meaning is refused unless --allow_config_change.
SIGTERM/SIGINT save and exit 3; a non-finite loss or gradient stops the run (exit 4) or, with
--nonfinite=skip (config.nonfinite), skips the step. Exit codes: `lookahead_drift.cli`.
Multi-process: pass --coordinator_address/--num_processes/--process_id (or launch under a
cluster that `jax.distributed.initialize()` detects); each process feeds its share of the
global batch.
"""

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from lookahead_drift import checkpoint
from lookahead_drift import cli
from lookahead_drift import drift
from lookahead_drift import encoder
from lookahead_drift import guidance
from lookahead_drift import input_pipeline
from lookahead_drift import metrics_io
from lookahead_drift import models
from lookahead_drift import sample
from lookahead_drift import sharding
from lookahead_drift import workdir as workdir_lib

PyTree = Any
ConfigDict = ml_collections.ConfigDict
TOY_DATASETS = ("eight_gaussians", "checkerboard", "swiss_roll")
# Metrics whose non-finite value marks a step as bad (bit i of metrics["nonfinite"]: entry i).
NONFINITE_METRICS = ("loss", "grad_norm", "param_norm")
# config.nonfinite (read with this default): "stop" the run at the next log or save step, or
# "skip" bad steps (params, EMA and optimizer state stay as before the step; counted).
NONFINITE_POLICIES = ("stop", "skip")
NONFINITE_DEFAULT = "stop"


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; the data position is `step`."""
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  rng: jax.Array  # base key (raw uint32[2]); step t uses fold_in(rng, t)


def create_optimizer(config: ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW after global-norm clipping, with linear warmup then constant or cosine decay."""
  opt = config.optimizer
  if opt.schedule == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, opt.learning_rate, max(opt.warmup_steps, 1)),
         optax.constant_schedule(opt.learning_rate)], [max(opt.warmup_steps, 1)])
  elif opt.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate, max(opt.warmup_steps, 1),
        max(config.num_steps, opt.warmup_steps + 1), end_value=opt.get("end_value", 0.0))
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected 'constant' or "
                     "'cosine'.")
  chain = []
  if opt.grad_clip and opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  chain.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
  return optax.chain(*chain), schedule


def create_loss_config(config: ConfigDict) -> drift.LossConfig:
  """`drift.LossConfig` from config.loss, whose keys are exactly its fields."""
  fields = {f.name for f in dataclasses.fields(drift.LossConfig)}
  unknown = sorted(set(config.loss.keys()) - fields)
  if unknown:
    raise ValueError(f"config.loss has keys {unknown} that drift.LossConfig does not know "
                     f"(its fields: {sorted(fields)}).")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.loss.items()}
  return drift.LossConfig(**kwargs)


def train_step(state: TrainState, batch: dict[str, jax.Array], encoder_params: PyTree, *,
               generator: Any, noise_shape: tuple[int, ...], feature_fn: Callable,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               loss_config: drift.LossConfig, ema_decay: float,
               noise_sharding: jax.sharding.Sharding | None = None,
               cond: guidance.Guidance | None = None,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on the GLOBAL batch: generate, embed, drift loss, AdamW, EMA.

  Unconditional: batch {"image": [B, ...]}, B generated samples against B positives.
  Class-conditional (`cond`): batch {"label": [C], "image": [C, M, ...], "neg_image":
  [C, L, ...]}; α drawn per label, `cond.gen_per_label` samples generated per label with its
  label and α, and one drift problem per (label, feature group) with the unconditional
  negatives weighted (α − 1)(N − 1)/L (drifting.md §4).
  The batch arrays arrive sharded over "data"; the drift loss couples all samples, so XLA
  inserts the needed collectives and the result does not depend on the device count.
  A step whose loss, gradient or new parameters are not finite changes only `step`; its
  metrics["nonfinite"] has bit i set for each bad NONFINITE_METRICS[i] (0: a good step).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  real = batch["image"]
  as_f32 = lambda tree: jax.tree.map(lambda f: f.astype(jnp.float32), tree)
  embed = lambda x: as_f32(feature_fn(encoder_params, x))
  extra_metrics, gen_inputs, loss_inputs = {}, {}, {}
  if cond is None:
    num_gen, rows = real.shape[0], lambda feats: feats
    pos_feats = jax.lax.stop_gradient(embed(real))
  else:
    labels = batch["label"]
    num_labels = labels.shape[0]
    num_gen = num_labels * cond.gen_per_label
    alpha = guidance.sample_alpha(jax.random.fold_in(rng, 1), num_labels, cond)
    per_sample = lambda a: jnp.repeat(a, cond.gen_per_label, axis=0)
    gen_inputs = {"labels": per_sample(labels), "alpha": per_sample(alpha)}
    rows = lambda feats: guidance.class_rows(feats, num_labels)      # -> [C, G, K, D]
    flat = lambda x: x.reshape((-1, *x.shape[2:]))                    # [C, K, ...] -> [C·K, ...]
    pos_feats = jax.lax.stop_gradient(rows(embed(flat(real))))
    if cond.neg_per_label:
      loss_inputs = {"neg_feats": jax.lax.stop_gradient(rows(embed(flat(batch["neg_image"])))),
                     "neg_weights": guidance.negative_weights(alpha, cond)}
    extra_metrics = {"guidance/alpha_mean": jnp.mean(alpha)}
  noise = jax.random.normal(rng, (num_gen, *noise_shape), jnp.float32)
  if noise_sharding is not None:
    noise = jax.lax.with_sharding_constraint(noise, noise_sharding)

  def loss_fn(params):
    generated = generator.apply(params, noise, **gen_inputs).astype(jnp.float32)
    return drift.drift_loss(rows(embed(generated)), pos_feats, config=loss_config,
                            **loss_inputs)

  (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                            state.ema_params, params)
  metrics = {**{f"drift/{k}": v for k, v in loss_metrics.items()}, **extra_metrics,
             "loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "learning_rate": schedule(state.step)}
  bad = [~jnp.all(jnp.isfinite(metrics[k])) for k in NONFINITE_METRICS]
  metrics["nonfinite"] = sum(b.astype(jnp.int32) << i for i, b in enumerate(bad))
  keep_new = metrics["nonfinite"] == 0
  pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep_new, a, b), new, old)
  new_state = state.replace(step=state.step + 1, params=pick(params, state.params),
                            ema_params=pick(ema_params, state.ema_params),
                            opt_state=pick(opt_state, state.opt_state))
  return new_state, metrics


@dataclasses.dataclass
class Experiment:
  """What `train_and_evaluate`, tests and `sample.py` need, built once from a config."""
  config: ConfigDict
  mesh: jax.sharding.Mesh
  state: TrainState  # freshly initialised, sharded (donated by the first step that uses it)
  state_shardings: TrainState
  encoder_params: PyTree  # replicated on the mesh
  step_fn: Callable  # jitted (state, global batch, encoder_params) -> (state, metrics)


def create_experiment(config: ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Experiment:
  """Builds model, encoder, optimizer, initial sharded state and the compiled-once step."""
  mesh = mesh or sharding.create_mesh(config.mesh.num_model)
  cond = guidance.from_config(config)
  sharding.check_batch_size(config.data.batch_size if cond is None else cond.labels_per_step,
                            mesh)
  generator, noise_shape = models.create_generator(config.model)
  noise_shape = tuple(noise_shape)
  feature_fn, encoder_params = encoder.create_feature_fn(config.encoder)
  optimizer, schedule = create_optimizer(config)
  loss_config = create_loss_config(config)

  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params = generator.init(init_rng, jnp.zeros((1, *noise_shape), jnp.float32),
                            **models.example_conditions(config.model, 1))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=optimizer.init(params), rng=state_rng)

  rng = jax.random.PRNGKey(config.seed)
  state_shardings = sharding.tree_shardings(jax.eval_shape(init, rng), mesh,
                                            config.mesh.shard_params)
  state = jax.jit(init, out_shardings=state_shardings)(rng)
  encoder_params = sharding.replicate(encoder_params, mesh)

  step = functools.partial(
      train_step, generator=generator, noise_shape=noise_shape, feature_fn=feature_fn,
      optimizer=optimizer, schedule=schedule, loss_config=loss_config,
      ema_decay=config.ema_decay, noise_sharding=sharding.batch_sharding(mesh), cond=cond)
  step_fn = jax.jit(
      step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))
  return Experiment(config, mesh, state, state_shardings, encoder_params, step_fn)


def create_dataset(config: ConfigDict, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of each global batch, starting at `start_step`."""
  where = dict(seed=config.seed, process_index=jax.process_index(),
               process_count=jax.process_count(), start_step=start_step)
  cond = guidance.from_config(config)
  if cond is None:
    return input_pipeline.create_dataset(config.data, **where)
  return input_pipeline.create_class_dataset(
      config.data, labels_per_step=cond.labels_per_step, pos_per_label=cond.pos_per_label,
      neg_per_label=cond.neg_per_label, **where)


def _train_inputs(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The arrays the train step reads: the images, and for conditional batches (which carry
  "neg_image") the labels and negatives; unconditional batches' labels are not used."""
  keys = ("label", "image", "neg_image") if "neg_image" in local_batch else ("image",)
  return {k: local_batch[k] for k in keys}


def host_params(tree: PyTree) -> PyTree:
  """A numpy copy of (possibly multi-process sharded) arrays on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _real_reference(config: ConfigDict, num: int) -> np.ndarray:
  """Real samples to draw next to generated ones (fixed seed; local data only)."""
  if config.data.name in TOY_DATASETS:
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


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _write_samples(exp: Experiment, state: TrainState, step: int, real: np.ndarray,
                   writer: metrics_io.MetricWriter, workdir: str) -> str | None:
  """Generates with the EMA params and writes WORKDIR/samples/step_N.png (process 0)."""
  config = exp.config
  ema = host_params(state.ema_params)
  generated = sample.generate(config, ema, config.sample.num_png,
                              jax.random.PRNGKey(config.seed + 7))
  if jax.process_index() != 0:
    return None
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sample.save_samples_png(path, generated, real)
  if generated.ndim == 4:
    writer.write_images(step, {"samples": sample.image_grid(
        sample.to_uint8(generated[:64]))[None]})
  return path



POSITIVE_INT_FIELDS = ("num_steps", "log_every", "data.batch_size", "checkpoint.every",
                       "checkpoint.keep", "sample.every", "sample.num_png")


def validate_config(config: ConfigDict) -> str:
  """UserError for config values no run can use; returns the non-finite policy."""
  for key in POSITIVE_INT_FIELDS:
    value = config
    for part in key.split("."):
      value = value.get(part) if isinstance(value, (dict, ConfigDict)) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise cli.UserError(f"config.{key}={value!r}: expected an integer >= 1.")
  policy = config.get("nonfinite", NONFINITE_DEFAULT)
  if policy not in NONFINITE_POLICIES:
    raise cli.UserError(f"config.nonfinite={policy!r}: expected one of {NONFINITE_POLICIES}.")
  return policy


def _checked_inputs(config: ConfigDict) -> tuple[Experiment, dict[str, Any], np.ndarray]:
  """Builds everything from the config and traces the step, so bad inputs fail before any
  file is written: (experiment, an empty metric window, real reference samples)."""
  exp = create_experiment(config)
  probe = _train_inputs(next(create_dataset(config, 0)))
  batch = {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(), *v.shape[1:]), v.dtype)
           for k, v in probe.items()}
  _, metric_shapes = jax.eval_shape(exp.step_fn, exp.state, batch, exp.encoder_params)
  return exp, empty_window(metric_shapes), _real_reference(config, config.sample.num_png)


def _has_checkpoints(ckpt_dir: str) -> bool:
  return os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))


def train_and_evaluate(config: ConfigDict, workdir: str, *,
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
  """`train_and_evaluate` once the inputs are checked and the workdir is locked."""
  config, lead = exp.config, jax.process_index() == 0
  ckpt_dir = os.path.join(workdir, "checkpoints")
  changes = workdir_lib.check_config(
      workdir_lib.read_config(workdir), json.loads(config_json),
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
      logging.warning("Config changed since the last run (%s); the old one is in %s.",
                      "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()), kept)
  writer = metrics_io.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
  dataset = create_dataset(config, start)
  num_steps = config.num_steps
  png = None
  t0, t_start, step = time.time(), start, start

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
        batch = sharding.global_batch(_train_inputs(next(dataset)), exp.mesh)
        state, metrics = exp.step_fn(state, batch, exp.encoder_params)
        step += 1
        window = accumulate_window(window, metrics, np.int32(step))

        if step % config.log_every == 0 or step == num_steps:
          host_window = jax.device_get(window)
          scalars = window_scalars(host_window)
          rate = (step - t_start) / max(time.time() - t0, 1e-9)
          writer.write_scalars(step, {**scalars, "steps_per_sec": rate})
          logging.info("step %d/%d | loss %.5f | %.1f steps/s | ETA %s", step, num_steps,
                       float(scalars["loss"]), rate, _format_eta((num_steps - step) / rate))
          stop_if_nonfinite(host_window, whole_window=True)
          if step % config.log_every == 0:
            window = window_template
          t0, t_start = time.time(), step
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


def restore_for_eval(config: ConfigDict, workdir: str, step: int | None = None) -> TrainState:
  """Checkpoint `step` (default: the latest) of WORKDIR, for sampling/evaluation binaries."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  exp = create_experiment(config)
  manager = checkpoint.create_manager(ckpt_dir, max_to_keep=config.checkpoint.keep,
                                      save_every=config.checkpoint.every, async_save=False,
                                      create=False)
  try:
    state = checkpoint.restore(manager, exp.state, step)
  finally:
    manager.close()
  if state is None:
    raise checkpoint.CheckpointError(f"No checkpoint found in {ckpt_dir}.")
  return state


def maybe_initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                                 process_id: int | None) -> None:
  """Joins a multi-process run when flags or a detectable cluster environment say so."""
  cluster_env = any(int(os.environ.get(k, "1")) > 1
                    for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
  if coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or cluster_env:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    logging.info("Process %d of %d, %d local / %d global devices.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv: list[str]) -> None:
  del argv
  config = FLAGS.config
  if FLAGS.nonfinite is not None:
    with config.unlocked():
      config.nonfinite = FLAGS.nonfinite
  maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  train_and_evaluate(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
  flags.DEFINE_bool("allow_config_change", False, "Resume even if the config changes fields "
                    "that change the run's meaning (recorded in WORKDIR/config_history).")
  flags.DEFINE_enum("nonfinite", None, list(NONFINITE_POLICIES), "On a non-finite loss or "
                    "gradient: stop (exit 4) or skip the step (default: config.nonfinite or "
                    f"{NONFINITE_DEFAULT!r}).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run_absl(main)
