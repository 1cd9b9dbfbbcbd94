"""Statistics over seeds shared by the studies: bootstrap means and intervals, and paired
differences (the same seeds, in the same order) with their intervals and sign counts.

  from experiments import stats
  stats.paired(arm_values, base_values, lower_is_better=True)  # {"mean", "ci", "better", ...}
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def bootstrap_means(d, num_boot: int = 20000, seed: int = 0,
                    max_exact: int = 200_000) -> np.ndarray:
  """Means of bootstrap resamples of d (with replacement, size len(d)).

  Exact: all n^n ordered resamples, each once, when n^n <= max_exact (n = 5 seeds: 3125);
  otherwise num_boot Monte Carlo draws.
  """
  d = np.asarray(d, np.float64)
  n = d.shape[0]
  if n ** n <= max_exact:
    idx = np.asarray(list(itertools.product(range(n), repeat=n)))
  else:
    idx = np.random.default_rng(seed).integers(0, n, size=(num_boot, n))
  return d[idx].mean(axis=1)


def bootstrap_ci(d, level: float = 0.95, **kw) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of d: the smallest resample means whose
  cumulative share reaches (1 - level) / 2 and (1 + level) / 2 (inverted CDF, no interpolation).
  `kw`: bootstrap_means' num_boot, seed, max_exact."""
  means = bootstrap_means(d, **kw)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
  return float(lo), float(hi)


def paired(arm, base, lower_is_better: bool, **kw) -> dict[str, Any]:
  """Per-seed differences arm - base (same seeds, same order): mean, 95 % CI (bootstrap over
  seeds; `kw` as bootstrap_ci's), the number of seeds on which the arm is better (ties are
  not), n and the differences."""
  d = np.asarray(arm, np.float64) - np.asarray(base, np.float64)
  better = d < 0 if lower_is_better else d > 0
  lo, hi = bootstrap_ci(d, **kw)
  return {"mean": float(d.mean()), "ci": [lo, hi], "better": int(better.sum()), "n": len(d),
          "diffs": d.tolist()}
