"""Throughput of the JAX FID Inception, and its agreement with the TorchScript original.

  python tools/benchmark_inception.py --num_images=64 --batch_size=32 [--data=fashion_mnist]
      [--compare_torch]

Prints the JAX images/s (compile excluded) on the default devices. With --compare_torch it
also prints the max relative pool3 feature difference to the TorchScript network on the same
images and the FID between the two halves of the images computed from either's features.
"""

import argparse
import pathlib
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lookahead_drift import fid  # noqa: E402
from lookahead_drift import inception  # noqa: E402
from lookahead_drift import input_pipeline  # noqa: E402


def _images(data: str, n: int, size: int) -> np.ndarray:
  if data == "fashion_mnist":
    return np.ascontiguousarray(input_pipeline.load_images({"name": "fashion_mnist", "split": "test"})[0][:n])
  return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_images", type=int, default=64)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=32, help="for --data=random")
  parser.add_argument("--data", choices=("random", "fashion_mnist"), default="random")
  parser.add_argument("--inception_weights", default=None)
  parser.add_argument("--compare_torch", action="store_true")
  args = parser.parse_args(argv)

  images = _images(args.data, args.num_images, args.image_size)
  extractor = inception.FeatureExtractor(args.inception_weights, batch_size=args.batch_size)
  print(f"devices: {jax.devices()}; {platform.processor() or platform.machine()}; "
        f"images {images.shape}, batch {extractor.batch_size}")
  extractor(images[:extractor.batch_size])  # Compile.
  start = time.perf_counter()
  feats = extractor(images)
  seconds = time.perf_counter() - start
  print(f"jax: {len(images)} images in {seconds:.1f} s = {len(images) / seconds:.2f} images/s")

  if args.compare_torch:
    import convert_inception  # pylint: disable=g-import-not-at-top  (tools/, needs torch)
    model = convert_inception.load_torchscript()
    start = time.perf_counter()
    want = np.concatenate([convert_inception.torch_features(model, images[i:i + 32])
                           for i in range(0, len(images), 32)])
    seconds = time.perf_counter() - start
    print(f"torch: {len(images)} images in {seconds:.1f} s = {len(images) / seconds:.2f} images/s")
    rel = np.abs(feats - want).max() / np.abs(want).max()
    print(f"max |jax - torch| / max |torch| over {feats.size} feature values: {rel:.3e}")
    half = len(images) // 2
    fid_jax = fid.fid_from_stats(fid.stats_from_features(feats[:half]),
                                 fid.stats_from_features(feats[half:]))
    fid_torch = fid.fid_from_stats(fid.stats_from_features(want[:half]),
                                   fid.stats_from_features(want[half:]))
    print(f"FID(first {half}, last {len(images) - half}): jax {fid_jax:.6f}, torch "
          f"{fid_torch:.6f}, relative difference {abs(fid_jax - fid_torch) / fid_torch:.3e}")


if __name__ == "__main__":
  from lookahead_drift import cli  # noqa: E402
  cli.run(lambda argv: main(argv[1:]))
