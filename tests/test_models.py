"""Generators: shapes, dtypes, conditioning, mixed precision with float32 params, config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lookahead_drift import models

_TINY_UNET = dict(name="unet", image_shape=(8, 8, 3), base_channels=8, channel_mults=(1, 2),
                  num_res_blocks=1)


def _init_apply(module, noise_shape, batch=4, **inputs):
  noise = jax.random.normal(jax.random.key(0), (batch, *noise_shape))
  # The "rbg" key only speeds up compiling init (threefry is slow to compile on CPU).
  params = jax.jit(module.init)(jax.random.key(1, impl="rbg"), noise, **inputs)
  out = jax.jit(module.apply)(params, noise, **inputs)
  return params, noise, out


def test_mlp_forward():
  module, noise_shape = models.create_generator(
      ml_collections.ConfigDict(dict(name="mlp", noise_dim=3, hidden=(16, 16))))
  assert noise_shape == (3,)
  params, noise, out = _init_apply(module, noise_shape)
  assert out.shape == (4, 2) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 0
  # Pure: the same params and noise give the same output; rows depend on their own noise only.
  np.testing.assert_array_equal(module.apply(params, noise), module.apply(params, noise))
  np.testing.assert_allclose(module.apply(params, noise[:2]), out[:2], rtol=1e-5, atol=1e-6)


def test_mlp_activation_is_the_configured_one():
  config = lambda act: ml_collections.ConfigDict(dict(name="mlp", noise_dim=3, hidden=(16,),
                                                      activation=act))
  relu, _ = models.create_generator(config("relu"))
  params, noise, out = _init_apply(relu, (3,))
  # One hidden layer by hand: out = relu(noise W0 + b0) W1 + b1.
  p = params["params"]
  h = np.maximum(np.asarray(noise) @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(
      p["Dense_0"]["bias"]), 0.0)
  want = h @ np.asarray(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"])
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  silu, _ = models.create_generator(config("silu"))
  assert not np.allclose(silu.apply(params, noise), out)
  with pytest.raises(ValueError, match="activation='tanh'"):
    models.create_generator(config("tanh"))


def test_mlp_class_and_alpha_conditioning():
  module = models.MLPGenerator(hidden=(16,), num_classes=3, alpha_conditioning=True)
  noise = jnp.ones((3, 2))
  labels, alpha = jnp.array([0, 1, 2]), jnp.ones(3)
  params = jax.jit(module.init)(jax.random.key(0, impl="rbg"), noise, labels, alpha)
  out = module.apply(params, noise, labels, alpha)
  assert len(np.unique(np.asarray(out).round(6), axis=0)) == 3  # Labels change the output.
  assert not np.allclose(out, module.apply(params, noise, labels, 2.0 * alpha))
  with pytest.raises(ValueError, match="labels"):
    module.apply(params, noise)


def test_unet_forward_tanh_none_and_bfloat16():
  # One init serves every variant: dtype and output activation do not change the params.
  config = ml_collections.ConfigDict(dict(_TINY_UNET, num_classes=10))
  module, noise_shape = models.create_generator(config)
  assert noise_shape == (8, 8, 3)
  labels = jnp.array([0, 3, 3, 9])
  params, noise, out = _init_apply(module, noise_shape, labels=labels)
  assert out.shape == (4, 8, 8, 3) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out)) and float(jnp.abs(out).max()) <= 1.0
  assert not np.allclose(out[1], out[2])  # Same label, different noise.

  raw_module, _ = models.create_generator(
      ml_collections.ConfigDict(dict(config, output_activation="none")))
  raw = jax.jit(raw_module.apply)(params, noise, labels)
  np.testing.assert_allclose(jnp.tanh(raw), out, atol=1e-5)

  bf16_module, _ = models.create_generator(
      ml_collections.ConfigDict(dict(config, dtype="bfloat16")))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  apply_bf16 = jax.jit(bf16_module.apply)
  out_bf16 = apply_bf16(params, noise, labels)
  assert out_bf16.dtype == jnp.float32
  # The compute really is bfloat16: close to, but not equal to, the float32 output.
  assert "bf16" in apply_bf16.lower(params, noise, labels).as_text()
  assert 0 < float(jnp.abs(out_bf16 - out).max()) < 0.2


def test_config_errors():
  with pytest.raises(ValueError, match="model_config.name='resnet'"):
    models.create_generator(ml_collections.ConfigDict(dict(name="resnet")))
  with pytest.raises(ValueError, match="dtype='float16'"):
    models.create_generator(ml_collections.ConfigDict(dict(name="mlp", dtype="float16")))
  with pytest.raises(ValueError, match="image_shape"):
    models.create_generator(ml_collections.ConfigDict(dict(name="unet")))
  module, _ = models.create_generator(ml_collections.ConfigDict(dict(_TINY_UNET)))
  with pytest.raises(ValueError, match="divisible by 2"):
    module.init(jax.random.key(0), jnp.zeros((1, 7, 7, 3)))


_TINY_DIT = dict(name="dit", image_shape=(8, 8, 1), patch_size=4, width=16, depth=2,
                 num_heads=2, mlp_ratio=2)


def test_dit_forward_and_adaln_zero_start():
  module, noise_shape = models.create_generator(ml_collections.ConfigDict(dict(_TINY_DIT)))
  assert noise_shape == (8, 8, 1)
  params, noise, out = _init_apply(module, noise_shape)
  assert out.shape == (4, 8, 8, 1) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out)) and float(jnp.abs(out).max()) <= 1.0
  assert not np.allclose(out[0], out[1])  # Different noise, different sample.
  # adaLN-Zero: at init every block's gates are 0, so the blocks are the identity and the
  # output is the patch embedding (plus positions) mapped straight back to pixels.
  p = params["params"]
  without_blocks = models.DiTGenerator(patch_size=4, width=16, depth=0, num_heads=2)
  kept = {k: v for k, v in p.items() if not k.startswith("block_")}
  np.testing.assert_allclose(without_blocks.apply({"params": kept}, noise), out, atol=1e-6)
  # Patches are independent before the blocks mix them: changing one pixel of the noise
  # changes only its own 4x4 patch of the output at init.
  moved = np.asarray(module.apply(params, noise.at[:, 0, 0, 0].add(1.0)))
  changed = np.abs(moved - np.asarray(out)).max(axis=(0, 3)) > 1e-4  # jit vs eager: ~1e-7
  assert changed[:4, :4].all() and not changed[4:, :].any() and not changed[:, 4:].any()


def test_dit_conditioning_and_errors():
  config = ml_collections.ConfigDict(dict(_TINY_DIT, num_classes=3, alpha_conditioning=True))
  module, noise_shape = models.create_generator(config)
  noise = jax.random.normal(jax.random.key(0), (3, *noise_shape))
  labels, alpha = jnp.array([0, 1, 2]), jnp.ones(3)
  params = jax.jit(module.init)(jax.random.key(1, impl="rbg"), noise, labels, alpha)
  # Perturb the (zero-initialised) modulation so the condition reaches the output.
  params = jax.tree.map(lambda x: x + 0.1 * jnp.ones_like(x), params)
  out = module.apply(params, noise[:1].repeat(3, 0), labels, alpha)
  assert len(np.unique(np.asarray(out).round(5), axis=0)) == 3  # Labels change the output.
  assert not np.allclose(out, module.apply(params, noise[:1].repeat(3, 0), labels, 2 * alpha))
  with pytest.raises(ValueError, match="divisible by patch_size=4"):
    module.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)), labels[:1], alpha[:1])
  bad, _ = models.create_generator(ml_collections.ConfigDict(dict(_TINY_DIT, num_heads=3)))
  with pytest.raises(ValueError, match="not divisible by num_heads=3"):
    bad.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="image_shape"):
    models.create_generator(ml_collections.ConfigDict(dict(name="dit")))
