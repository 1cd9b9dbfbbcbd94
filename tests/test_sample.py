"""One-step generation, image/scatter PNGs, .npz output and the sampling CLI."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_train import smoke_config, subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

from lookahead_drift import sample, train  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_generate_chunks_agree_with_one_call():
  config = smoke_config()
  params = jax.device_get(train.create_experiment(config).state.params)
  rng = jax.random.PRNGKey(3)
  whole = sample.generate(config, params, 10, rng)
  assert whole.shape == (10, 2) and whole.dtype == np.float32
  np.testing.assert_array_equal(whole, sample.generate(config, params, 10, rng))
  chunked = sample.generate(config, params, 10, rng, batch_size=4)
  assert chunked.shape == (10, 2)
  np.testing.assert_array_equal(chunked[:4], sample.generate(config, params, 4, rng))
  assert not np.array_equal(chunked[4:8], chunked[:4])  # each chunk gets its own noise


def test_images_to_uint8_grid_png_and_npz(tmp_path):
  images = np.linspace(-1.2, 1.2, 5 * 4 * 3 * 1, dtype=np.float32).reshape(5, 4, 3, 1)
  as_uint8 = sample.to_uint8(images)
  assert as_uint8.dtype == np.uint8 and as_uint8.min() == 0 and as_uint8.max() == 255
  assert sample.to_uint8(np.zeros(1))[0] == 128
  grid = sample.image_grid(as_uint8, cols=3)
  assert grid.shape == (2 * 5 + 1, 3 * 4 + 1, 1)
  np.testing.assert_array_equal(grid[1:5, 5:8], as_uint8[1])
  sample.save_samples_png(str(tmp_path / "grid.png"), images, images)
  assert Image.open(tmp_path / "grid.png").mode == "L"
  sample.save_npz(str(tmp_path / "images.npz"), images)
  with np.load(tmp_path / "images.npz") as f:
    assert f["images"].dtype == np.uint8 and f["images"].shape == (5, 4, 3, 1)


def test_sample_cli_uses_latest_checkpoint_ema_params(tmp_path):
  config = smoke_config(**{"sample.every": 1000})
  workdir = tmp_path / "run"
  state = jax.device_get(train.train_and_evaluate(config, str(workdir)))
  out = tmp_path / "out" / "s.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "lookahead_drift.sample", "--config=configs/toy2d.py:smoke",
       f"--workdir={workdir}", "--num_samples=300", f"--out={out}", "--seed=5"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as f:
    samples = f["samples"]
  assert samples.shape == (300, 2) and samples.dtype == np.float32
  expected = sample.generate(config, state.ema_params, 300, jax.random.PRNGKey(5))
  np.testing.assert_allclose(samples, expected, rtol=1e-6, atol=1e-6)
  assert not np.allclose(samples, sample.generate(config, state.params, 300,
                                                  jax.random.PRNGKey(5)))
  assert Image.open(out.with_suffix(".png")).size == (400, 400)
