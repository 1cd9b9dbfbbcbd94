"""Trains a one-step generator with the (lookahead) drifting loss.

  python -m lookahead_drift.train --config=configs/toy2d.py --workdir=/tmp/toy2d \
      [--config.num_steps=2000 ...]

Relaunching the same command resumes from the latest checkpoint in WORKDIR/checkpoints.
Multi-process: pass --coordinator_address/--num_processes/--process_id (or launch under a
cluster that `jax.distributed.initialize()` detects); each process feeds its share of the
global batch.
"""

import dataclasses
import functools
import logging as std_logging
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
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from lookahead_drift import checkpoint
from lookahead_drift import drift
from lookahead_drift import encoder
from lookahead_drift import input_pipeline
from lookahead_drift import metrics_io
from lookahead_drift import models
from lookahead_drift import sample
from lookahead_drift import sharding

PyTree = Any
ConfigDict = ml_collections.ConfigDict
TOY_DATASETS = ("eight_gaussians", "checkerboard", "swiss_roll")


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
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on the GLOBAL batch: generate, embed, drift loss, AdamW, EMA.

  The batch arrays arrive sharded over "data"; the drift loss couples all samples, so XLA
  inserts the needed collectives and the result does not depend on the device count.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  real = batch["image"]
  noise = jax.random.normal(rng, (real.shape[0], *noise_shape), jnp.float32)
  if noise_sharding is not None:
    noise = jax.lax.with_sharding_constraint(noise, noise_sharding)
  as_f32 = lambda tree: jax.tree.map(lambda f: f.astype(jnp.float32), tree)
  pos_feats = jax.lax.stop_gradient(as_f32(feature_fn(encoder_params, real)))

  def loss_fn(params):
    generated = generator.apply(params, noise).astype(jnp.float32)
    gen_feats = as_f32(feature_fn(encoder_params, generated))
    return drift.drift_loss(gen_feats, pos_feats, config=loss_config)

  (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                            state.ema_params, params)
  metrics = {**{f"drift/{k}": v for k, v in loss_metrics.items()},
             "loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "learning_rate": schedule(state.step)}
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state)
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
  sharding.check_batch_size(config.data.batch_size, mesh)
  generator, noise_shape = models.create_generator(config.model)
  noise_shape = tuple(noise_shape)
  feature_fn, encoder_params = encoder.create_feature_fn(config.encoder)
  optimizer, schedule = create_optimizer(config)
  loss_config = create_loss_config(config)

  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params = generator.init(init_rng, jnp.zeros((1, *noise_shape), jnp.float32))
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
      ema_decay=config.ema_decay, noise_sharding=sharding.batch_sharding(mesh))
  step_fn = jax.jit(
      step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))
  return Experiment(config, mesh, state, state_shardings, encoder_params, step_fn)


def create_dataset(config: ConfigDict, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of each global batch, starting at `start_step`."""
  return input_pipeline.create_dataset(
      config.data, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), start_step=start_step)


def _train_inputs(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The arrays the (unconditional) train step reads; labels are not used yet."""
  return {"image": local_batch["image"]}


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
  """Turns SIGTERM into a flag checked by the loop (which then saves and exits).

  Multi-process runs agree on the flag at logging steps (one small all-gather), so all
  processes stop, and save, at the same step.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def any_process(self) -> bool:
    """True on all processes if any of them was asked to stop (a collective if multi-process)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))


def _accumulate(averaged: dict[str, clu_metrics.Average] | None,
                metrics: dict[str, jax.Array]) -> dict[str, clu_metrics.Average]:
  """Running means of the step metrics (on device, no host sync)."""
  update = {k: clu_metrics.Average.from_model_output(v) for k, v in metrics.items()}
  return update if averaged is None else {k: averaged[k].merge(v) for k, v in update.items()}


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


def train_and_evaluate(config: ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from WORKDIR/checkpoints if present) and returns the final state."""
  exp = create_experiment(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  manager = checkpoint.create_manager(ckpt_dir, max_to_keep=config.checkpoint.keep,
                                      save_every=config.checkpoint.every,
                                      async_save=config.checkpoint.get("async_save", True))
  state = checkpoint.restore_latest(manager, exp.state)
  if state is None:
    state, start = exp.state, 0
  else:
    start = int(jax.device_get(state.step))
    logging.info("Resumed from %s at step %d.", ckpt_dir, start)

  writer = metrics_io.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
  if start == 0 and jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  real = _real_reference(config, config.sample.num_png)
  dataset = create_dataset(config, start)
  num_steps = config.num_steps
  averaged = None
  png = None
  t0, t_start, step = time.time(), start, start
  with _StopRequest() as stop:
    while step < num_steps:
      batch = sharding.global_batch(_train_inputs(next(dataset)), exp.mesh)
      state, metrics = exp.step_fn(state, batch, exp.encoder_params)
      step += 1
      averaged = _accumulate(averaged, metrics)

      if step % config.log_every == 0 or step == num_steps:
        scalars = {k: v.compute() for k, v in averaged.items()}
        rate = (step - t_start) / max(time.time() - t0, 1e-9)
        writer.write_scalars(step, {**scalars, "steps_per_sec": rate})
        logging.info("step %d/%d | loss %.5f | %.1f steps/s | ETA %s", step, num_steps,
                     float(scalars["loss"]), rate, _format_eta((num_steps - step) / rate))
        averaged, t0, t_start = None, time.time(), step
      if step % config.checkpoint.every == 0:
        checkpoint.save(manager, step, state)
      if step % config.sample.every == 0 or step == num_steps:
        png = _write_samples(exp, state, step, real, writer, workdir) or png
      stop_now = stop.requested if jax.process_count() == 1 else (
          step % config.log_every == 0 and stop.any_process())
      if stop_now:
        break
    manager.wait_until_finished()
    if manager.latest_step() != step:
      checkpoint.save(manager, step, state, force=True)
    manager.wait_until_finished()
    manager.close()
  writer.close()
  if jax.process_index() == 0:
    print(f"Finished at step {step}.\n  checkpoints: {ckpt_dir}\n  metrics:     {writer.path}"
          f"\n  samples:     {png}", flush=True)
  return state


def restore_for_eval(config: ConfigDict, workdir: str) -> TrainState:
  """The latest checkpointed state of WORKDIR (for sampling/evaluation binaries)."""
  exp = create_experiment(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  manager = checkpoint.create_manager(ckpt_dir, max_to_keep=config.checkpoint.keep,
                                      save_every=config.checkpoint.every, async_save=False)
  state = checkpoint.restore_latest(manager, exp.state)
  manager.close()
  if state is None:
    raise ValueError(f"No checkpoint found in {ckpt_dir}.")
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


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax (one block per save) from the console; keeps warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports a bad --config.* override in one line, not a traceback."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise SystemExit(f"FATAL flags parsing error: {message}\nPass --helpfull to see flags.")


def main(argv: list[str]) -> None:
  del argv
  logging.get_absl_logger().addFilter(_QuietLibraries())
  maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)
