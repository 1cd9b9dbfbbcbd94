"""Train step, resume, config overrides and an end-to-end smoke run of the toy config."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from lookahead_drift import encoder
from lookahead_drift import metrics_io
from lookahead_drift import sharding
from lookahead_drift import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def subprocess_env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, **extra)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  return env


def smoke_config(**updates) -> ml_collections.ConfigDict:
  config = load_config("toy2d", "smoke")
  config.tensorboard = False
  config.update_from_flattened_dict(updates)
  return config


def test_one_step_toy_updates_params_and_ema():
  config = smoke_config()
  exp = train.create_experiment(config)
  dataset = train.create_dataset(config, 0)
  state = exp.state
  for _ in range(2):  # the warmup gives step 0 a zero learning rate
    batch = next(dataset)
    assert batch["image"].shape == (32, 2)
    before = jax.device_get(state)
    state, metrics = exp.step_fn(
        state, sharding.global_batch({"image": batch["image"]}, exp.mesh), exp.encoder_params)
  after = jax.device_get(state)
  assert int(after.step) == 2
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  assert any("drift/" in k for k in metrics)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before.params, after.params)
  assert all(jax.tree.leaves(changed))
  expected_ema = jax.tree.map(lambda e, p: 0.99 * e + 0.01 * p, before.ema_params, after.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               after.ema_params, expected_ema)
  np.testing.assert_array_equal(after.rng, before.rng)  # per-step keys come from fold_in


def test_one_step_unet_conv_encoder_bfloat16(tmp_path):
  shape = (8, 8, 1)
  enc = encoder.ConvEncoder(widths=(4,), blocks_per_stage=1)
  enc_params = enc.init(jax.random.PRNGKey(1), jnp.zeros((1, *shape)))
  enc_dir = encoder.save_encoder(str(tmp_path / "enc"), enc_params,
                                 {"widths": [4], "blocks_per_stage": 1,
                                  "image_shape": list(shape)})
  config = load_config("fashion_mnist")
  config.data.batch_size = 8
  # Tiny on purpose: the UNet's compile time dominates this test on a 2-core CPU.
  config.model.update(image_shape=shape, base_channels=4, channel_mults=(1,),
                      attention=False, dtype="bfloat16")
  config.encoder.update(checkpoint=enc_dir, patch_sizes=(2,))
  exp = train.create_experiment(config)
  images = np.random.default_rng(0).uniform(-1, 1, (8, *shape)).astype(np.float32)
  state = exp.state
  for _ in range(2):
    state, metrics = exp.step_fn(state, sharding.global_batch({"image": images}, exp.mesh),
                                 exp.encoder_params)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  assert len([k for k in metrics if k.startswith("drift/")]) >= 1
  assert float(metrics["learning_rate"]) > 0
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))  # f32 params


def test_resume_matches_uninterrupted_run(tmp_path):
  config = smoke_config(**{"optimizer.schedule": "constant", "num_steps": 6,
                           "sample.every": 1000})
  full = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "full")))

  first = smoke_config(**{"optimizer.schedule": "constant", "num_steps": 3,
                          "sample.every": 1000})
  assert int(jax.device_get(train.train_and_evaluate(first, str(tmp_path / "resumed")).step)) == 3
  resumed = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "resumed")))

  assert int(resumed.step) == int(full.step) == 6
  for name in ("params", "ema_params", "opt_state", "rng"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                 getattr(resumed, name), getattr(full, name))
  steps = [r["step"] for r in metrics_io.read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))]
  assert steps == [2, 3, 4, 6]  # the second launch went on from step 4, repeating nothing


def test_misspelled_override_fails_before_any_work(tmp_path):
  workdir = tmp_path / "wd"
  proc = subprocess.run(
      [sys.executable, "-m", "lookahead_drift.train", "--config=configs/toy2d.py:smoke",
       f"--workdir={workdir}", "--config.optimzer.learning_rate=0.1"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'Did you mean "optimizer"' in proc.stderr and "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_cli_smoke_run_writes_checkpoint_metrics_and_png(tmp_path):
  workdir = tmp_path / "toy"
  proc = subprocess.run(
      [sys.executable, "-m", "lookahead_drift.train", "--config=configs/toy2d.py:smoke",
       f"--workdir={workdir}", "--config.tensorboard=False"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / "checkpoints" / "6").is_dir()
  records = metrics_io.read_jsonl(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in records] == [2, 4, 6]
  assert all(np.isfinite(r["loss"]) and r["steps_per_sec"] > 0 for r in records)
  png = workdir / "samples" / "step_0000006.png"
  assert Image.open(png).size == (800, 400)
  assert str(png) in proc.stdout and str(workdir / "metrics.jsonl") in proc.stdout
  assert json.loads((workdir / "config.json").read_text())["num_steps"] == 6


def test_metric_writer_writes_jsonl_and_guards_tensorboard(tmp_path):
  writer = metrics_io.MetricWriter(str(tmp_path), tensorboard=True)
  has_tf = importlib.util.find_spec("tensorflow") is not None
  assert writer.has_tensorboard == has_tf
  writer.write_scalars(3, {"loss": jnp.float32(1.5), "n": 2})
  writer.write_images(3, {"samples": np.zeros((1, 4, 4, 1), np.uint8)})
  writer.close()
  assert metrics_io.read_jsonl(str(tmp_path / "metrics.jsonl")) == [
      {"step": 3, "loss": 1.5, "n": 2}]
