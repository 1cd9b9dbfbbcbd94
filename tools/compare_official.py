"""Our drift loss against the official drifting code's `drift_loss`, gradient by gradient.

  python tools/compare_official.py --official_dir=/path/to/lambertae/drifting

Reads the official `drift_loss.py` from --official_dir (not part of this repository) and
prints, for per-row negative weights as used by guidance, the largest gradient difference
relative to the official gradient, for both of our weight placements (drifting.md §4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lookahead_drift import drift
import official_code  # tools/official_code.py, beside this script

flags.DEFINE_string("official_dir", None, "Folder holding the official drift_loss.py.")
flags.DEFINE_integer("seed", 0, "Data seed.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  official = official_code.load_drift_loss(FLAGS.official_dir)
  rng = np.random.default_rng(FLAGS.seed)
  rows, n, m, l, d = 4, 16, 12, 8, 32
  gen = rng.normal(size=(rows, n, d)).astype(np.float32)
  pos = (rng.normal(size=(rows, m, d)) + 0.3).astype(np.float32)
  neg = rng.normal(size=(rows, l, d)).astype(np.float32)
  alpha = np.array([1.0, 2.0, 4.0, 8.0])[:, None]
  cases = {"w = 1": np.ones((rows, l)), "w = 0": np.zeros((rows, l)),
           "w = 2": np.full((rows, l), 2.0), "w in [0.5, 2]": rng.uniform(0.5, 2, (rows, l)),
           "(alpha - 1)(n - 1)/l, alpha 1..8 per row": np.repeat((alpha - 1) * (n - 1) / l, l, 1)}
  print(f"{rows} rows (one class each), {n} generated, {m} positives, {l} negatives, D = {d}")
  for name, w in cases.items():
    w = w.astype(np.float32)
    want = jax.grad(lambda x: official.drift_loss(x, pos, neg, weight_neg=w)[0].mean())(gen)
    diffs = []
    for weighting in drift.WEIGHTINGS:
      cfg = drift.LossConfig(neg_weighting=weighting)
      got = jax.grad(lambda x: drift.drift_loss(  # pylint: disable=cell-var-from-loop
          x[:, None], pos[:, None], config=cfg, neg_feats=neg[:, None], neg_weights=w)[0])(gen)
      diffs.append(float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))))
    print(f"  {name:42s} " + "  ".join(f"{k} {v:.1e}" for k, v in zip(drift.WEIGHTINGS, diffs)))


if __name__ == "__main__":
  flags.mark_flag_as_required("official_dir")
  app.run(main)
