"""config.generator_chunks: the generator's backward pass in groups of samples (memory), the
same step as in one piece."""

import importlib

import jax
import numpy as np
import pytest

from lookahead_drift import experiment
from lookahead_drift import sharding


def _config(name: str, **updates):
  config = importlib.import_module(f"configs.{name}").get_config(
      *(["smoke"] if name == "toy2d" else []))
  config.tensorboard = False
  config.update_from_flattened_dict(updates)
  return config


def _one_step(config):
  exp = experiment.create_experiment(config)
  local = experiment.train_inputs(next(experiment.create_dataset(config, 0)))
  state, metrics = exp.step_fn(exp.state, sharding.global_batch(local, exp.mesh),
                               exp.encoder_params)
  return jax.device_get((state.params, metrics["loss"], metrics["grad_norm"]))


@pytest.mark.parametrize("name,chunks", [("toy2d", 4), ("toy2d_cond", 2)])
def test_chunked_generator_backward_is_the_same_step(name, chunks):
  params, loss, grad_norm = _one_step(_config(name))
  chunked_params, chunked_loss, chunked_grad_norm = _one_step(
      _config(name, generator_chunks=chunks))
  assert float(chunked_loss) == pytest.approx(float(loss), rel=1e-6)
  assert float(chunked_grad_norm) == pytest.approx(float(grad_norm), rel=1e-5)
  assert float(grad_norm) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               chunked_params, params)


def test_generator_chunks_must_divide_the_generated_samples():
  with pytest.raises(ValueError, match="generator_chunks=5 must divide the 32 samples"):
    experiment.create_experiment(_config("toy2d", generator_chunks=5))
