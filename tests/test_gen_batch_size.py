"""config.gen_batch_size: generated samples per step independent of the positives."""

import importlib

import jax
import pytest

from lookahead_drift import drift
from lookahead_drift import experiment
from lookahead_drift import sharding


def _toy(**updates):
  config = importlib.import_module("configs.toy2d").get_config("smoke")
  config.tensorboard = False
  config.update_from_flattened_dict(updates)
  return config


@pytest.mark.parametrize("gen_batch_size,expected", [(0, 32), (8, 8), (64, 64)])
def test_generated_count_follows_gen_batch_size(monkeypatch, gen_batch_size, expected):
  seen = []
  real_loss = drift.drift_loss

  def spy(gen_feats, pos_feats, **kw):
    seen.append((next(iter(gen_feats.values())).shape[1],
                 next(iter(pos_feats.values())).shape[1]))
    return real_loss(gen_feats, pos_feats, **kw)

  monkeypatch.setattr(drift, "drift_loss", spy)
  config = _toy(gen_batch_size=gen_batch_size)
  exp = experiment.create_experiment(config)
  batch = next(experiment.create_dataset(config, 0))
  state, metrics = exp.step_fn(exp.state, sharding.global_batch(
      {"image": batch["image"]}, exp.mesh), exp.encoder_params)
  assert seen == [(expected, 32)]  # traced once: generated rows, positive rows
  assert int(state.step) == 1 and bool(jax.numpy.isfinite(metrics["loss"]))


def test_gen_batch_size_is_refused_for_conditional_runs():
  config = importlib.import_module("configs.toy2d_cond").get_config()
  config.gen_batch_size = 16
  with pytest.raises(ValueError, match="gen_batch_size applies to unconditional runs"):
    experiment.create_experiment(config)
