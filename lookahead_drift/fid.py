"""The fid binary: FID and KID of two image sets or statistics files, or a data set's statistics.

  python -m lookahead_drift.fid A.npz B.npz [--inception_weights=PATH] [--batch_size=200]
  python -m lookahead_drift.fid --ref fashion_mnist --out fashion_mnist_train.npz
  python -m lookahead_drift.fid --ref cifar10 --data_dir=cifar-10-python.tar.gz --out c10.npz

A and B are `.npz` files with uint8 images [N, H, W, 1|3] under `images`, or statistics; the
last line printed is `FID <value>`. The computation is `fid_kid.run`.
"""

import sys

from absl import flags

from lookahead_drift import cli
from lookahead_drift import fid_kid


def main(argv: list[str]) -> None:
  f = flags.FLAGS
  result = fid_kid.run(argv[1:], ref=f.ref, out=f.out, data_dir=f.data_dir, split=f.split,
                       max_images=f.max_images, inception_weights=f.inception_weights,
                       batch_size=f.batch_size, resize=f.resize, fid_method=f.fid_method,
                       kid_subsets=f.kid_subsets, kid_subset_size=f.kid_subset_size)
  if isinstance(result, fid_kid.Stats):
    print(f"wrote {f.out}: {result.count} images, weights sha256 {result.weights_sha256}")
    return
  for path, count in zip(result.paths, result.counts):
    print(f"{path}: {count} samples")
  for warning in result.warnings:
    print(warning, file=sys.stderr)
  if result.kid is not None:
    print(f"KID {result.kid[0]:.6g} (std {result.kid[1]:.3g} over {f.kid_subsets} subsets)")
  print(f"FID {result.fid:.6f}")


if __name__ == "__main__":
  flags.DEFINE_string("inception_weights", None, "Converted weights (default "
                      "$LOOKAHEAD_DRIFT_INCEPTION or ~/.cache/lookahead_drift/inception_fid.npz).")
  flags.DEFINE_integer("batch_size", 200, "Inception batch size.")
  flags.DEFINE_enum("resize", "tf1", ["tf1", "half_pixel"], "Resize to 299: TF1's bilinear "
                    "sampling, or pytorch-fid's half-pixel variant.")
  flags.DEFINE_enum("fid_method", "eigh", list(fid_kid.FID_METHODS), "Matrix square root.")
  flags.DEFINE_integer("kid_subsets", 100, "KID: number of subsets.")
  flags.DEFINE_integer("kid_subset_size", 1000, "KID: largest subset size.")
  flags.DEFINE_enum("ref", None, ["fashion_mnist", "cifar10"],
                    "Compute reference statistics of this data set into --out.")
  flags.DEFINE_string("data_dir", None,
                      "For --ref: Fashion-MNIST IDX directory or CIFAR-10 archive/dir.")
  flags.DEFINE_enum("split", "train", ["train", "test"], "For --ref: the split.")
  flags.DEFINE_integer("max_images", None, "For --ref: use only the first N images.")
  flags.DEFINE_string("out", None, "For --ref: where to write the statistics.")
  cli.run_absl(main)
