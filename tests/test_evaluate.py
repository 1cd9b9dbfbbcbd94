"""Evaluation on a tiny trained image run: FID/KID written once per checkpoint."""

import gzip
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from lookahead_drift import checkpoint
from lookahead_drift import evaluation
from lookahead_drift import fid_kid
from lookahead_drift import inception
from lookahead_drift import inference
from lookahead_drift import pictures
from lookahead_drift import train_loop

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import load_config, subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                   for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def extractor(weights):
  return inception.FeatureExtractor(weights, batch_size=8)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """Two steps of a tiny UNet on 16 fake 28x28 Fashion-MNIST images, a checkpoint per step."""
  root = tmp_path_factory.mktemp("run")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
  write_idx(root / "train-images-idx3-ubyte.gz", images)
  write_idx(root / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 16))
  config = load_config("fashion_mnist")
  config.update_from_flattened_dict({
      "num_steps": 2, "log_every": 1, "tensorboard": False, "data.data_dir": str(root),
      "data.batch_size": 8, "model.base_channels": 4, "model.channel_mults": (1,),
      "model.attention": False, "encoder.kind": "identity", "optimizer.warmup_steps": 1,
      "checkpoint.every": 1, "checkpoint.keep": 5, "checkpoint.async_save": False,
      "sample.every": 100, "sample.num_png": 4})
  workdir = str(root / "workdir")
  train_loop.run(config, workdir)
  reference = root / "reference.npz"
  np.savez(reference, images=images[:8, :, :, None])
  return config, workdir, str(reference)


def test_evaluate_writes_fid_and_kid_and_watch_skips_done_steps(trained_run, extractor):
  config, workdir, reference = trained_run
  records = evaluation.evaluate_run(workdir, reference_path=reference, num_samples=6,
                                    extractor=extractor)
  assert [r["step"] for r in records] == [2]
  r = records[0]
  assert np.isfinite(r["fid"]) and r["fid"] > 0 and np.isfinite(r["kid"])

  # Same number from the pieces: restore, generate with the same seed, features, FID.
  state = inference.restore(workdir)
  imgs = pictures.to_uint8(inference.generate(config, state.ema_params, 6, jax.random.PRNGKey(0)))
  gen = fid_kid.stats_from_features(extractor(imgs))
  ref = fid_kid.stats_from_features(extractor(np.load(reference)["images"]))
  np.testing.assert_allclose(r["fid"], fid_kid.fid_from_stats(gen, ref), rtol=1e-6)

  # --watch evaluates only the checkpoint not yet in eval.jsonl, then stops at the last step.
  records = evaluation.evaluate_run(workdir, reference_path=reference, num_samples=6,
                                    extractor=extractor, watch=True, poll_seconds=0)
  assert [r["step"] for r in records] == [1]
  lines = [json.loads(l) for l in open(pathlib.Path(workdir) / "eval.jsonl")]
  assert sorted(l["step"] for l in lines) == [1, 2]
  assert all(l["num_samples"] == 6 and l["reference"] == reference for l in lines)


def test_evaluate_bad_inputs_fail_before_any_inception_work(trained_run, tmp_path):
  config, workdir, reference = trained_run
  with pytest.raises(checkpoint.CheckpointError, match="step 7"):
    evaluation.evaluate_run(workdir, reference_path=reference, num_samples=4, step=7)
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint"):
    evaluation.evaluate_run(str(tmp_path), reference_path=reference, num_samples=4,
                            config=config)
  with pytest.raises(Exception, match="config.json does not exist"):
    evaluation.evaluate_run(str(tmp_path), reference_path=reference, num_samples=4)
  toy = load_config("toy2d")
  with pytest.raises(ValueError, match="image config"):
    evaluation.evaluate_run(workdir, reference_path=reference, num_samples=4, config=toy)
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    evaluation.evaluate_run(workdir, reference_path=str(tmp_path / "missing.npz"),
                            num_samples=4)


def test_evaluate_command_needs_only_the_workdir(trained_run, weights):
  _, workdir, reference = trained_run
  proc = subprocess.run(
      [sys.executable, "-m", "lookahead_drift.evaluate", f"--workdir={workdir}",
       f"--reference={reference}", "--num_samples=6", "--step=1", "--batch_size=8",
       f"--inception_weights={weights}"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 1: FID " in proc.stdout and "KID" in proc.stdout


def test_conditional_run_scores_each_guidance_scale_and_grid_rows(tmp_path, extractor):
  """A tiny class-conditional image run: one eval.jsonl record per α, a label outside the
  trained α range refused before any Inception work, and a PNG with one class per row."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
  write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
  write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40) % 10)
  config = load_config("fashion_mnist_cond")
  config.update_from_flattened_dict({
      "num_steps": 2, "log_every": 1, "tensorboard": False, "data.data_dir": str(tmp_path),
      "data.batch_size": 20, "conditional.gen_per_label": 2, "conditional.neg_per_label": 2,
      "model.base_channels": 4, "model.channel_mults": (1,), "model.attention": False,
      "encoder.kind": "identity", "optimizer.warmup_steps": 1, "checkpoint.every": 1,
      "checkpoint.async_save": False, "sample.every": 100, "sample.num_png": 4})
  workdir = str(tmp_path / "workdir")
  train_loop.run(config, workdir)
  reference = tmp_path / "reference.npz"
  np.savez(reference, images=images[:8, :, :, None])
  with pytest.raises(Exception, match="cfg_scale 9 is outside"):
    evaluation.evaluate_run(workdir, reference_path=str(reference), num_samples=6,
                            cfg_scales=[2.0, 9.0])
  records = evaluation.evaluate_run(workdir, reference_path=str(reference), num_samples=6,
                                    extractor=extractor, cfg_scales=[1.0, 3.0])
  assert [(r["step"], r["cfg_scale"]) for r in records] == [(2, 1.0), (2, 3.0)]
  assert records[0]["fid"] != records[1]["fid"]
  out = inference.write_samples(workdir, num_samples=30, labels=["3", "7", "9"], cfg_scale=2.0,
                                out=str(tmp_path / "s.npz"))
  with np.load(out) as f:
    assert f["images"].shape == (30, 28, 28, 1)
    np.testing.assert_array_equal(f["labels"], np.repeat([3, 7, 9], 10))
  png = np.asarray(Image.open(tmp_path / "s.png"))
  assert png.shape[0] == 3 * (3 * 29 + 1)  # three rows of 28-pixel images, 1-pixel gaps, 3x
