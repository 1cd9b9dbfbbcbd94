"""Frozen feature encoders for the drifting loss and the feature groups built from them.

`create_feature_fn(encoder_config)` returns `(feature_fn, encoder_params)` with
`feature_fn(encoder_params, x) -> {name: [G, B, D]}`: G independent groups of one feature
map (drifting.md §4). Kinds: "identity" (raw input as one vector) and "conv" (a multi-scale
ConvEncoder loaded from an orbax checkpoint written by `lookahead_drift.train_encoder`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lookahead_drift import config_util

FeatureFn = Callable[[Any, jax.Array], dict[str, jax.Array]]
_PARAMS_SUBDIR = "params"
_CONFIG_FILE = "config.json"
_STD_EPS = 1e-6  # Keeps sqrt differentiable where a patch is constant.


class ConvEncoder(nn.Module):
  """Conv stages (stride 2 between stages), GroupNorm + SiLU; returns each stage's output.

  Input: images [B, H, W, C] in [-1, 1]. Output: list of [B, H / 2**s, W / 2**s, widths[s]].
  GroupNorm (not BatchNorm) keeps `apply(params, x)` pure with no batch statistics.
  """

  widths: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    h = x.astype(self.dtype)
    features = []
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        y = nn.Conv(width, (3, 3), strides=(stride, stride), dtype=self.dtype,
                    param_dtype=jnp.float32)(h)
        y = nn.silu(nn.GroupNorm(num_groups=math.gcd(width, 8), dtype=self.dtype,
                                 param_dtype=jnp.float32)(y))
        h = y if block == 0 else h + y
      features.append(h.astype(jnp.float32))
    return features


# ----------------------------------------------------------------------------- groups


def _to_groups(x: jax.Array) -> jax.Array:
  """[B, h, w, C] -> [h*w, B, C]: one group per location."""
  b, h, w, c = x.shape
  return x.reshape(b, h * w, c).transpose(1, 0, 2)


def _patch_stats(x: jax.Array, patch: int) -> tuple[jax.Array, jax.Array]:
  """Mean and std over non-overlapping patch x patch windows, as [num_patches, B, C].

  Rows/columns that do not fill a whole patch are dropped.
  """
  b, h, w, c = x.shape
  ph, pw = h // patch, w // patch
  windows = x[:, :ph * patch, :pw * patch].reshape(b, ph, patch, pw, patch, c)
  mean = windows.mean(axis=(2, 4))
  var = jnp.square(windows - mean[:, :, None, :, None]).mean(axis=(2, 4))
  return _to_groups(mean), _to_groups(jnp.sqrt(var + _STD_EPS))


def feature_groups(feature_maps: Sequence[jax.Array], x: jax.Array, *,
                   patch_sizes: Sequence[int] = (2, 4), include_locations: bool = True,
                   include_input_rms: bool = True, include_raw: bool = False
                   ) -> dict[str, jax.Array]:
  """Feature groups {name: [G, B, D]} from encoder maps [B, h, w, C] and the input x.

  Per map s: "s{s}_loc" (every location), "s{s}_mean"/"s{s}_std" (global spatial statistics),
  "s{s}_p{p}_mean"/"s{s}_p{p}_std" (p x p patches, when the map has at least one). Plus
  "input_rms" (per-channel RMS of x, [1, B, C]) and "x" (x flattened, [1, B, H*W*C]).
  """
  groups = {}
  for s, fmap in enumerate(feature_maps):
    if include_locations:
      groups[f"s{s}_loc"] = _to_groups(fmap)
    mean = fmap.mean(axis=(1, 2))
    groups[f"s{s}_mean"] = mean[None]
    var = jnp.square(fmap - mean[:, None, None]).mean(axis=(1, 2))
    groups[f"s{s}_std"] = jnp.sqrt(var + _STD_EPS)[None]
    for p in patch_sizes:
      if fmap.shape[1] >= p and fmap.shape[2] >= p:
        groups[f"s{s}_p{p}_mean"], groups[f"s{s}_p{p}_std"] = _patch_stats(fmap, p)
  x = x.astype(jnp.float32)
  if include_input_rms:
    groups["input_rms"] = jnp.sqrt(jnp.square(x).mean(axis=(1, 2)) + _STD_EPS)[None]
  if include_raw:
    groups["x"] = x.reshape(x.shape[0], -1)[None]
  return groups


# ----------------------------------------------------------------------------- checkpoints


def save_encoder(directory: str, params: Any, config: dict[str, Any]) -> str:
  """Writes ConvEncoder params (orbax) and the config that made them (JSON) to directory.

  `config` must hold "widths" and "blocks_per_stage" and "image_shape"; more keys (data
  set, accuracy, training settings) are kept for the record. Returns the directory.
  """
  missing = {"widths", "blocks_per_stage", "image_shape"} - set(config)
  if missing:
    raise ValueError(f"save_encoder: config lacks {sorted(missing)}.")
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, _PARAMS_SUBDIR), params, force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(directory, _CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  return directory


def load_encoder(directory: str, dtype: Any = jnp.float32
                 ) -> tuple[ConvEncoder, Any, dict[str, Any]]:
  """Reads what `save_encoder` wrote: (module, params, config). Errors name the path."""
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, _CONFIG_FILE)
  params_path = os.path.join(directory, _PARAMS_SUBDIR)
  if not os.path.isfile(config_path) or not os.path.isdir(params_path):
    raise FileNotFoundError(
        f"No encoder checkpoint at {directory!r}: expected {_CONFIG_FILE} and an orbax "
        f"'{_PARAMS_SUBDIR}/' folder there. Train one with `python -m "
        "lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist.py "
        "--workdir=DIR` and set encoder.checkpoint to DIR/encoder.")
  with open(config_path) as f:
    config = json.load(f)
  try:
    module = ConvEncoder(widths=tuple(config["widths"]),
                         blocks_per_stage=int(config["blocks_per_stage"]), dtype=dtype)
    image_shape = tuple(config["image_shape"])
  except (KeyError, TypeError) as e:
    raise ValueError(f"Encoder config {config_path!r} is incompatible: {e!r}.") from e
  abstract = jax.eval_shape(module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  try:
    params = ocp.StandardCheckpointer().restore(params_path, abstract)
  except Exception as e:  # orbax raises several types for a structure/shape mismatch.
    raise ValueError(f"Encoder checkpoint {params_path!r} does not match the ConvEncoder "
                     f"described by {config_path!r}: {e}") from e
  return module, params, config


# ----------------------------------------------------------------------------- entry point


def create_feature_fn(encoder_config: Any) -> tuple[FeatureFn, Any]:
  """Returns (feature_fn, encoder_params); feature_fn(params, x) -> {name: [G, B, D]}.

  encoder_config.kind: "identity" -> {"x": x flattened, [1, B, prod(x.shape[1:])]} with
  params {}; "conv" -> groups of a ConvEncoder loaded from encoder_config.checkpoint, with
  options patch_sizes ((2, 4)), include_locations (True), include_input_rms (True),
  include_raw (False), dtype ("float32" or "bfloat16" compute).
  """
  kind = config_util.field(encoder_config, "kind", "identity")
  if kind == "identity":
    return (lambda params, x: {"x": x.reshape(x.shape[0], -1)[None]}), {}
  if kind != "conv":
    raise ValueError(f"encoder_config.kind={kind!r}; expected 'identity' or 'conv'.")
  checkpoint = config_util.field(encoder_config, "checkpoint", None)
  if not checkpoint:
    raise ValueError("encoder_config.kind='conv' needs encoder_config.checkpoint (a folder "
                     "written by lookahead_drift.train_encoder).")
  dtype_name = config_util.field(encoder_config, "dtype", "float32")
  if dtype_name not in ("float32", "bfloat16"):
    raise ValueError(f"encoder_config.dtype={dtype_name!r}; expected 'float32' or 'bfloat16'.")
  dtype = jnp.dtype(dtype_name)
  module, params, config = load_encoder(checkpoint, dtype=dtype)
  flags = {key: bool(config_util.field(encoder_config, key, default))
           for key, default in (("include_locations", True), ("include_input_rms", True),
                                ("include_raw", False))}
  options = dict(patch_sizes=tuple(config_util.field(encoder_config, "patch_sizes", (2, 4))),
                 **flags)
  image_shape = tuple(config["image_shape"])

  def feature_fn(encoder_params: Any, x: jax.Array) -> dict[str, jax.Array]:
    if tuple(x.shape[1:]) != image_shape:
      raise ValueError(f"Encoder at {checkpoint!r} expects images {image_shape}, got "
                       f"{tuple(x.shape[1:])}.")
    return feature_groups(module.apply(encoder_params, x), x, **options)

  return feature_fn, params
