"""A one-minute look at the drift math: particles pushed by the lookahead field toward a target.

    python -m lookahead_drift.demo
"""

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_drift import drift


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
  centres = 2.0 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)
  return (centres[rng.integers(0, 8, n)] + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
  d = lambda u, v: np.sqrt(((u[:, None] - v[None]) ** 2).sum(-1)).mean()
  return float(2 * d(a, b) - d(a, a) - d(b, b))


def main() -> None:
  rng = np.random.default_rng(0)
  target = eight_gaussians(rng, 512)
  start = rng.normal(size=(256, 2)).astype(np.float32) * 0.5
  for k in range(4):
    step = jax.jit(lambda x, y: x + 0.5 * jnp.sum(drift.lookahead_drift(
        x, y, num_lookahead=k, temperature=0.2, step_size=0.5), axis=0))
    x = start
    for _ in range(30):
      x = step(x, target[rng.choice(512, 256, replace=False)])
    print(f"k={k}: energy distance to the target after 30 field steps: "
          f"{energy_distance(np.asarray(x), target):.4f} (start {energy_distance(start, target):.4f})")


if __name__ == "__main__":
  main()
