"""Train step, resume, config overrides and an end-to-end smoke run of the toy config."""

import io
import json
import pathlib
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from lookahead_drift import checkpoint
from lookahead_drift import cli
from lookahead_drift import encoder
from lookahead_drift import metrics_io
from lookahead_drift import models
from lookahead_drift import experiment
from lookahead_drift import sharding
from lookahead_drift import train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import load_config, restore_train_state, smoke_config, subprocess_env, without_timing  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_one_step_toy_updates_params_and_ema():
  config = smoke_config()
  exp = experiment.create_experiment(config)
  dataset = experiment.create_dataset(config, 0)
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
  exp = experiment.create_experiment(config)
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
  full = jax.device_get(train_loop.run(config, str(tmp_path / "full")))

  first = smoke_config(**{"optimizer.schedule": "constant", "num_steps": 3,
                          "sample.every": 1000})
  assert int(jax.device_get(train_loop.run(first, str(tmp_path / "resumed")).step)) == 3
  resumed = jax.device_get(train_loop.run(config, str(tmp_path / "resumed")))

  assert int(resumed.step) == int(full.step) == 6
  for name in ("params", "ema_params", "opt_state", "rng"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                 getattr(resumed, name), getattr(full, name))
  records = metrics_io.read_jsonl(str(tmp_path / "resumed" / "metrics.jsonl"))
  assert [r["step"] for r in records] == [2, 3, 4, 6]  # nothing repeated after the resume
  # The window of step 4 (steps 3 and 4) is whole: the checkpoint carried step 3's sums.
  full_records = metrics_io.read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))
  assert without_timing(records[2:]) == without_timing(full_records[1:])


def test_norm_momentum_resume_is_bit_exact(tmp_path):
  """The running term norms live in the train state and its checkpoints: 6 steps straight
  equal 3 steps, a checkpoint and 3 more, bit for bit (params and running norms)."""
  flags = {"num_steps": 6, "sample.every": 1000, "loss.num_lookahead": 2,
           "loss.term_scaling": "norm", "loss.norm_momentum": 0.9, "loss.lookahead_tol": 0.1}
  full = jax.device_get(train_loop.run(smoke_config(**flags), str(tmp_path / "full")))
  train_loop.run(smoke_config(**{**flags, "num_steps": 3}), str(tmp_path / "resumed"))
  at_3 = jax.device_get(restore_train_state(smoke_config(**flags), str(tmp_path / "resumed")))
  resumed = jax.device_get(train_loop.run(smoke_config(**flags), str(tmp_path / "resumed")))
  norms = full.loss_state["term_norms"]["x"]
  assert norms.shape == (3, 3) and np.all(norms > 0)
  assert not np.array_equal(at_3.loss_state["term_norms"]["x"], norms)
  for name in ("step", "params", "ema_params", "opt_state", "rng", "loss_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name), getattr(full, name))
  logged = metrics_io.read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))
  assert all(1 <= r["drift/lookahead/terms_used"] <= 3 for r in logged)


def test_loss_options_from_the_command_line_and_old_configs_resume(tmp_path):
  """--config.loss.{term_scaling,norm_momentum,lookahead_tol} reach drift.LossConfig; a run
  whose saved config predates those fields resumes without a config change."""
  config = smoke_config()
  config.update_from_flattened_dict({"loss.term_scaling": "norm", "loss.norm_momentum": 0.9,
                                     "loss.lookahead_tol": 0.1})
  loss = experiment.create_loss_config(config)
  assert (loss.term_scaling, loss.norm_momentum, loss.lookahead_tol) == ("norm", 0.9, 0.1)
  workdir = tmp_path / "run"
  train_loop.run(smoke_config(num_steps=2), str(workdir))
  saved = json.loads((workdir / "config.json").read_text())
  for key in ("norm_momentum", "lookahead_tol"):
    del saved["loss"][key]
  (workdir / "config.json").write_text(json.dumps(saved))
  assert int(train_loop.run(smoke_config(num_steps=3), str(workdir)).step) == 3
  with pytest.raises(cli.UserError, match=r"loss.norm_momentum: 0.0 -> 0.9"):
    train_loop.run(smoke_config(**{"num_steps": 4, "loss.term_scaling": "norm",
                                   "loss.norm_momentum": 0.9}), str(workdir))


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
  assert all(np.isfinite(r["loss"]) and r["steps_per_sec"] > 0 and r["nonfinite_steps"] == 0
             for r in records)
  png = workdir / "samples" / "step_0000006.png"
  assert Image.open(png).size == (800, 400)
  assert str(png) in proc.stdout and str(workdir / "metrics.jsonl") in proc.stdout
  assert json.loads((workdir / "config.json").read_text())["num_steps"] == 6


def test_metric_writer_writes_jsonl_and_guards_tensorboard(tmp_path):
  writer = metrics_io.MetricWriter(str(tmp_path), tensorboard=True)
  assert writer.has_tensorboard  # clu with TensorFlow, else tensorboardX (a dependency)
  writer.write_scalars(3, {"loss": jnp.float32(1.5), "n": 2})
  writer.write_scalars(4, {"loss": jnp.float32(np.nan), "v": np.array([1.0, np.inf])})
  writer.write_images(3, {"samples": np.zeros((1, 4, 4, 1), np.uint8)})
  writer.close()
  path = tmp_path / "metrics.jsonl"
  strict = lambda token: pytest.fail(f"non-standard JSON token {token}")
  assert [json.loads(line, parse_constant=strict) for line in path.read_text().splitlines()] == [
      {"step": 3, "loss": 1.5, "n": 2}, {"step": 4, "loss": None, "v": [1.0, None]}]


def read_events(logdir: pathlib.Path) -> list:
  """The Event protos of the TensorBoard files under `logdir` (TFRecord framing: length,
  its CRC, the data, its CRC), read without TensorFlow."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for path in sorted(logdir.rglob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def test_tensorboardx_writes_scalars_and_images_tensorboard_reads(tmp_path):
  writer = metrics_io.TensorBoardXWriter(str(tmp_path))
  writer.write_scalars(3, {"loss": jnp.float32(1.5), "v": [1.0, None], "name": "text"})
  writer.write_scalars(5, {"loss": 0.25})
  grid = np.random.default_rng(0).integers(0, 256, (1, 5, 7, 3), dtype=np.uint8)
  writer.write_images(5, {"samples": grid})
  writer.close()
  values = [(e.step, v) for e in read_events(tmp_path) for v in e.summary.value]
  scalars = {(step, v.tag): v.simple_value for step, v in values if v.HasField("simple_value")}
  assert set(scalars) == {(3, "loss"), (3, "v/0"), (3, "v/1"), (5, "loss")}
  assert (scalars[(3, "loss")], scalars[(3, "v/0")], scalars[(5, "loss")]) == (1.5, 1.0, 0.25)
  assert np.isnan(scalars[(3, "v/1")])
  [image] = [v.image for step, v in values if step == 5 and v.tag == "samples"]
  assert (image.height, image.width, image.colorspace) == (5, 7, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))),
                                grid[0])


def test_truncate_after_drops_later_and_torn_records(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "a": 1}\n{"step": 4, "a": 2}\n{"step": 6, "a": 3}\n{"step": 8, "a')
  assert metrics_io.truncate_after(str(path), 4) == 2
  assert metrics_io.read_jsonl(str(path)) == [{"step": 2, "a": 1}, {"step": 4, "a": 2}]
  assert metrics_io.truncate_after(str(path), 4) == 0


def _nan_at(monkeypatch, bad_step: int) -> None:
  """Makes the batch of step `bad_step` (1-based) all NaN."""
  original = experiment.create_dataset

  def create_dataset(config, start_step):
    for step, batch in enumerate(original(config, start_step), start_step + 1):
      yield {**batch, "image": batch["image"] * np.nan} if step == bad_step else batch
  monkeypatch.setattr(experiment, "create_dataset", create_dataset)


def test_nonfinite_step_keeps_state_and_is_flagged():
  config = smoke_config()
  exp = experiment.create_experiment(config)
  before = jax.device_get(exp.state)
  batch = np.full((32, 2), np.nan, np.float32)
  state, metrics = exp.step_fn(exp.state, sharding.global_batch({"image": batch}, exp.mesh),
                               exp.encoder_params)
  after = jax.device_get(state)
  assert int(after.step) == 1 and int(metrics["nonfinite"]) & 1  # bit 0: the loss
  for name in ("params", "ema_params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(after, name), getattr(before, name))


def test_nonfinite_stop_names_step_and_last_good_checkpoint(tmp_path, monkeypatch):
  _nan_at(monkeypatch, 5)
  workdir = tmp_path / "run"
  config = smoke_config(**{"num_steps": 8, "sample.every": 1000, "checkpoint.every": 3})
  with pytest.raises(cli.NonFiniteError,
                     match=f"non-finite loss.* at step 5 .*Last good checkpoint: "
                           f"{workdir / 'checkpoints' / '3'}"):
    train_loop.run(config, str(workdir))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]
  records = metrics_io.read_jsonl(str(workdir / "metrics.jsonl"))
  assert [(r["step"], r["nonfinite_steps"]) for r in records] == [(2, 0), (4, 0), (6, 1)]
  assert not (workdir / "lock").exists()


def test_nonfinite_skip_skips_and_counts(tmp_path, monkeypatch):
  _nan_at(monkeypatch, 5)
  config = smoke_config(**{"num_steps": 8, "sample.every": 1000, "nonfinite": "skip"})
  state = jax.device_get(train_loop.run(config, str(tmp_path / "run")))
  assert int(state.step) == 8
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  records = metrics_io.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["nonfinite_steps"] for r in records] == [0, 0, 1, 0]
  assert all(np.isfinite(r["loss"]) for r in records)  # means over the good steps


def test_cli_learning_rate_1e38_stops_with_exit_4_and_strict_json(tmp_path):
  workdir = tmp_path / "wd"
  proc = subprocess.run(
      [sys.executable, "-m", "lookahead_drift.train", "--config=configs/toy2d.py:smoke",
       f"--workdir={workdir}", "--config.tensorboard=False", "--config.num_steps=30",
       "--config.optimizer.learning_rate=1e38", "--config.checkpoint.every=1"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
  assert proc.returncode == cli.EXIT_NONFINITE, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "non-finite" in last and "Last good checkpoint" in last and "Traceback" not in proc.stderr
  strict = lambda token: pytest.fail(f"non-standard JSON token {token}")
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    json.loads(line, parse_constant=strict)
  config = smoke_config(**{"optimizer.learning_rate": 1e38})
  exp = experiment.create_experiment(config)
  manager = checkpoint.create_manager(str(workdir / "checkpoints"), max_to_keep=2,
                                      save_every=1, create=False)
  steps = sorted(manager.all_steps())
  for step in steps:  # restore() refuses non-finite checkpoints
    checkpoint.restore(str(workdir / "checkpoints"), exp.state, step)
  manager.close()
  assert steps and f"checkpoints/{steps[-1]}" in last


def with_value(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted `key` set to `value`, of whatever type (no type check)."""
  tree = config.to_dict()
  *parents, last = key.split(".")
  node = tree
  for part in parents:
    node = node[part]
  node[last] = value
  return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize("key, value, expected", [
    ("optimizer.learning_rate", -1.0, "a finite number > 0"),
    ("optimizer.learning_rate", float("nan"), "a finite number > 0"),
    ("optimizer.learning_rate", float("inf"), "a finite number > 0"),
    ("optimizer.end_value", -1e-3, "a finite number >= 0"),
    ("optimizer.warmup_steps", -1, "an integer >= 0"),
    ("optimizer.warmup_steps", 2.0, "an integer >= 0"),
    ("optimizer.weight_decay", -0.1, "a finite number >= 0"),
    ("optimizer.b1", 1.0, "a finite number in [0, 1)"),
    ("optimizer.b2", -0.5, "a finite number in [0, 1)"),
    ("optimizer.grad_clip", float("nan"), "a finite number >= 0"),
    ("ema_decay", 2.0, "a finite number in [0, 1)"),
    ("loss.temperatures", (), "a non-empty list of finite numbers > 0"),
    ("loss.temperatures", ("",), "a non-empty list of finite numbers > 0"),
    ("loss.temperatures", (0.1, float("nan")), "a non-empty list of finite numbers > 0"),
    ("loss.temperatures", (0.1, 0.0), "a non-empty list of finite numbers > 0"),
    ("loss.step_size", float("nan"), "a finite number > 0"),
    ("loss.step_size", 0.0, "a finite number > 0"),
    ("gen_batch_size", -1, "an integer >= 0"),
    ("gen_batch_size", 2.5, "an integer >= 0"),
    ("seed", 1.5, "an integer"),
    ("seed", True, "an integer"),
    ("sample.batch_size", 0, "an integer >= 1"),
])
def test_bad_numeric_config_value_fails_before_any_work(tmp_path, key, value, expected):
  config = with_value(smoke_config(), key, value)
  with pytest.raises(cli.UserError) as error:
    train_loop.validate_config(config)
  message = str(error.value)
  assert message == f"config.{key}={value!r}: expected {expected}.", message
  assert "\n" not in message
  with pytest.raises(cli.UserError, match=f"config.{key}="):
    train_loop.run(config, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("key, value", [
    ("gen_batch_size", 0), ("gen_batch_size", 64), ("optimizer.grad_clip", None),
    ("optimizer.grad_clip", 0), ("loss.temperatures", 0.5), ("loss.temperatures", [0.1, 2]),
    ("ema_decay", 0.0), ("optimizer.b2", 0.999999), ("seed", -3)])
def test_good_numeric_config_values_pass(key, value):
  assert train_loop.validate_config(with_value(smoke_config(), key, value)) == "stop"


@pytest.mark.parametrize("name", sorted(
    p.stem for p in (REPO / "configs").glob("*.py")
    if p.stem not in ("__init__", "common") and not p.stem.startswith("encoder_")))
def test_every_training_config_builds_its_generator_loss_and_optimizer(name):
  """Each configs/*.py a user can pass to `train` yields a valid generator, loss and optimizer
  (a bad field fails here, not an hour into a launch)."""
  config = load_config(name)
  train_loop.validate_config(config)
  models.create_generator(config.model)
  experiment.create_loss_config(config)
  experiment.create_optimizer(config)
  assert config.num_steps > 0 and config.data.batch_size > 0
