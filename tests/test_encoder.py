"""Feature encoders: group shapes and values, checkpoint round trip, errors, encoder training
(classifier and masked-autoencoder objectives)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lookahead_drift import encoder, encoder_training


def test_identity_features():
  feature_fn, params = encoder.create_feature_fn(ml_collections.ConfigDict({"kind": "identity"}))
  x = jnp.arange(24.0).reshape(3, 2, 2, 2)
  feats = feature_fn(params, x)
  assert list(feats) == ["x"] and feats["x"].shape == (1, 3, 8)
  np.testing.assert_array_equal(feats["x"][0], x.reshape(3, 8))
  points = jnp.ones((5, 2))
  assert feature_fn(params, points)["x"].shape == (1, 5, 2)


def test_feature_group_shapes_and_values():
  rng = np.random.default_rng(0)
  maps = [jnp.asarray(rng.standard_normal((3, 8, 8, 4)), jnp.float32),
          jnp.asarray(rng.standard_normal((3, 7, 7, 6)), jnp.float32)]
  x = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 2)), jnp.float32)
  groups = encoder.feature_groups(maps, x, include_raw=True)
  expected = {"s0_loc": (64, 3, 4), "s0_mean": (1, 3, 4), "s0_std": (1, 3, 4),
              "s0_p2_mean": (16, 3, 4), "s0_p2_std": (16, 3, 4), "s0_p4_mean": (4, 3, 4),
              "s0_p4_std": (4, 3, 4), "s1_loc": (49, 3, 6), "s1_mean": (1, 3, 6),
              "s1_std": (1, 3, 6), "s1_p2_mean": (9, 3, 6), "s1_p2_std": (9, 3, 6),
              "s1_p4_mean": (1, 3, 6), "s1_p4_std": (1, 3, 6), "input_rms": (1, 3, 2),
              "x": (1, 3, 128)}
  assert {k: v.shape for k, v in groups.items()} == expected
  m = np.asarray(maps[1])
  # Location group g = row * width + col holds that location's vector for every sample.
  np.testing.assert_array_equal(groups["s1_loc"][7 * 2 + 5], m[:, 2, 5])
  # Patch (1, 2) of the 2x2 grid on the 7x7 map (the last row/column are dropped).
  window = m[:, 2:4, 4:6].reshape(3, 4, 6)
  np.testing.assert_allclose(groups["s1_p2_mean"][1 * 3 + 2], window.mean(1), rtol=1e-5)
  np.testing.assert_allclose(groups["s1_p2_std"][1 * 3 + 2], window.std(1), rtol=1e-3)
  np.testing.assert_allclose(groups["s0_std"][0], np.asarray(maps[0]).std(axis=(1, 2)),
                             rtol=1e-4)
  np.testing.assert_allclose(groups["input_rms"][0],
                             np.sqrt(np.square(np.asarray(x)).mean(axis=(1, 2))), rtol=1e-4)
  small = encoder.feature_groups(maps, x, patch_sizes=(), include_locations=False,
                                 include_input_rms=False)
  assert sorted(small) == ["s0_mean", "s0_std", "s1_mean", "s1_std"]


def _save_tiny(directory, widths=(4, 8)):
  module = encoder.ConvEncoder(widths=widths, blocks_per_stage=1)
  params = jax.jit(module.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 8, 8, 1)))
  encoder.save_encoder(directory, params, dict(widths=list(widths), blocks_per_stage=1,
                                               image_shape=[8, 8, 1], note="test"))
  return module, params


def test_conv_encoder_checkpoint_round_trip(tmp_path):
  module, params = _save_tiny(tmp_path / "enc")
  config = ml_collections.ConfigDict(dict(kind="conv", checkpoint=str(tmp_path / "enc"),
                                          include_raw=True))
  feature_fn, loaded = encoder.create_feature_fn(config)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1), minval=-1, maxval=1)
  feats = jax.jit(feature_fn)(loaded, x)
  maps = module.apply(params, x)
  assert [m.shape for m in maps] == [(5, 8, 8, 4), (5, 4, 4, 8)]
  direct = encoder.feature_groups(maps, x, include_raw=True)
  assert sorted(feats) == sorted(direct)
  for name in direct:
    np.testing.assert_allclose(feats[name], direct[name], rtol=1e-5, atol=1e-6)
  assert feats["s1_p4_mean"].shape == (1, 5, 8) and feats["x"].shape == (1, 5, 64)
  # The loss differentiates generated features w.r.t. the images.
  grad = jax.grad(lambda x: sum(v.sum() for v in feature_fn(loaded, x).values()))(x)
  assert grad.shape == x.shape and np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
  with pytest.raises(ValueError, match=r"expects images \(8, 8, 1\)"):
    feature_fn(loaded, jnp.zeros((2, 4, 4, 1)))


def test_checkpoint_errors_name_the_path(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    encoder.create_feature_fn(ml_collections.ConfigDict(dict(kind="conv", checkpoint=missing)))
  with pytest.raises(ValueError, match="checkpoint"):
    encoder.create_feature_fn(ml_collections.ConfigDict(dict(kind="conv")))
  with pytest.raises(ValueError, match="kind='dino'"):
    encoder.create_feature_fn(ml_collections.ConfigDict(dict(kind="dino")))
  _save_tiny(tmp_path / "enc")
  config_path = tmp_path / "enc" / "config.json"
  record = json.loads(config_path.read_text())
  record["widths"] = [4, 16]  # The stored params are for widths (4, 8).
  config_path.write_text(json.dumps(record))
  with pytest.raises(ValueError, match="does not match the ConvEncoder"):
    encoder.load_encoder(str(tmp_path / "enc"))


def _tiny_train_config(data_dir, **overrides):
  config = dict(
      seed=0, data=dict(name="fashion_mnist", data_dir=str(data_dir), split="train",
                        batch_size=16, random_flip=True, source="files"),
      eval_split="test", eval_batch_size=16, num_classes=2,
      encoder=dict(widths=(4, 8), blocks_per_stage=1), num_steps=150, learning_rate=1e-2,
      warmup_steps=2, weight_decay=1e-4, log_every=50)
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def test_train_encoder_end_to_end(tmp_path, capsys, stripes_dir):
  data_dir = stripes_dir
  config = _tiny_train_config(data_dir)  # No `objective` field: the classifier.
  record = encoder_training.train_and_save(config, str(tmp_path / "work"))
  printed = capsys.readouterr().out
  assert "steps/s" in printed and "test accuracy" in printed and "Saved encoder to" in printed
  assert record["eval_accuracy"] >= 0.9  # Stripe orientation is easy to learn.
  saved = json.loads((tmp_path / "work" / "encoder" / "config.json").read_text())
  assert saved["eval_accuracy"] == record["eval_accuracy"] and saved["image_shape"] == [28, 28, 1]
  assert saved["objective"] == "classifier" and "eval_mae_mse" not in saved
  feature_fn, params = encoder.create_feature_fn(ml_collections.ConfigDict(
      dict(kind="conv", checkpoint=os.path.join(tmp_path, "work", "encoder"))))
  feats = feature_fn(params, jnp.zeros((3, 28, 28, 1)))
  assert feats["s0_loc"].shape == (784, 3, 4) and feats["s1_loc"].shape == (196, 3, 8)


def test_random_patch_mask_counts_and_alignment():
  mask = np.asarray(encoder_training.random_patch_mask(jax.random.key(3), 5, 12, 8, 4, 0.5))
  assert mask.shape == (5, 12, 8, 1) and mask.dtype == bool
  tiles = mask[..., 0].reshape(5, 3, 4, 2, 4)  # [B, gh, patch, gw, patch]
  # Patch-aligned: every 4x4 tile is all masked or all visible.
  assert np.all(tiles.all(axis=(2, 4)) == tiles.any(axis=(2, 4)))
  counts = tiles.all(axis=(2, 4)).sum(axis=(1, 2))
  np.testing.assert_array_equal(counts, [round(0.5 * 6)] * 5)
  # 28x28 with 4x4 patches: 49 patches, round(0.6 * 49) = 29 masked per image.
  big = np.asarray(encoder_training.random_patch_mask(jax.random.key(0), 3, 28, 28, 4, 0.6))
  np.testing.assert_array_equal(big.sum(axis=(1, 2, 3)), [29 * 16] * 3)
  assert not np.array_equal(big[0], big[1])  # Each image draws its own patches.
  with pytest.raises(ValueError, match="patch_size=5 must divide the image size 28x28"):
    encoder_training.random_patch_mask(jax.random.key(0), 1, 28, 28, 5, 0.6)


def test_masked_mse_only_counts_masked_pixels():
  target = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  mask = encoder_training.random_patch_mask(jax.random.key(1), 2, 8, 8, 2, 0.5)
  unmasked = jnp.where(mask, target, 7.0)  # Wrong only where unmasked.
  assert float(encoder_training.masked_mse(unmasked, target, mask)) == 0.0
  prediction = target + 0.5
  loss = float(encoder_training.masked_mse(prediction, target, mask))
  np.testing.assert_allclose(loss, 0.25, rtol=1e-5)
  row, col = np.argwhere(~np.asarray(mask[0, :, :, 0]))[0]
  changed = prediction.at[0, row, col, 1].set(100.0)
  assert float(encoder_training.masked_mse(changed, target, mask)) == loss


def test_train_encoder_mae_end_to_end(tmp_path, capsys, stripes_dir):
  data_dir = stripes_dir
  config = _tiny_train_config(data_dir, objective="mae", num_steps=30, log_every=10,
                              learning_rate=5e-3,
                              mae=dict(patch_size=4, mask_ratio=0.6))
  record = encoder_training.train_and_save(config, str(tmp_path / "work"))
  printed = capsys.readouterr().out
  assert "test masked-pixel MSE" in printed and "Saved encoder to" in printed
  assert "train acc" not in printed
  losses = [float(line.split("  loss ")[1].split()[0])
            for line in printed.splitlines() if line.startswith("step ")]
  assert len(losses) == 3 and losses[-1] < losses[0]  # Stripes are easy to fill in.
  saved = json.loads((tmp_path / "work" / "encoder" / "config.json").read_text())
  assert saved["objective"] == "mae" and "eval_accuracy" not in saved
  assert np.isfinite(saved["eval_mae_mse"]) and saved["eval_mae_mse"] == record["eval_mae_mse"]
  feature_fn, params = encoder.create_feature_fn(ml_collections.ConfigDict(
      dict(kind="conv", checkpoint=os.path.join(tmp_path, "work", "encoder"))))
  feats = feature_fn(params, jnp.zeros((3, 28, 28, 1)))
  assert feats["s0_loc"].shape == (784, 3, 4) and feats["s1_loc"].shape == (196, 3, 8)


def test_train_encoder_rejects_bad_settings(tmp_path, stripes_dir):
  with pytest.raises(ValueError, match=r"config.objective='bogus'.*'classifier', 'mae'"):
    # Raised before any data is read: the data folder does not exist.
    encoder_training.train_and_save(_tiny_train_config(tmp_path / "nowhere", objective="bogus"),
                                 str(tmp_path / "work"))
  data_dir = stripes_dir
  with pytest.raises(ValueError, match="patch_size=5 must divide"):
    encoder_training.train_and_save(
        _tiny_train_config(data_dir, objective="mae", mae=dict(patch_size=5)),
        str(tmp_path / "work"))
  with pytest.raises(ValueError, match="warmup_steps=100 must be >= 0 and less than "
                     "config.num_steps=100"):
    encoder_training.train_and_save(_tiny_train_config(data_dir, num_steps=100, warmup_steps=100),
                                 str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


def test_mae_config_loads_as_classifier_variant():
  from configs import encoder_fashion_mnist_mae  # pylint: disable=g-import-not-at-top
  config = encoder_fashion_mnist_mae.get_config()
  assert config.objective == "mae" and config.mae.patch_size == 4
  assert config.mae.mask_ratio == 0.6 and config.data.random_flip and config.learning_rate == 2e-3
  assert encoder_training.mae_settings(config)["eval_mask_seed"] == 0
  assert config.encoder.widths == (32, 64, 128)  # Inherited from the classifier config.
