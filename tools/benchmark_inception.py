"""Throughput of the JAX FID Inception, and its agreement with the TorchScript original.

  python tools/benchmark_inception.py --num_images=64 --batch_size=32 [--data=fashion_mnist]
      [--compare_torch]

Prints the JAX images/s (compile excluded) on the default devices. With --compare_torch it
also prints the max relative pool3 feature difference to the TorchScript network on the same
images and the FID between the two halves of the images computed from either's features.
"""

import platform
import time

import jax
import numpy as np
from absl import flags

from lookahead_drift import cli
from lookahead_drift import fid_kid
from lookahead_drift import inception
from lookahead_drift import input_pipeline


def _images(data: str, n: int, size: int) -> np.ndarray:
  if data == "fashion_mnist":
    return np.ascontiguousarray(input_pipeline.load_images({"name": "fashion_mnist", "split": "test"})[0][:n])
  return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def main(argv: list[str]) -> None:
  del argv
  args = flags.FLAGS

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
    fid_jax = fid_kid.fid_from_stats(fid_kid.stats_from_features(feats[:half]),
                                     fid_kid.stats_from_features(feats[half:]))
    fid_torch = fid_kid.fid_from_stats(fid_kid.stats_from_features(want[:half]),
                                       fid_kid.stats_from_features(want[half:]))
    print(f"FID(first {half}, last {len(images) - half}): jax {fid_jax:.6f}, torch "
          f"{fid_torch:.6f}, relative difference {abs(fid_jax - fid_torch) / fid_torch:.3e}")


if __name__ == "__main__":
  flags.DEFINE_integer("num_images", 64, "Images to time.")
  flags.DEFINE_integer("batch_size", 32, "Inception batch size.")
  flags.DEFINE_integer("image_size", 32, "Image size for --data=random.")
  flags.DEFINE_enum("data", "random", ["random", "fashion_mnist"], "Which images.")
  flags.DEFINE_string("inception_weights", None, "Converted Inception weights.")
  flags.DEFINE_bool("compare_torch", False, "Compare with the TorchScript network.")
  cli.run_absl(main)
