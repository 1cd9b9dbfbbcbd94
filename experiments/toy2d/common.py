"""What the toy studies share: the config (configs/toy2d.py plus overrides), the training
batches, and an arm: one config trained on many runs (data set, seed) at once, built with
`experiment.create_experiment` (its initial state per seed, its train step vmapped over runs).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lookahead_drift import experiment, input_pipeline, models

Batches = dict[str, np.ndarray]  # {"image": [R, T, ...], ...}: T steps of R runs


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """'path=value' items (e.g. 'loss.temperatures=(0.05, 0.2)') -> {path: value}; a value
  that is not a Python literal stays a string (e.g. bidirectional), lists become tuples."""
  out = {}
  for item in items:
    path, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    out[path.strip()] = tuple(value) if isinstance(value, list) else value
  return out


def make_config(overrides: Mapping[str, Any] = {}, arg: str | None = None,
                name: str = "toy2d") -> Any:
  """configs/<name>.py's get_config(arg) with {dotted path: value} overrides, each of which
  must name an existing field."""
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ValueError(f"{path!r} is not a field of configs/{name}.py")
    node[leaf] = value
  return config


def real_batches(streams: Sequence[Iterator[dict]], length: int) -> Batches:
  """The next `length` batches of each run's stream, stacked {key: [R, length, ...]}: the
  arrays the train step reads (`experiment.train_inputs`)."""
  runs = [[experiment.train_inputs(next(stream)) for _ in range(length)] for stream in streams]
  return {key: np.stack([np.stack([b[key] for b in run]) for run in runs]) for key in runs[0][0]}


def train_streams(config: Any, datasets: Sequence[str]) -> list[Iterator[dict]]:
  """The train binary's batches (`experiment.create_dataset`) of `config` on each data set."""
  out = []
  for name in datasets:
    one = config.copy_and_resolve_references()
    one.data.name = name
    out.append(experiment.create_dataset(one, start_step=0))
  return out


def chunked_stream(name: str, seed: int, chunk: int, batch: int, stream: int) -> Iterator[dict]:
  """Unconditional batches drawn a chunk at a time: chunk c is `chunk` batches from the
  sample stream [seed, c, stream]."""
  c = 0
  while True:
    points = input_pipeline.sample_toy(name, chunk * batch, [seed, c, stream])
    yield from ({"image": p} for p in points.reshape(chunk, batch, 2))
    c += 1


def generate_fn(model_config: Any) -> tuple[Callable, tuple[int, ...]]:
  """(params, noise [n, ...]) -> samples [n, 2] of the config's generator (labels cycling
  over the classes and α = 1 for a conditional one); and the noise shape of a sample."""
  generator, noise_shape = models.create_generator(model_config)
  num_classes = int(model_config.get("num_classes", 0))

  def generate(params, noise):
    conditions = models.example_conditions(model_config, noise.shape[0])
    if num_classes:
      conditions["labels"] = jnp.arange(noise.shape[0], dtype=jnp.int32) % num_classes
    return generator.apply(params, noise, **conditions)

  return generate, tuple(noise_shape)


@dataclasses.dataclass
class Arm:
  """One config trained on R runs at once: their initial states and a jit-ed chunk of steps."""
  init: Callable  # seeds [R] -> TrainState with a leading run axis
  chunk: Callable  # (states, Batches) -> states: T steps of every run (scanned)


# Initial states by _init_key: every arm of a study with the same model, optimizer structure
# and seed starts from the same state, so create_experiment (one compile of its init) runs
# once per such key and seed, not once per arm and seed.
_STATES: dict[tuple, experiment.TrainState] = {}


def _init_key(config: Any, seed: int) -> tuple:
  """What create_experiment's initial state depends on: the seed, the model and the optimizer
  (its state starts at zero whatever the learning rate and its end value)."""
  opt = {k: v for k, v in config.optimizer.items() if k not in ("learning_rate", "end_value")}
  return seed, config.model.to_json(), repr(sorted(opt.items()))


def _initial_state(config: Any, seed: int) -> experiment.TrainState:
  """create_experiment's initial state of `config` with config.seed = seed (cached)."""
  key = _init_key(config, seed)
  if key not in _STATES:
    one = config.copy_and_resolve_references()
    one.seed = seed
    _STATES[key] = experiment.create_experiment(one).state
  return _STATES[key]


def arm_from_config(config: Any) -> Arm:
  """An Arm of `experiment.create_experiment(config)`: run r starts from the state it builds
  with config.seed = seeds[r] and trains with its step, vmapped over runs."""
  exp = experiment.create_experiment(config)
  key = _init_key(config, int(config.seed))
  if key in _STATES and not all(jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(jnp.array_equal(a, b)), _STATES[key], exp.state))):
    raise AssertionError("the initial state depends on more than common._init_key")
  _STATES[key] = exp.state
  step = jax.vmap(exp.step_fn, in_axes=(0, 0, None))

  def init(seeds: Sequence[int]) -> experiment.TrainState:
    return jax.tree.map(lambda *x: jnp.stack(x), *[_initial_state(config, int(s)) for s in seeds])

  def chunk(states: experiment.TrainState, batches: Batches) -> experiment.TrainState:
    def body(st, batch):  # batch {key: [R, ...]}: one step of every run
      return step(st, batch, exp.encoder_params)[0], None

    return jax.lax.scan(body, states, jax.tree.map(lambda b: jnp.swapaxes(b, 0, 1), batches))[0]

  return Arm(init, jax.jit(chunk, donate_argnums=0))
