"""One-step generation, image/scatter PNGs, .npz output, the inference restore and the sample CLI."""

import gzip
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import load_config, restore_train_state, smoke_config, subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

from lookahead_drift import checkpoint, cli, encoder, experiment, inference, pictures, train_loop  # pylint: disable=g-import-not-at-top,wrong-import-position


def _sample_command(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "lookahead_drift.sample", *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)


def _assert_trees_equal(a, b) -> None:
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_generate_chunks_agree_with_one_call():
  config = smoke_config()
  params = jax.device_get(experiment.create_experiment(config).state.params)
  rng = jax.random.PRNGKey(3)
  whole = inference.generate(config, params, 10, rng)
  assert whole.shape == (10, 2) and whole.dtype == np.float32
  np.testing.assert_array_equal(whole, inference.generate(config, params, 10, rng))
  chunked = inference.generate(config, params, 10, rng, batch_size=4)
  assert chunked.shape == (10, 2)
  np.testing.assert_array_equal(chunked[:4], inference.generate(config, params, 4, rng))
  assert not np.array_equal(chunked[4:8], chunked[:4])  # each chunk gets its own noise


def test_images_to_uint8_grid_png_and_npz(tmp_path):
  images = np.linspace(-1.2, 1.2, 5 * 4 * 3 * 1, dtype=np.float32).reshape(5, 4, 3, 1)
  as_uint8 = pictures.to_uint8(images)
  assert as_uint8.dtype == np.uint8 and as_uint8.min() == 0 and as_uint8.max() == 255
  assert pictures.to_uint8(np.zeros(1))[0] == 128
  grid = pictures.image_grid(as_uint8, cols=3)
  assert grid.shape == (2 * 5 + 1, 3 * 4 + 1, 1)
  np.testing.assert_array_equal(grid[1:5, 5:8], as_uint8[1])
  pictures.save_samples_png(str(tmp_path / "grid.png"), images, images)
  assert Image.open(tmp_path / "grid.png").mode == "L"
  pictures.save_npz(str(tmp_path / "images.npz"), images)
  with np.load(tmp_path / "images.npz") as f:
    assert f["images"].dtype == np.uint8 and f["images"].shape == (5, 4, 3, 1)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> tuple[pathlib.Path, experiment.TrainState]:
  """A 6-step toy run with checkpoints at steps 3 and 6, and its final state."""
  workdir = tmp_path_factory.mktemp("toy") / "run"
  state = jax.device_get(train_loop.run(smoke_config(**{"sample.every": 1000}), str(workdir)))
  return workdir, state


def test_sample_cli_from_workdir_alone_uses_latest_ema_params(toy_run, tmp_path):
  workdir, state = toy_run
  out = tmp_path / "out" / "s.npz"
  proc = _sample_command(f"--workdir={workdir}", "--num_samples=300", f"--out={out}", "--seed=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "from step 6 (EMA params)" in proc.stdout
  with np.load(out) as f:
    samples = f["samples"]
  assert samples.shape == (300, 2) and samples.dtype == np.float32
  config = smoke_config()
  expected = inference.generate(config, state.ema_params, 300, jax.random.PRNGKey(5))
  np.testing.assert_allclose(samples, expected, rtol=1e-6, atol=1e-6)
  assert not np.allclose(samples, inference.generate(config, state.params, 300,
                                                     jax.random.PRNGKey(5)))
  assert Image.open(out.with_suffix(".png")).size == (400, 400)


def test_sample_cli_config_flag_replaces_the_saved_config(toy_run, tmp_path):
  workdir, _ = toy_run
  # The saved config has hidden (32, 32); a config file with another model does not fit the
  # checkpoint, which shows that --config, not config.json, was used.
  proc = _sample_command("--config=configs/toy2d.py:smoke", "--config.model.hidden=(16,16)",
                         f"--workdir={workdir}", "--num_samples=10", f"--out={tmp_path}/s.npz")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "model.hidden" in proc.stderr  # the warning names the changed model field
  proc = _sample_command("--config=configs/toy2d.py:smoke", f"--workdir={workdir}",
                         "--num_samples=10", f"--out={tmp_path}/t.npz")
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_sample_refuses_non_finite_samples_and_writes_nothing(toy_run, tmp_path,
                                                              monkeypatch):
  workdir, _ = toy_run
  monkeypatch.setattr(inference, "generate", lambda config, params, num, rng, **kw:
                      np.where(np.arange(num)[:, None] % 2, np.nan, np.ones((num, 2))))
  with pytest.raises(cli.NonFiniteError, match=r"generator of step 6 \(EMA params\) gave 10 "
                     r"non-finite values of 20; nothing written \(try --use_ema=false\)\.$"):
    inference.write_samples(str(workdir), num_samples=10, out=str(tmp_path / "s.npz"))
  assert not list(tmp_path.iterdir())


def test_sample_refuses_more_samples_than_memory_before_generating(toy_run, tmp_path,
                                                                   monkeypatch):
  workdir, _ = toy_run
  monkeypatch.setattr(inference, "generate", lambda *a, **kw: pytest.fail("generated"))
  with pytest.raises(cli.UserError, match=r"^--num_samples=1000000000000: 1000000000000 "
                     r"samples of shape \(2,\) need about .* GiB, more than the .* GiB of "
                     r"memory available; ask for at most \d+\.$"):
    inference.write_samples(str(workdir), num_samples=10**12, out=str(tmp_path / "s.npz"))
  assert not list(tmp_path.iterdir())
  with pytest.raises(cli.UserError, match="ask for at most 1000.$"):
    inference.check_memory(1001, (8, 8, 3), available=int(1000 * 192 * 4 * 3 / 0.8))
  inference.check_memory(1000, (8, 8, 3), available=int(1000 * 192 * 4 * 3 / 0.8))


def test_sample_out_must_be_an_npz_path(tmp_path):
  for out in ("s.txt", "s", "dir/"):
    with pytest.raises(cli.UserError, match="expected a path ending in .npz"):
      inference.write_samples(str(tmp_path / "no_run"), num_samples=10,
                              out=str(tmp_path / out))
  assert not list(tmp_path.iterdir())


def test_sample_cli_without_config_json_asks_for_config(toy_run, tmp_path):
  workdir, _ = toy_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  (copy / "config.json").unlink()
  proc = _sample_command(f"--workdir={copy}", "--num_samples=10")
  assert proc.returncode == 2 and "config.json does not exist" in proc.stderr


def test_inference_restore_checks_only_what_it_reads_and_falls_back(toy_run, tmp_path):
  source, _ = toy_run
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  full = restore_train_state(smoke_config(), str(workdir))
  got = inference.restore(str(workdir))
  assert got.step == 6 and got.config.model.hidden == [32, 32]
  _assert_trees_equal(got.params, full.params)
  _assert_trees_equal(got.ema_params, full.ema_params)
  assert inference.checkpoint_steps(str(workdir)) == [3, 6]

  record_path = workdir / "checkpoints" / "6" / "integrity" / "metadata"
  record = json.loads(record_path.read_text())
  # Checksums are keyed by each array's path in the train state.
  first_leaf = lambda prefix: next(k for k in record["checksums"] if k.startswith(prefix))
  changed = json.loads(json.dumps(record))
  changed["checksums"][first_leaf("ema_params/")] ^= 1  # the first EMA leaf
  record_path.write_text(json.dumps(changed))
  with pytest.raises(checkpoint.CorruptCheckpointError, match="fails its checksum"):
    inference.restore(str(workdir), step=6)
  older = inference.restore(str(workdir))  # the newest good one, nothing moved
  assert older.step == 3 and (workdir / "checkpoints" / "6").is_dir()
  assert not (workdir / "corrupt_checkpoints").exists()

  changed = json.loads(json.dumps(record))
  changed["checksums"][first_leaf("opt_state/")] ^= 1  # not read for inference
  record_path.write_text(json.dumps(changed))
  assert inference.restore(str(workdir), step=6).step == 6
  with pytest.raises(checkpoint.CorruptCheckpointError, match="fails its checksum"):
    restore_train_state(smoke_config(), str(workdir))


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                   for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_sample_image_run_needs_no_encoder_checkpoint(tmp_path):
  # A tiny Fashion-MNIST-shaped run drifting in a conv encoder's features; the encoder is
  # deleted before sampling, which needs only the generator.
  rng = np.random.default_rng(0)
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (16, 28, 28)))
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 16))
  enc = encoder.ConvEncoder(widths=(4,), blocks_per_stage=1)
  enc_dir = encoder.save_encoder(str(tmp_path / "enc"),
                                 enc.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1))),
                                 {"widths": [4], "blocks_per_stage": 1,
                                  "image_shape": [28, 28, 1]})
  tiny_model = {"model.base_channels": 4, "model.channel_mults": (1,),
                "model.attention": False}
  config = load_config("fashion_mnist")
  config.update_from_flattened_dict({
      "num_steps": 1, "log_every": 1, "tensorboard": False, "data.data_dir": str(tmp_path),
      "data.batch_size": 8, **tiny_model, "encoder.checkpoint": enc_dir,
      "encoder.patch_sizes": (2,), "optimizer.warmup_steps": 1, "checkpoint.every": 1,
      "checkpoint.async_save": False, "sample.every": 100, "sample.num_png": 4})
  workdir = tmp_path / "run"
  state = jax.device_get(train_loop.run(config, str(workdir)))
  shutil.rmtree(enc_dir)

  out = tmp_path / "images.npz"
  proc = _sample_command(f"--workdir={workdir}", "--num_samples=5", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as f:
    images = f["images"]
  assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
  expected = inference.generate(config, state.ema_params, 5, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(images, pictures.to_uint8(expected))

  # The README's form: the config file (its encoder.checkpoint unset) plus model overrides.
  overrides = [f"--config.{k}={v}".replace(" ", "") for k, v in tiny_model.items()]
  proc = _sample_command("--config=configs/fashion_mnist.py", *overrides,
                         f"--workdir={workdir}", "--num_samples=5", f"--out={tmp_path}/b.npz")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(tmp_path / "b.npz") as f:
    np.testing.assert_array_equal(f["images"], images)
