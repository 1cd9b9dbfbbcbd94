"""Inception feature statistics (mean, covariance, count) and their `.npz` files.

Statistics are accumulated in float64 over any number of feature batches; the covariance is
the unbiased one (ddof=1, as np.cov in the reference TTUR and pytorch-fid code). A file holds
`mu`, `sigma`, `count`, `weights_sha256` and `resize`, and is checked on load (finite, a
covariance within round-off, count >= 2). fid_kid.py computes FID and KID from them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
from typing import Any

import numpy as np

_STATS_KEYS = ("mu", "sigma", "count")


@dataclasses.dataclass(frozen=True)
class Stats:
  """Mean and covariance of Inception features, and what they were computed with."""
  mu: np.ndarray  # [D] float64
  sigma: np.ndarray  # [D, D] float64
  count: int
  weights_sha256: str = ""  # `inception.params_sha256` of the network; "" if unknown.
  resize: str = ""  # `inception.RESIZE_METHODS` entry used; "" if unknown.


def check_features(name: str, feats: Any, min_count: int = 2) -> np.ndarray:
  """`feats` as floating point features [N, D] with N >= `min_count`; else a ValueError
  naming it."""
  feats = np.asarray(feats)
  if feats.ndim != 2:
    raise ValueError(f"{name} must be features [N, D], got shape {feats.shape}")
  if not np.issubdtype(feats.dtype, np.floating):
    raise ValueError(f"{name} must be floating point features, got dtype {feats.dtype}")
  if feats.shape[0] < min_count:
    raise ValueError(f"{name} needs at least {min_count} samples, got {feats.shape[0]}")
  return feats


class StatsAccumulator:
  """Streaming float64 mean and covariance of feature batches.

  Sums are taken around the first batch's mean so that the covariance does not lose digits
  to a large common offset.
  """

  def __init__(self) -> None:
    self.count = 0
    self._shift: np.ndarray | None = None
    self._sum: np.ndarray | None = None
    self._sum_sq: np.ndarray | None = None

  def update(self, feats: Any) -> None:
    feats = check_features("feats", feats, min_count=0).astype(np.float64)
    if feats.shape[0] == 0:
      return
    if self._shift is None:
      d = feats.shape[1]
      self._shift = feats.mean(axis=0)
      self._sum, self._sum_sq = np.zeros(d), np.zeros((d, d))
    elif feats.shape[1] != self._shift.shape[0]:
      raise ValueError(f"feats has dimension {feats.shape[1]}, earlier batches "
                       f"{self._shift.shape[0]}")
    x = feats - self._shift
    self._sum += x.sum(axis=0)
    self._sum_sq += x.T @ x
    self.count += feats.shape[0]

  def result(self, weights_sha256: str = "", resize: str = "") -> Stats:
    if self.count < 2:
      raise ValueError(f"statistics need at least 2 samples, got {self.count}")
    mean = self._sum / self.count
    sigma = (self._sum_sq - self.count * np.outer(mean, mean)) / (self.count - 1)
    sigma = (sigma + sigma.T) / 2  # Exactly symmetric.
    return Stats(self._shift + mean, sigma, self.count, weights_sha256, resize)


def stats_from_features(feats: Any, weights_sha256: str = "", resize: str = "") -> Stats:
  acc = StatsAccumulator()
  acc.update(check_features("feats", feats))
  return acc.result(weights_sha256, resize)


def save_stats(path: str | os.PathLike, stats: Stats) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:  # A file object keeps np.savez from appending ".npz".
    np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count),
             weights_sha256=np.array(stats.weights_sha256), resize=np.array(stats.resize))


STATS_TOLERANCE = 1e-5  # relative: float32 round-off in a covariance is far below it


def stats_from_npz(data: Any, path: Any) -> Stats:
  """Stats of a loaded .npz, checked (see `check_stats`) with errors naming `path`."""
  missing = [k for k in _STATS_KEYS if k not in data]
  if missing:
    raise ValueError(f"{path} is not a statistics file: missing {missing}")
  try:
    mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: mu and sigma must be numbers ({e})") from None
  d = mu.shape[0] if mu.ndim == 1 else -1
  if mu.ndim != 1 or sigma.shape != (d, d):
    raise ValueError(f"{path}: mu must be [D] and sigma [D, D], got {mu.shape}, {sigma.shape}")
  count = np.asarray(data["count"])
  if (count.ndim or not np.issubdtype(count.dtype, np.number) or not np.isfinite(count)
      or count != np.round(count) or count < 2):
    raise ValueError(f"{path}: count={count.tolist()!r}: expected an integer >= 2 (the samples "
                     "behind mu and sigma)")
  text = lambda k: str(data[k]) if k in data else ""
  stats = Stats(mu, sigma, int(count), text("weights_sha256"), text("resize"))
  check_stats(stats, path)
  return stats


def check_stats(stats: Stats, path: Any) -> None:
  """A ValueError naming `path` unless mu and sigma are finite and sigma is a covariance:
  symmetric and positive semi-definite within STATS_TOLERANCE (relative to its largest
  entry, and to its trace, which bounds its largest eigenvalue)."""
  for name in ("mu", "sigma"):
    bad = int(np.sum(~np.isfinite(getattr(stats, name))))
    if bad:
      raise ValueError(f"{path}: {name} has {bad} non-finite value(s)")
  sigma = stats.sigma
  asymmetry, scale = np.max(np.abs(sigma - sigma.T)), np.max(np.abs(sigma))
  if asymmetry > STATS_TOLERANCE * scale:
    raise ValueError(f"{path}: sigma is not symmetric (|sigma - sigma.T| up to {asymmetry:.3g}"
                     f", entries up to {scale:.3g}), so it is not a covariance")
  sigma, trace = (sigma + sigma.T) / 2, float(np.trace(sigma))
  shift = STATS_TOLERANCE * abs(trace) + np.finfo(np.float64).tiny
  try:  # succeeds iff the smallest eigenvalue is above -shift
    np.linalg.cholesky(sigma + shift * np.eye(len(sigma)))
  except np.linalg.LinAlgError:
    low = float(np.linalg.eigvalsh(sigma)[0])
    raise ValueError(f"{path}: sigma is not positive semi-definite (smallest eigenvalue "
                     f"{low:.3g}, trace {trace:.3g}), so it is not a covariance") from None


def open_npz(path: str | os.PathLike) -> Any:
  """np.load of an .npz, with a ValueError naming the file if it is anything else."""
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"no file at {path}")
  hint = "expected an .npz written by np.savez (uint8 'images', or statistics 'mu', 'sigma')"
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      npy = f.read(6) == b"\x93NUMPY"
    raise ValueError(f"{path} is {'a single .npy array' if npy else 'not an .npz (zip) file'}; "
                     f"{hint}, e.g. np.savez(path, images=array)")
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is a damaged .npz ({e}); {hint}") from e


def load_stats(path: str | os.PathLike) -> Stats:
  with open_npz(path) as data:
    return stats_from_npz(data, path)
