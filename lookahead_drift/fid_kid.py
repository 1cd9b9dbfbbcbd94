"""FID and KID of uint8 image sets or saved statistics, with the FID Inception-v3 of
`inception.py` (what `python -m lookahead_drift.fid` computes; see fid.py for its commands).

A and B are each an `.npz` with uint8 images [N, H, W, 1|3] under `images`, or statistics saved
by this module (`mu`, `sigma`, `count`, `weights_sha256`, `resize`; see fid_stats.py, whose
names this module also offers). `compare` returns FID, and KID when both are image sets; the
fid binary prints them. Statistics files are checked on load, and their dimension before any
Inception work.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable
from typing import Any

from absl import logging
import numpy as np
import scipy.linalg

from lookahead_drift import inception
from lookahead_drift import input_pipeline
# The statistics and their files: callers reach them here, beside the distances.
from lookahead_drift.fid_stats import (Stats, StatsAccumulator, check_features, load_stats,
                                       open_npz, save_stats, stats_from_features, stats_from_npz)

FID_METHODS = ("eigh", "sqrtm")


# ---------------------------------------------------------------------------------------------
# Distances.


def _check_gaussian(mu1, sigma1, mu2, sigma2) -> tuple[np.ndarray, ...]:
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  for name, mu, sigma in (("1", mu1, sigma1), ("2", mu2, sigma2)):
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f"mu{name} must be [D] and sigma{name} [D, D], got {mu.shape} and "
                       f"{sigma.shape}")
  if mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must have the same dimension, got {mu1.shape} and {mu2.shape}")
  return mu1, sigma1, mu2, sigma2


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  # With sigma1 = F F^T, sigma1 @ sigma2 has the nonzero eigenvalues of F^T sigma2 F, which is
  # symmetric PSD: tr sqrt(sigma1 @ sigma2) is the sum of the square roots of its eigenvalues.
  # F is the Cholesky factor when sigma1 is positive definite (N > D samples, the usual case),
  # else V sqrt(W) over the positive eigenvalues of sigma1 (few columns when N <= D).
  try:
    factor = np.linalg.cholesky(sigma1)
  except np.linalg.LinAlgError:
    w, v = np.linalg.eigh(sigma1)
    keep = w > 0
    factor = v[:, keep] * np.sqrt(w[keep])
  m = factor.T @ sigma2 @ factor
  return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
  # The reference (TTUR / pytorch-fid) computation.
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    max_imag = np.max(np.abs(np.diagonal(covmean).imag))
    if max_imag > 1e-3:
      raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary component {max_imag}: the "
                       "covariances are not positive semi-definite enough; try method='eigh'")
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *, method: str = "eigh",
                     eps: float = 1e-6) -> float:
  """‖mu1 − mu2‖² + tr(sigma1 + sigma2 − 2 (sigma1 sigma2)^½), in float64.

  `method="eigh"` (default) takes the trace through a factor of sigma1 and a symmetric
  eigendecomposition: exact for the PSD covariances FID uses, never complex, and much faster
  than sqrtm of the non-symmetric product at D = 2048 on a CPU.
  `method="sqrtm"` is the reference scipy.linalg.sqrtm computation with its eps-offset fallback.
  """
  if method not in FID_METHODS:
    raise ValueError(f"method must be one of {FID_METHODS}, got {method!r}")
  mu1, sigma1, mu2, sigma2 = _check_gaussian(mu1, sigma1, mu2, sigma2)
  if method == "eigh":
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  else:
    tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def check_compatible(a: Stats, b: Stats, names: tuple[str, str] | None = None) -> None:
  """Raises ValueError if two statistics (of files `names`, if given) differ in dimension or
  come from different networks or preprocessing."""
  which = f" of {names[0]} and {names[1]}" if names else ""
  if a.mu.shape != b.mu.shape:
    raise ValueError(f"statistics{which} have different dimensions: {a.mu.shape[0]} and "
                     f"{b.mu.shape[0]}")
  for field in ("weights_sha256", "resize"):
    va, vb = getattr(a, field), getattr(b, field)
    if va and vb and va != vb:
      raise ValueError(f"statistics{which} were computed with different {field}: {va!r} and "
                       f"{vb!r}")


def check_against_images(stats: Stats, path: str) -> None:
  """Before any Inception work: statistics of `path` must be of Inception's features to be
  compared with images (whose features are inception.FEATURE_DIM-dimensional)."""
  if stats.mu.shape[0] != inception.FEATURE_DIM:
    raise ValueError(f"{path} holds {stats.mu.shape[0]}-dimensional statistics, but images "
                     f"give {inception.FEATURE_DIM}-dimensional Inception features: use "
                     "statistics from `python -m lookahead_drift.fid --ref` or of images")


def fid_from_stats(a: Stats, b: Stats, method: str = "eigh",
                   names: tuple[str, str] | None = None) -> float:
  check_compatible(a, b, names)
  return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)


def kid(feats1: Any, feats2: Any, *, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance: (mean, std) over subsets of the unbiased MMD².

  Kernel k(x, y) = (x·y / d + 1)³. Each subset draws m = min(N1, N2, max_subset_size) samples
  of each set without replacement, as in the KID paper's and StyleGAN's code.
  """
  x_all = check_features("feats1", feats1).astype(np.float64)
  y_all = check_features("feats2", feats2).astype(np.float64)
  if x_all.shape[1] != y_all.shape[1]:
    raise ValueError(f"feats1 and feats2 have different dimensions: {x_all.shape[1]} and "
                     f"{y_all.shape[1]}")
  if num_subsets < 1 or max_subset_size < 2:
    raise ValueError(f"need num_subsets >= 1 and max_subset_size >= 2, got {num_subsets} and "
                     f"{max_subset_size}")
  d = x_all.shape[1]
  m = min(len(x_all), len(y_all), max_subset_size)
  rng = np.random.default_rng(seed)
  values = np.empty(num_subsets)
  for i in range(num_subsets):
    x = x_all[rng.choice(len(x_all), m, replace=False)]
    y = y_all[rng.choice(len(y_all), m, replace=False)]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    values[i] = within - 2 * kxy.sum() / (m * m)
  return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------------
# From images.


def compute_stats(images: np.ndarray | Iterable[np.ndarray], extractor: Any, *,
                  total: int | None = None, progress: bool = False) -> Stats:
  """Statistics of uint8 images (one [N, H, W, C] array or an iterable of batches)."""
  if isinstance(images, np.ndarray):
    inception.check_images(images)
    array, total, bs = images, len(images), extractor.batch_size
    images = (array[i:i + bs] for i in range(0, total, bs))
  acc = StatsAccumulator()
  for feats in extractor.iter_features(images, total=total, progress=progress):
    acc.update(feats)
  return acc.result(extractor.weights_sha256, extractor.resize)


def load_input(path: str) -> tuple[str, Any]:
  """('images', uint8 array) or ('stats', Stats) from an .npz given on the command line."""
  with open_npz(path) as data:
    if "images" in data:
      images = data["images"]
      inception.check_images(images, f"{path}['images']")
      if len(images) < 2:
        raise ValueError(f"{path}['images'] needs at least 2 images, got {len(images)}")
      return "images", images
    if "mu" in data and "sigma" in data:
      return "stats", stats_from_npz(data, path)
    raise ValueError(f"{path} has neither an 'images' array nor statistics ('mu', 'sigma'); "
                     f"keys: {sorted(data.files)}")


MIN_RELIABLE_SAMPLES = 2048  # the feature dimension: fewer samples give a singular covariance


def input_warnings(paths: list[str], loaded: list[tuple[str, Any]], counts: list[int]
                   ) -> list[str]:
  """Warnings about inputs that give a number of little meaning (few samples, grey vs RGB)."""
  warnings = [f"warning: {path} has only {n} samples; FID from fewer than "
              f"{MIN_RELIABLE_SAMPLES} is dominated by its bias (use 10k-50k)"
              for path, n in zip(paths, counts) if n < MIN_RELIABLE_SAMPLES]
  channels = [value.shape[-1] for kind, value in loaded if kind == "images"]
  if len(channels) == 2 and channels[0] != channels[1]:
    warnings.append(f"warning: {paths[0]} has {channels[0]} channel(s) and {paths[1]} "
                    f"{channels[1]}: grey images are repeated to RGB, so colour alone makes "
                    "the sets differ")
  return warnings


def _reference_images(name: str, data_dir: str | None, split: str,
                      max_images: int | None = None) -> np.ndarray:
  """uint8 images of a data set split (optionally its first `max_images`), read by the
  training input pipeline."""
  images, _ = input_pipeline.load_images({"name": name, "split": split, "data_dir": data_dir})
  return images if max_images is None else images[:max_images]


def dataset_features(name: str, split: str, extractor: Any, *, data_dir: str | None = None,
                     cache_dir: str | os.PathLike | None = None,
                     max_images: int | None = None) -> np.ndarray:
  """Inception features [N, 2048] of a data set split, computed once and then read from
  `cache_dir` (a 10k-image reference costs ~30 min on a 2-core CPU; None: no cache).

  The file name holds the data set, split, image count, network digest and resize, so a
  different network or preprocessing never reads stale features.
  """
  images = _reference_images(name, data_dir, split, max_images)
  path = None
  if cache_dir is not None:
    key = f"{name}_{split}_{len(images)}_{extractor.weights_sha256[:16]}_{extractor.resize}"
    path = pathlib.Path(cache_dir).expanduser() / f"{key}.npz"
    if path.is_file():
      with np.load(path) as data:
        feats = data["features"]
      if feats.shape[0] == len(images):
        logging.info("%s %s: %d features from %s", name, split, len(images), path)
        return feats
  logging.info("%s %s: Inception features of %s images", name, split, images.shape)
  feats = extractor(images, progress=True)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=feats)
    os.replace(tmp, path)  # a killed run leaves no half-written cache
  return feats


def default_feature_cache() -> pathlib.Path:
  """Where reference features are cached: next to the default Inception weights."""
  return inception.default_weights_path().parent / "features"


def write_reference_stats(name: str, out: str, extractor: inception.FeatureExtractor, *,
                          data_dir: str | None = None, split: str = "train",
                          max_images: int | None = None) -> Stats:
  """Statistics of a data set split (optionally its first `max_images`) saved to `out`."""
  images = _reference_images(name, data_dir, split, max_images)
  logging.info("%s %s: Inception statistics of %s images", name, split, images.shape)
  stats = compute_stats(images, extractor, progress=True)
  save_stats(out, stats)
  return stats


@dataclasses.dataclass(frozen=True)
class Comparison:
  """What `compare` found: each input's sample count, warnings about the inputs, FID, and KID
  (mean, std over subsets) when both inputs are image sets."""
  paths: tuple[str, ...]
  counts: tuple[int, ...]
  warnings: tuple[str, ...]
  fid: float
  kid: tuple[float, float] | None = None


def compare(paths: list[str], make_extractor: Any, *, fid_method: str = "eigh",
            kid_subsets: int = 100, kid_subset_size: int = 1000) -> Comparison:
  """FID (and KID of two image sets) between two inputs; the network is built only when an
  input is an image set, after every cheap check."""
  if len(paths) != 2:
    raise ValueError(f"expected two inputs A B (or --ref), got {len(paths)}: {paths}")
  loaded = [load_input(p) for p in paths]
  has_images = any(kind == "images" for kind, _ in loaded)
  for path, (kind, value) in zip(paths, loaded):
    if kind == "stats" and has_images:
      check_against_images(value, path)
  if not has_images:
    check_compatible(loaded[0][1], loaded[1][1], tuple(paths))
  extractor = make_extractor() if has_images else None
  stats, feats = [], []
  for path, (kind, value) in zip(paths, loaded):
    if kind == "images":
      logging.info("%s: Inception features of %s images", path, value.shape)
      f = extractor(value, progress=True)
      feats.append(f)
      stats.append(stats_from_features(f, extractor.weights_sha256, extractor.resize))
    else:
      stats.append(value)
  counts = tuple(s.count for s in stats)
  kid_value = None
  if len(feats) == 2:
    kid_value = kid(*feats, num_subsets=kid_subsets, max_subset_size=kid_subset_size)
  return Comparison(paths=tuple(paths), counts=counts,
                    warnings=tuple(input_warnings(paths, loaded, list(counts))),
                    fid=fid_from_stats(*stats, method=fid_method, names=tuple(paths)),
                    kid=kid_value)


def run(inputs: list[str], *, ref: str | None = None, out: str | None = None,
        data_dir: str | None = None, split: str = "train", max_images: int | None = None,
        inception_weights: str | None = None, batch_size: int = 200, resize: str = "tf1",
        fid_method: str = "eigh", kid_subsets: int = 100,
        kid_subset_size: int = 1000) -> Stats | Comparison:
  """What the fid binary computes: reference statistics of data set `ref` written to `out`
  (returned), or the `Comparison` of two inputs."""
  make_extractor = lambda: inception.FeatureExtractor(inception_weights, batch_size=batch_size,
                                                      resize=resize)
  if ref:
    if inputs or not out:
      raise ValueError("--ref takes no positional inputs and needs --out=PATH")
    return write_reference_stats(ref, out, make_extractor(), data_dir=data_dir, split=split,
                                 max_images=max_images)
  return compare(inputs, make_extractor, fid_method=fid_method, kid_subsets=kid_subsets,
                 kid_subset_size=kid_subset_size)
