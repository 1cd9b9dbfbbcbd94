"""One training run's computation, built from a config: the train state and `train_step`.

`create_experiment(config)` builds the generator, the frozen feature encoder, the optimizer,
the initial sharded `TrainState` and the jitted step; `train_step` is the one update
(generate, embed, drift loss, AdamW, EMA), a pure function of the state and a global batch.
The loop around it (resume, logging, preemption) is `train_loop.py`.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lookahead_drift import drift
from lookahead_drift import encoder
from lookahead_drift import guidance
from lookahead_drift import input_pipeline
from lookahead_drift import models
from lookahead_drift import sharding

PyTree = Any
ConfigDict = ml_collections.ConfigDict
# Metrics whose non-finite value marks a step as bad (bit i of metrics["nonfinite"]: entry i).
NONFINITE_METRICS = ("loss", "grad_norm", "param_norm")


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; the data position is `step`."""
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  rng: jax.Array  # base key (raw uint32[2]); step t uses fold_in(rng, t)
  # The loss's state across steps (drift.init_loss_state): running term norms for
  # loss.term_scaling="norm" with norm_momentum > 0, else {} (no arrays; checkpoints written
  # before this field restore into it).
  loss_state: PyTree = flax.struct.field(default_factory=dict)


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


@dataclasses.dataclass(frozen=True)
class _DriftProblem:
  """What a step's generated samples are drifted against, and how they are generated."""
  num_gen: int  # samples to generate
  gen_inputs: dict[str, jax.Array]  # the generator's conditions per sample ({}: none)
  rows: Callable[[PyTree], PyTree]  # features -> the loss's layout (per label when conditional)
  pos_feats: PyTree  # the positives' features (no gradient)
  loss_inputs: dict[str, jax.Array]  # drift_loss's negatives and their weights ({}: none)
  metrics: dict[str, jax.Array]  # extra metrics of the step


def _drift_problem(batch: dict[str, jax.Array], embed: Callable, rng: jax.Array,
                   cond: guidance.Guidance | None, num_generated: int) -> _DriftProblem:
  """The step's problem: the positives' features, and for conditional batches α per label,
  the generator's labels and α, and the unconditional negatives (see train_step)."""
  real = batch["image"]
  if cond is None:
    return _DriftProblem(num_generated or real.shape[0], {}, lambda feats: feats,
                         jax.lax.stop_gradient(embed(real)), {}, {})
  labels = batch["label"]
  num_labels = labels.shape[0]
  alpha = guidance.sample_alpha(jax.random.fold_in(rng, 1), num_labels, cond)
  per_sample = lambda a: jnp.repeat(a, cond.gen_per_label, axis=0)
  gen_inputs = {"labels": per_sample(labels), "alpha": per_sample(alpha)}
  rows = lambda feats: guidance.rows_by_label(feats, num_labels)  # -> [C, G, K, D]
  flat = lambda x: x.reshape((-1, *x.shape[2:]))                    # [C, K, ...] -> [C·K, ...]
  pos_feats = jax.lax.stop_gradient(rows(embed(flat(real))))
  loss_inputs = {}
  if cond.neg_per_label:
    loss_inputs = {"neg_feats": jax.lax.stop_gradient(rows(embed(flat(batch["neg_image"])))),
                   "neg_weights": guidance.negative_weights(alpha, cond)}
  return _DriftProblem(num_labels * cond.gen_per_label, gen_inputs, rows, pos_feats,
                       loss_inputs, {"guidance/alpha_mean": jnp.mean(alpha)})


def _nonfinite_bits(metrics: dict[str, jax.Array]) -> jax.Array:
  """Bit i set for each non-finite metrics[NONFINITE_METRICS[i]] (0: a good step)."""
  bad = [~jnp.all(jnp.isfinite(metrics[k])) for k in NONFINITE_METRICS]
  return sum(b.astype(jnp.int32) << i for i, b in enumerate(bad))


def _next_state(state: TrainState, keep_new: jax.Array, **new: PyTree) -> TrainState:
  """`state` one step on, with the `new` fields where `keep_new`, else the old ones."""
  pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep_new, a, b), new, old)
  return state.replace(step=state.step + 1,
                       **{k: pick(v, getattr(state, k)) for k, v in new.items()})


def _value_and_grad_in_chunks(generate: Callable, params: PyTree, noise: jax.Array,
                              inputs: dict[str, jax.Array], loss_of: Callable, chunks: int):
  """jax.value_and_grad(lambda p: loss_of(generate(p, noise, inputs)), has_aux=True)(params),
  with the generator's backward pass taken over `chunks` groups of samples in turn, each
  group's forward pass recomputed: the generator's saved activations shrink `chunks`-fold
  for one more forward pass. Samples are dealt round-robin, so a data-sharded batch keeps
  every device busy in every group."""
  generated = generate(params, noise, inputs)  # not differentiated: nothing saved
  (loss, aux), cotangent = jax.value_and_grad(loss_of, has_aux=True)(generated)
  deal = lambda x: x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]).swapaxes(0, 1)

  def add_group(total, group):
    noise_g, inputs_g, cotangent_g = group
    _, pull_back = jax.vjp(lambda p: generate(p, noise_g, inputs_g), params)
    return jax.tree.map(jnp.add, total, pull_back(cotangent_g)[0]), None

  grads, _ = jax.lax.scan(add_group, jax.tree.map(jnp.zeros_like, params),
                          jax.tree.map(deal, (noise, inputs, cotangent)))
  return (loss, aux), grads


def train_step(state: TrainState, batch: dict[str, jax.Array], encoder_params: PyTree, *,
               generator: Any, noise_shape: tuple[int, ...], feature_fn: Callable,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               loss_config: drift.LossConfig, ema_decay: float,
               noise_sharding: jax.sharding.Sharding | None = None,
               cond: guidance.Guidance | None = None, num_generated: int = 0,
               generator_chunks: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on the GLOBAL batch: generate, embed, drift loss, AdamW, EMA.

  Unconditional: batch {"image": [M, ...]}, `num_generated` generated samples (0: M) against
  the M positives (a positive costs one encoder pass; a generated sample costs generator and
  encoder passes both ways).
  Class-conditional (`cond`): batch {"label": [C], "image": [C, M, ...], "neg_image":
  [C, L, ...]}; α drawn per label, `cond.gen_per_label` samples generated per label with its
  label and α, and one drift problem per (label, feature group) with the unconditional
  negatives weighted (α − 1)(N − 1)/L (drifting.md §4).
  The batch arrays arrive sharded over "data"; the drift loss couples all samples, so XLA
  inserts the needed collectives and the result does not depend on the device count.
  A step whose loss, gradient or new parameters are not finite changes only `step`; its
  metrics["nonfinite"] has bit i set for each bad NONFINITE_METRICS[i] (0: a good step).
  generator_chunks > 1: the generator's backward pass in that many groups of samples
  (_value_and_grad_in_chunks), for memory; the same gradient up to rounding.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  as_f32 = lambda tree: jax.tree.map(lambda f: f.astype(jnp.float32), tree)
  embed = lambda x: as_f32(feature_fn(encoder_params, x))
  problem = _drift_problem(batch, embed, rng, cond, num_generated)
  noise = jax.random.normal(rng, (problem.num_gen, *noise_shape), jnp.float32)
  if noise_sharding is not None:
    noise = jax.lax.with_sharding_constraint(noise, noise_sharding)

  generate = lambda params, noise, inputs: generator.apply(params, noise, **inputs).astype(
      jnp.float32)

  def loss_of(generated):
    loss, metrics, loss_state = drift.drift_loss(
        problem.rows(embed(generated)), problem.pos_feats, config=loss_config,
        loss_state=state.loss_state, **problem.loss_inputs)
    return loss, (metrics, loss_state)

  if generator_chunks == 1:
    (loss, (loss_metrics, loss_state)), grads = jax.value_and_grad(
        lambda p: loss_of(generate(p, noise, problem.gen_inputs)), has_aux=True)(state.params)
  else:
    (loss, (loss_metrics, loss_state)), grads = _value_and_grad_in_chunks(
        generate, state.params, noise, problem.gen_inputs, loss_of, generator_chunks)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                            state.ema_params, params)
  metrics = {**{f"drift/{k}": v for k, v in loss_metrics.items()}, **problem.metrics,
             "loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "learning_rate": schedule(state.step)}
  metrics["nonfinite"] = _nonfinite_bits(metrics)
  new_state = _next_state(state, metrics["nonfinite"] == 0, params=params,
                          ema_params=ema_params, opt_state=opt_state, loss_state=loss_state)
  return new_state, metrics


@dataclasses.dataclass
class Experiment:
  """What the train loop, tests and benchmarks need, built once from a config."""
  config: ConfigDict
  mesh: jax.sharding.Mesh
  state: TrainState  # freshly initialised, sharded (donated by the first step that uses it)
  state_shardings: TrainState
  encoder_params: PyTree  # replicated on the mesh
  step_fn: Callable  # jitted (state, global batch, encoder_params) -> (state, metrics)
  generate_fn: Callable  # jitted generator.apply (params, noise, **conditions) -> samples
  noise_shape: tuple[int, ...]  # of one sample's noise


def create_experiment(config: ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Experiment:
  """Builds model, encoder, optimizer, initial sharded state and the compiled-once step."""
  mesh = mesh or sharding.create_mesh(config.mesh.num_model)
  cond = guidance.from_config(config)
  sharding.check_batch_size(config.data.batch_size if cond is None else cond.labels_per_step,
                            mesh)
  num_generated = config.get("gen_batch_size", 0) or 0
  if num_generated and cond is not None:
    raise ValueError("config.gen_batch_size applies to unconditional runs; conditional runs "
                     "set conditional.gen_per_label.")
  if num_generated:
    sharding.check_batch_size(num_generated, mesh, field="gen_batch_size")
  generator_chunks = int(config.get("generator_chunks", 1) or 1)
  per_step = (cond.labels_per_step * cond.gen_per_label if cond is not None
              else num_generated or config.data.batch_size)
  if per_step % generator_chunks:
    raise ValueError(f"config.generator_chunks={generator_chunks} must divide the "
                     f"{per_step} samples generated per step.")
  generator, noise_shape = models.create_generator(config.model)
  noise_shape = tuple(noise_shape)
  feature_fn, encoder_params = encoder.create_feature_fn(config.encoder)
  optimizer, schedule = create_optimizer(config)
  loss_config = create_loss_config(config)
  conditions = models.example_conditions(config.model, 1)

  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params = generator.init(init_rng, jnp.zeros((1, *noise_shape), jnp.float32), **conditions)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=optimizer.init(params), rng=state_rng,
                      loss_state=drift.init_loss_state(loss_config, feature_names(params)))

  def feature_names(params: PyTree) -> list[str]:
    """The encoder's feature maps, as drift_loss names them (traced only when needed)."""
    if not loss_config.stateful:
      return []
    feats = jax.eval_shape(lambda p: feature_fn(encoder_params, generator.apply(
        p, jnp.zeros((1, *noise_shape), jnp.float32), **conditions)), params)
    return list(feats) if isinstance(feats, dict) else ["features"]

  rng = jax.random.PRNGKey(config.seed)
  state_shardings = sharding.tree_shardings(jax.eval_shape(init, rng), mesh,
                                            config.mesh.shard_params)
  state = jax.jit(init, out_shardings=state_shardings)(rng)
  encoder_params = sharding.replicate(encoder_params, mesh)

  step = functools.partial(
      train_step, generator=generator, noise_shape=noise_shape, feature_fn=feature_fn,
      optimizer=optimizer, schedule=schedule, loss_config=loss_config,
      ema_decay=config.ema_decay, noise_sharding=sharding.batch_sharding(mesh), cond=cond,
      num_generated=num_generated, generator_chunks=generator_chunks)
  step_fn = jax.jit(
      step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,))
  # Samples of the state's own (sharded) params, replicated so that every process can read them.
  generate_fn = jax.jit(generator.apply, out_shardings=sharding.replicated(mesh))
  return Experiment(config, mesh, state, state_shardings, encoder_params, step_fn,
                    generate_fn, noise_shape)


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


def train_inputs(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The arrays the train step reads: the images, and for conditional batches (which carry
  "neg_image") the labels and negatives; unconditional batches' labels are not used."""
  keys = ("label", "image", "neg_image") if "neg_image" in local_batch else ("image",)
  return {k: local_batch[k] for k in keys}
