"""One-step generators (Flax Linen): an MLP for 2-D toys, a small U-Net and a small DiT for images.

All map noise (plus optional class labels and guidance scale alpha) to a sample in one
forward pass. `dtype` sets the compute precision; parameters are always float32 and outputs
are returned as float32 so that the loss is computed in full precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lookahead_drift import config_util

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _fourier(values: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding [B, dim] of a scalar per example (e.g. the guidance scale)."""
  freqs = jnp.exp(jnp.linspace(0.0, jnp.log(1000.0), dim // 2))
  angles = values[:, None].astype(jnp.float32) * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ConditionEmbedding(nn.Module):
  """Embeds class labels and/or a per-example guidance scale into one vector [B, dim]."""

  dim: int
  num_classes: int = 0
  alpha_conditioning: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch: int, labels: jax.Array | None,
               alpha: jax.Array | None) -> jax.Array | None:
    parts = []
    if self.num_classes:
      if labels is None:
        raise ValueError(f"num_classes={self.num_classes}: labels [B] are required.")
      parts.append(nn.Embed(self.num_classes, self.dim, param_dtype=jnp.float32,
                            dtype=self.dtype, name="label_embed")(labels))
    if self.alpha_conditioning:
      if alpha is None:
        raise ValueError("alpha_conditioning=True: alpha [B] is required.")
      alpha = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (batch,))
      parts.append(nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32,
                            name="alpha_embed")(_fourier(alpha, self.dim)))
    if not parts:
      return None
    cond = sum(parts[1:], parts[0])
    return nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32)(nn.silu(cond))


ACTIVATIONS = {"silu": nn.silu, "relu": nn.relu, "gelu": nn.gelu}


class MLPGenerator(nn.Module):
  """Noise [B, noise_dim] -> samples [B, out_dim]; the condition is added to each hidden layer."""

  hidden: Sequence[int] = (256, 256, 256)
  out_dim: int = 2
  activation: str = "silu"  # a name in ACTIVATIONS
  num_classes: int = 0
  alpha_conditioning: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, noise: jax.Array, labels: jax.Array | None = None,
               alpha: jax.Array | None = None) -> jax.Array:
    dense = lambda n, **kw: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, **kw)
    cond = ConditionEmbedding(self.hidden[0], self.num_classes, self.alpha_conditioning,
                              self.dtype)(noise.shape[0], labels, alpha)
    h = noise.astype(self.dtype)
    for i, width in enumerate(self.hidden):
      h = dense(width)(h)
      if cond is not None:
        h = h + dense(width, name=f"cond_{i}")(cond)
      h = ACTIVATIONS[self.activation](h)
    return dense(self.out_dim)(h).astype(jnp.float32)


def _group_norm(x: jax.Array, dtype: Any, name: str | None = None) -> jax.Array:
  """GroupNorm with up to 8 groups (as many as divide the channel count)."""
  return nn.GroupNorm(num_groups=math.gcd(x.shape[-1], 8), dtype=dtype,
                      param_dtype=jnp.float32, name=name)(x)


def _check_output_activation(name: str) -> None:
  if name not in ("tanh", "none"):
    raise ValueError(f"output_activation={name!r}; expected 'tanh' or 'none'.")


class ResBlock(nn.Module):
  """GroupNorm-SiLU-Conv twice with a skip; the condition scales and shifts the second
  normalised activation (after the norm: a shift before it would be normalised away)."""

  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array | None) -> jax.Array:
    conv = lambda n, name: nn.Conv(n, (3, 3), dtype=self.dtype, param_dtype=jnp.float32,
                                   name=name)
    h = conv(self.channels, "conv1")(nn.silu(_group_norm(x, self.dtype, "norm1")))
    h = _group_norm(h, self.dtype, "norm2")
    if cond is not None:
      scale, shift = jnp.split(nn.Dense(2 * self.channels, dtype=self.dtype,
                                        param_dtype=jnp.float32, name="cond")(cond), 2, -1)
      h = h * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = conv(self.channels, "conv2")(nn.silu(h))
    if x.shape[-1] != self.channels:
      x = nn.Dense(self.channels, dtype=self.dtype, param_dtype=jnp.float32, name="skip")(x)
    return x + h


class SelfAttention(nn.Module):
  """Pre-norm multi-head self-attention over all positions of a feature map."""

  num_heads: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = _group_norm(x, self.dtype).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        param_dtype=jnp.float32)(y, y)
    return x + y.reshape(b, h, w, c)


class _ImageGenerator(nn.Module):
  """The fields every image generator shares: conditioning, output range, compute dtype."""

  num_classes: int = 0
  alpha_conditioning: bool = False
  output_activation: str = "tanh"
  dtype: Any = jnp.float32


class UNetGenerator(_ImageGenerator):
  """Noise image [B, H, W, C_in] -> image [B, H, W, out_channels], one forward pass.

  H and W must be divisible by 2**(len(channel_mults) - 1). The output goes through tanh
  (range [-1, 1]) unless output_activation == "none".
  """

  out_channels: int = 3
  base_channels: int = 32
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  attention: bool = True  # Self-attention at the lowest resolution.

  @nn.compact
  def __call__(self, noise: jax.Array, labels: jax.Array | None = None,
               alpha: jax.Array | None = None) -> jax.Array:
    factor = 2 ** (len(self.channel_mults) - 1)
    if noise.ndim != 4 or noise.shape[1] % factor or noise.shape[2] % factor:
      raise ValueError(f"UNetGenerator: noise shape {noise.shape} must be [B, H, W, C] with "
                       f"H, W divisible by {factor} (channel_mults={self.channel_mults}).")
    _check_output_activation(self.output_activation)
    conv = lambda n, **kw: nn.Conv(n, (3, 3), dtype=self.dtype, param_dtype=jnp.float32, **kw)
    block = lambda n: ResBlock(n, dtype=self.dtype)
    cond = ConditionEmbedding(4 * self.base_channels, self.num_classes,
                              self.alpha_conditioning, self.dtype)(noise.shape[0], labels,
                                                                   alpha)

    h = conv(self.base_channels)(noise.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        h = block(self.base_channels * mult)(h, cond)
        skips.append(h)
      if level < len(self.channel_mults) - 1:
        h = conv(h.shape[-1], strides=(2, 2))(h)
        skips.append(h)

    h = block(h.shape[-1])(h, cond)
    if self.attention:
      h = SelfAttention(dtype=self.dtype)(h)
    h = block(h.shape[-1])(h, cond)

    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for _ in range(self.num_res_blocks + 1):
        h = block(self.base_channels * mult)(jnp.concatenate([h, skips.pop()], -1), cond)
      if level > 0:
        b, height, width, c = h.shape
        h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
        h = conv(c)(h)

    h = nn.silu(_group_norm(h, self.dtype))
    out = conv(self.out_channels)(h).astype(jnp.float32)
    return jnp.tanh(out) if self.output_activation == "tanh" else out


class DiTBlock(nn.Module):
  """Pre-norm transformer block with adaLN-Zero (Peebles & Xie, 2023): the condition sets each
  LayerNorm's scale and shift and gates both residual branches; the gates start at zero, so
  every block starts as the identity."""

  num_heads: int
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    width = x.shape[-1]
    mod = nn.Dense(6 * width, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.zeros, name="adaln")(nn.silu(cond))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod[:, None, :], 6, -1)
    norm = lambda name: nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype,
                                     param_dtype=jnp.float32, name=name)
    h = norm("norm1")(x) * (1.0 + scale1) + shift1
    h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                        param_dtype=jnp.float32)(h, h)
    x = x + gate1 * h
    h = norm("norm2")(x) * (1.0 + scale2) + shift2
    h = nn.Dense(self.mlp_ratio * width, dtype=self.dtype, param_dtype=jnp.float32)(h)
    h = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(nn.gelu(h))
    return x + gate2 * h


class DiTGenerator(_ImageGenerator):
  """Noise image [B, H, W, C_in] -> image [B, H, W, out_channels] by a small DiT: p x p patches
  as tokens with a learned position embedding, `depth` adaLN-Zero blocks conditioned on label
  and alpha (a learned vector when unconditional), a linear map back to pixels."""

  out_channels: int = 1
  patch_size: int = 4
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, noise: jax.Array, labels: jax.Array | None = None,
               alpha: jax.Array | None = None) -> jax.Array:
    p = self.patch_size
    if noise.ndim != 4 or noise.shape[1] % p or noise.shape[2] % p:
      raise ValueError(f"DiTGenerator: noise shape {noise.shape} must be [B, H, W, C] with "
                       f"H, W divisible by patch_size={p}.")
    _check_output_activation(self.output_activation)
    if self.width % self.num_heads:
      raise ValueError(f"DiTGenerator: width={self.width} is not divisible by "
                       f"num_heads={self.num_heads}.")
    b, height, width, _ = noise.shape
    gh, gw = height // p, width // p
    tokens = noise.astype(self.dtype).reshape(b, gh, p, gw, p, -1).transpose(0, 1, 3, 2, 4, 5)
    x = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed")(
        tokens.reshape(b, gh * gw, -1))
    x = x + self.param("pos_embed", nn.initializers.normal(0.02), (gh * gw, self.width))
    cond = ConditionEmbedding(self.width, self.num_classes, self.alpha_conditioning,
                              self.dtype)(b, labels, alpha)
    if cond is None:  # Unconditional: adaLN from one learned vector, a per-block modulation.
      cond = jnp.broadcast_to(self.param("null_cond", nn.initializers.normal(1.0),
                                         (self.width,)), (b, self.width)).astype(self.dtype)
    for i in range(self.depth):
      x = DiTBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(x, cond)
    shift, scale = jnp.split(nn.Dense(2 * self.width, dtype=self.dtype, param_dtype=jnp.float32,
                                      kernel_init=nn.initializers.zeros,
                                      name="final_adaln")(nn.silu(cond))[:, None, :], 2, -1)
    x = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype,
                     param_dtype=jnp.float32)(x) * (1.0 + scale) + shift
    x = nn.Dense(p * p * self.out_channels, dtype=self.dtype, param_dtype=jnp.float32,
                 name="to_pixels")(x)
    out = x.reshape(b, gh, gw, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(b, height, width, self.out_channels).astype(jnp.float32)
    return jnp.tanh(out) if self.output_activation == "tanh" else out


def _positive_ints(config: Any, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
  """A config field that must be a sequence of positive integers (a ValueError otherwise)."""
  value = config_util.field(config, key, default)
  items = tuple(value) if isinstance(value, (list, tuple)) else None
  if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                          for v in items):
    raise ValueError(f"model_config.{key}={value!r}; expected a sequence of positive "
                     f"integers such as {default}.")
  return items


def create_generator(model_config: Any) -> tuple[nn.Module, tuple[int, ...]]:
  """Builds the generator named by model_config.name; returns (module, noise shape sans batch).

  mlp fields: noise_dim (2), hidden, out_dim (2), activation ("silu"). unet fields:
  image_shape (H, W, C, required), noise_channels (C), base_channels, channel_mults,
  num_res_blocks, attention, output_activation. dit fields: image_shape, noise_channels,
  patch_size (4), width (128), depth (4), num_heads (4), mlp_ratio (4), output_activation.
  All: num_classes (0), alpha_conditioning (False), dtype ("float32").
  """
  name = config_util.field(model_config, "name", None)
  dtype_name = config_util.field(model_config, "dtype", "float32")
  if dtype_name not in _DTYPES:
    raise ValueError(f"model_config.dtype={dtype_name!r}; expected one of {list(_DTYPES)}.")
  common = dict(num_classes=int(config_util.field(model_config, "num_classes", 0)),
                alpha_conditioning=bool(config_util.field(model_config, "alpha_conditioning",
                                                          False)),
                dtype=_DTYPES[dtype_name])
  if name == "mlp":
    activation = config_util.field(model_config, "activation", "silu")
    if activation not in ACTIVATIONS:
      raise ValueError(f"model_config.activation={activation!r}; expected one of "
                       f"{list(ACTIVATIONS)}.")
    module = MLPGenerator(hidden=_positive_ints(model_config, "hidden", (256, 256, 256)),
                          out_dim=int(config_util.field(model_config, "out_dim", 2)),
                          activation=activation, **common)
    return module, (int(config_util.field(model_config, "noise_dim", 2)),)
  if name not in ("unet", "dit"):
    raise ValueError(f"model_config.name={name!r}; expected 'mlp', 'unet' or 'dit'.")
  image_shape = config_util.field(model_config, "image_shape", None)
  if image_shape is None or len(image_shape) != 3:
    raise ValueError(f"model_config.image_shape={image_shape!r}; expected (H, W, C).")
  height, width, channels = (int(s) for s in image_shape)
  output_activation = str(config_util.field(model_config, "output_activation", "tanh"))
  noise_shape = (height, width, int(config_util.field(model_config, "noise_channels", channels)))
  if name == "dit":
    module = DiTGenerator(
        out_channels=channels, patch_size=int(config_util.field(model_config, "patch_size", 4)),
        width=int(config_util.field(model_config, "width", 128)),
        depth=int(config_util.field(model_config, "depth", 4)),
        num_heads=int(config_util.field(model_config, "num_heads", 4)),
        mlp_ratio=int(config_util.field(model_config, "mlp_ratio", 4)),
        output_activation=output_activation, **common)
    return module, noise_shape
  module = UNetGenerator(
      out_channels=channels,
      base_channels=int(config_util.field(model_config, "base_channels", 32)),
      channel_mults=_positive_ints(model_config, "channel_mults", (1, 2, 2)),
      num_res_blocks=int(config_util.field(model_config, "num_res_blocks", 1)),
      attention=bool(config_util.field(model_config, "attention", True)),
      output_activation=output_activation, **common)
  return module, noise_shape


def example_conditions(model_config: Any, n: int) -> dict[str, jax.Array]:
  """The generator's keyword inputs besides noise for n examples (label 0, α = 1): what
  `init` needs to build a conditional generator's embeddings."""
  out = {}
  if int(config_util.field(model_config, "num_classes", 0)):
    out["labels"] = jnp.zeros((n,), jnp.int32)
  if bool(config_util.field(model_config, "alpha_conditioning", False)):
    out["alpha"] = jnp.ones((n,), jnp.float32)
  return out
