"""Class-conditional training with guidance end to end on the toy: the step, resume, sampling
any class at any α, and the errors a user gets for a label or α the run cannot take."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import load_config, subprocess_env, without_timing  # pylint: disable=g-import-not-at-top,wrong-import-position

from lookahead_drift import experiment, guidance, inference, input_pipeline, metrics_io, train_loop  # pylint: disable=g-import-not-at-top,wrong-import-position


def cond_config(**updates):
  config = load_config("toy2d_cond", "smoke")
  config.tensorboard = False
  config.update_from_flattened_dict({"optimizer.schedule": "constant", "sample.every": 1000,
                                     **updates})
  return config


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cond") / "run"
  state = jax.device_get(train_loop.run(cond_config(), str(workdir)))
  return workdir, state


def test_step_trains_per_label_with_alpha_and_weighted_negatives():
  config = cond_config()
  exp = experiment.create_experiment(config)
  batch = experiment.train_inputs(next(experiment.create_dataset(config, 0)))
  assert batch["image"].shape == (8, 4, 2) and batch["neg_image"].shape == (8, 2, 2)
  state = exp.state
  for _ in range(3):  # past the 2 warmup steps (the first has learning rate 0)
    state, metrics = exp.step_fn(state, batch, exp.encoder_params)
  assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))
  assert 1.0 <= float(metrics["guidance/alpha_mean"]) <= 3.0
  # The label and α embeddings are trained (exp.state was donated: compare a fresh init).
  fresh = experiment.create_experiment(config)
  embed = lambda p: p["params"]["ConditionEmbedding_0"]
  before, after = jax.device_get(embed(fresh.state.params)), jax.device_get(embed(state.params))
  assert not np.allclose(before["label_embed"]["embedding"], after["label_embed"]["embedding"])
  assert not np.allclose(before["alpha_embed"]["kernel"], after["alpha_embed"]["kernel"])


def test_conditional_resume_matches_uninterrupted_run(tmp_path):
  full = jax.device_get(train_loop.run(cond_config(), str(tmp_path / "full")))
  train_loop.run(cond_config(num_steps=3), str(tmp_path / "resumed"))
  resumed = jax.device_get(train_loop.run(cond_config(), str(tmp_path / "resumed")))
  for name in ("params", "ema_params", "opt_state", "rng"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                 getattr(resumed, name), getattr(full, name))
  records = metrics_io.read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))
  full_records = metrics_io.read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))
  assert without_timing(records[2:]) == without_timing(full_records[1:])


def test_sampling_picks_labels_and_alpha(cond_run):
  workdir, state = cond_run
  trained = inference.restore(str(workdir))
  labels, alpha = inference.conditions(trained.config, 7, ["2", "5"], 2.5)
  np.testing.assert_array_equal(labels, [2, 2, 2, 2, 5, 5, 5])
  assert alpha == 2.5
  default, _ = inference.conditions(trained.config, 10)
  np.testing.assert_array_equal(default, [0, 1, 2, 3, 4, 5, 6, 7, 0, 1])
  key = jax.random.PRNGKey(0)
  a = inference.generate(trained.config, state.ema_params, 64, key, labels=np.zeros(64), alpha=1.0)
  b = inference.generate(trained.config, state.ema_params, 64, key, labels=np.full(64, 4),
                         alpha=1.0)
  c = inference.generate(trained.config, state.ema_params, 64, key, labels=np.zeros(64),
                         alpha=3.0)
  assert not np.allclose(a, b) and not np.allclose(a, c)  # label and α both reach the output


def test_sample_cli_labels_and_cfg_scale(cond_run, tmp_path):
  workdir, _ = cond_run
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "lookahead_drift.sample", f"--workdir={workdir}", *args],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  proc = run("--num_samples=40", "--labels=1,6", "--cfg_scale=2", f"--out={tmp_path}/s.npz")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "α = 2, labels [1, 6]" in proc.stdout
  with np.load(tmp_path / "s.npz") as f:
    assert f["samples"].shape == (40, 2)
    np.testing.assert_array_equal(f["labels"], [1] * 20 + [6] * 20)
  proc = run("--num_samples=4", "--labels=8", f"--out={tmp_path}/t.npz")
  assert proc.returncode == 2 and "label 8 is outside [0, 8)" in proc.stderr, proc.stderr[-2000:]
  proc = run("--num_samples=4", "--cfg_scale=7.5", f"--out={tmp_path}/t.npz")
  assert proc.returncode == 2 and "cfg_scale 7.5 is outside the trained range [1, 3]" in \
      proc.stderr, proc.stderr[-2000:]


def test_unconditional_run_refuses_labels(tmp_path):
  config = load_config("toy2d", "smoke")
  with pytest.raises(Exception, match="unconditional"):
    inference.conditions(config, 4, ["1"], 1.0)
  assert inference.conditions(config, 4) == (None, 1.0)


def test_conditional_config_mismatch_is_named():
  config = cond_config()
  config.data.name = "swiss_roll"  # one class: 8 labels per step cannot be drawn
  with pytest.raises(ValueError, match="num_classes=8"):
    guidance.from_config(config)
  assert input_pipeline.NUM_CLASSES["swiss_roll"] == 1
