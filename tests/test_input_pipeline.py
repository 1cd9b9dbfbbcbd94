"""Input pipeline: real file formats written small, determinism, resume, process sharding."""

import collections
import gzip
import io
import itertools
import os
import pickle
import tarfile

import numpy as np
import pytest

from fake_data import data_config, fashion_files
from lookahead_drift import input_pipeline


def _cifar_batches(n_per_batch=4):
  """Six fake CIFAR batches (5 train + test): NHWC images and labels."""
  rng = np.random.default_rng(1)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  return {name: (rng.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8),
                 rng.integers(0, 10, n_per_batch).astype(np.int64)) for name in names}


def _add_to_tar(tar, name, blob):
  info = tarfile.TarInfo(name)
  info.size = len(blob)
  tar.addfile(info, io.BytesIO(blob))


def _write_cifar_python(path, batches):
  with tarfile.open(path, "w:gz") as tar:
    for name, (images, labels) in batches.items():
      rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # Channel-major rows.
      blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels.tolist(),
                           b"data": rows, b"filenames": [b"x.png"] * len(images)}, protocol=2)
      _add_to_tar(tar, f"cifar-10-batches-py/{name}", blob)
    _add_to_tar(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"num_cases": 4}))


def _write_cifar_binary(path, batches):
  with tarfile.open(path, "w:gz") as tar:
    for name, (images, labels) in batches.items():
      rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
      records = np.concatenate([labels[:, None].astype(np.uint8), rows], axis=1)
      _add_to_tar(tar, f"cifar-10-batches-bin/{name}.bin", records.tobytes())


@pytest.fixture(autouse=True)
def _clear_cache():
  input_pipeline._load_images_cached.cache_clear()
  yield


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_round_trip(tmp_path, compress):
  arrays = fashion_files(tmp_path, compress=compress)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = input_pipeline.load_images(
        data_config(name="fashion_mnist", data_dir=str(tmp_path), split=split))
    assert images.shape == (len(arrays[prefix][0]), 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], arrays[prefix][0])
    np.testing.assert_array_equal(labels, arrays[prefix][1])
    assert labels.dtype == np.int32


def test_fashion_mnist_batches(tmp_path):
  arrays = fashion_files(tmp_path)
  config = data_config(name="fashion_mnist", data_dir=str(tmp_path), batch_size=8)
  batch = next(input_pipeline.create_dataset(config, seed=0))
  assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  # Each batch row is one of the training images (scaled to [-1, 1]) with its own label.
  flat = arrays["train"][0].reshape(len(arrays["train"][0]), -1).astype(np.float32) / 127.5 - 1
  for image, label in zip(batch["image"], batch["label"]):
    idx = np.flatnonzero(np.abs(flat - image.reshape(-1)).max(axis=1) < 1e-5)
    assert len(idx) == 1 and arrays["train"][1][idx[0]] == label


def test_every_example_once_per_epoch(tmp_path):
  fashion_files(tmp_path, n_train=24)
  config = data_config(name="fashion_mnist", data_dir=str(tmp_path), batch_size=8)
  labels_seen = [b["image"] for b in itertools.islice(
      input_pipeline.create_dataset(config, seed=3), 3)]
  epoch = np.concatenate(labels_seen).reshape(24, -1)
  assert len(np.unique(epoch, axis=0)) == 24


@pytest.mark.parametrize("name", ["eight_gaussians", "fashion_mnist"])
def test_determinism_and_resume(tmp_path, name):
  fashion_files(tmp_path, n_train=20)  # 20 is not a multiple of 6: batches cross epochs.
  config = data_config(name=name, data_dir=str(tmp_path), batch_size=6, random_flip=True)
  full = list(itertools.islice(input_pipeline.create_dataset(config, seed=7), 9))
  again = list(itertools.islice(input_pipeline.create_dataset(config, seed=7), 9))
  resumed = list(itertools.islice(
      input_pipeline.create_dataset(config, seed=7, start_step=4), 5))
  other_seed = next(input_pipeline.create_dataset(config, seed=8))
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(full[0]["image"], full[1]["image"])
  assert not np.array_equal(full[0]["image"], other_seed["image"])


@pytest.mark.parametrize("name", ["checkerboard", "fashion_mnist"])
def test_process_shards_partition_global_batch(tmp_path, name):
  fashion_files(tmp_path, n_train=40)
  config = data_config(name=name, data_dir=str(tmp_path), batch_size=12)
  for step in (0, 5):
    whole = next(input_pipeline.create_dataset(config, seed=1, start_step=step))
    shares = [next(input_pipeline.create_dataset(config, seed=1, process_index=p,
                                                 process_count=3, start_step=step))
              for p in range(3)]
    assert all(s["image"].shape[0] == 4 for s in shares)
    np.testing.assert_array_equal(np.concatenate([s["image"] for s in shares]),
                                  whole["image"])
    np.testing.assert_array_equal(np.concatenate([s["label"] for s in shares]),
                                  whole["label"])
    if name == "fashion_mnist":  # Disjoint: 12 distinct training images in one global batch.
      rows = np.concatenate([s["image"] for s in shares]).reshape(12, -1)
      assert len(np.unique(rows, axis=0)) == 12


def test_batch_size_must_divide():
  with pytest.raises(ValueError, match="divisible by process_count=3"):
    input_pipeline.create_dataset(data_config(name="swiss_roll", batch_size=10), seed=0,
                                  process_count=3)
  with pytest.raises(ValueError, match="name='mnist'"):
    input_pipeline.create_dataset(data_config(name="mnist", batch_size=10), seed=0)


@pytest.mark.parametrize("name", input_pipeline.TOY_DATASETS)
def test_toy_samplers(name):
  points = input_pipeline.sample_toy(name, 4000, np.random.default_rng(0))
  assert points.shape == (4000, 2) and points.dtype == np.float32
  assert np.abs(points).max() < 5.0 and points.std() > 1.0
  np.testing.assert_array_equal(points, input_pipeline.sample_toy(name, 4000, 0))
  batch = next(input_pipeline.create_dataset(data_config(name=name, batch_size=16), seed=0))
  assert batch["image"].shape == (16, 2) and batch["label"].dtype == np.int32


def test_toy_shapes_are_right():
  # eight_gaussians: every point within 1.25 of a centre at radius 3.
  points = input_pipeline.sample_toy("eight_gaussians", 2000, 0)
  angles = np.arange(8) * np.pi / 4
  centres = 3 * np.stack([np.cos(angles), np.sin(angles)], -1)
  assert np.linalg.norm(points[:, None] - centres, axis=-1).min(axis=1).max() < 1.25
  # checkerboard: the filled cells have floor(x) // 2 + floor(y) // 2 even.
  points = input_pipeline.sample_toy("checkerboard", 2000, 0)
  cells = np.floor((points + 4) / 2).astype(int)
  assert np.all((cells.sum(axis=1) % 2) == 0) and len(np.unique(cells, axis=0)) == 8


def test_fashion_mnist_missing_and_damaged(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
    input_pipeline.load_images(data_config(name="fashion_mnist", data_dir=str(tmp_path)))
  fashion_files(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:100])  # Truncated gzip stream.
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
    input_pipeline.load_images(data_config(name="fashion_mnist", data_dir=str(tmp_path)))
  input_pipeline._load_images_cached.cache_clear()
  with gzip.open(path, "wb") as f:  # Valid gzip, header claims more data than present.
    f.write(bytes([0, 0, 8, 3]) + np.asarray([5, 28, 28], ">i4").tobytes() + b"\0" * 100)
  with pytest.raises(ValueError, match="truncated or damaged"):
    input_pipeline.load_images(data_config(name="fashion_mnist", data_dir=str(tmp_path)))


@pytest.mark.parametrize("fmt", ["python", "binary", "python_dir"])
def test_cifar10_formats(tmp_path, fmt):
  batches = _cifar_batches()
  if fmt == "binary":
    _write_cifar_binary(tmp_path / "cifar-10-binary.tar.gz", batches)
  else:
    _write_cifar_python(tmp_path / "cifar-10-python.tar.gz", batches)
    if fmt == "python_dir":
      with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
      os.remove(tmp_path / "cifar-10-python.tar.gz")
  train_images, train_labels = input_pipeline.load_images(
      data_config(name="cifar10", data_dir=str(tmp_path)))
  expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
  assert train_images.shape == (20, 32, 32, 3)
  np.testing.assert_array_equal(train_images, expected)
  np.testing.assert_array_equal(
      train_labels, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
  test_images, _ = input_pipeline.load_images(
      data_config(name="cifar10", data_dir=str(tmp_path), split="test"))
  np.testing.assert_array_equal(test_images, batches["test_batch"][0])
  batch = next(input_pipeline.create_dataset(
      data_config(name="cifar10", data_dir=str(tmp_path), batch_size=4), seed=0))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32


def test_cifar10_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
    input_pipeline.load_images(data_config(name="cifar10", data_dir=str(tmp_path)))
  (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar file at all")
  with pytest.raises(ValueError, match="damaged"):
    input_pipeline.load_images(data_config(name="cifar10", data_dir=str(tmp_path)))
  # A pickle that would call an arbitrary global is refused, not executed.
  input_pipeline._load_images_cached.cache_clear()
  with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
      _add_to_tar(tar, f"cifar-10-batches-py/{name}", pickle.dumps(collections.OrderedDict(a=1)))
  with pytest.raises(ValueError, match="data_batch_1"):
    input_pipeline.load_images(data_config(name="cifar10", data_dir=str(tmp_path)))


def test_cifar10_tfds_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    images, labels = input_pipeline.load_images(
        data_config(name="cifar10", source="tfds", split="train"))
  assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (6,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10
