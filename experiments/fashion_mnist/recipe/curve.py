"""Proxy FD over training of the full-length recipe run: each checkpoint at a multiple of
--every scored (5,000 samples, raw and EMA parameters) while the run goes on (issue 21).

  python -m experiments.fashion_mnist.recipe.curve --workdir=RUN [--every=500] [--watch]

One JSON per scored step in results/curve/ (a killed scorer keeps what it finished; the run keeps
only its last checkpoints, so --watch scores them as they appear), and grids in grids/curve_*.
"""

import argparse
import json
import os
import time

from experiments.fashion_mnist.recipe import run as recipe
from lookahead_drift import inference, proxy_metric

OUT = os.path.join(recipe.HERE, "results", "curve")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--every", type=int, default=500)
  parser.add_argument("--num", type=int, default=5000)
  parser.add_argument("--watch", action="store_true")
  args = parser.parse_args()
  os.makedirs(OUT, exist_ok=True)
  scorer = proxy_metric.load(os.path.join(recipe.HERE, "proxy_net.npz"))
  reference = scorer.features(recipe.test_images())
  num_steps = inference.run_config(args.workdir).num_steps
  while True:
    steps = [s for s in inference.checkpoint_steps(args.workdir)
             if s % args.every == 0 or s == num_steps]
    for step in steps:
      path = os.path.join(OUT, f"step_{step:06d}.json")
      if os.path.exists(path):
        continue
      result = recipe.score(args.workdir, scorer, reference, args.num,
                            os.path.join(recipe.HERE, "grids", f"curve_{step:06d}"), step=step)
      with open(path, "w") as f:
        json.dump(result, f, indent=2)
      print(f"step {step}: raw proxy FD {result['raw']['proxy_fd']:.2f}, EMA "
            f"{result['ema']['proxy_fd']:.2f}", flush=True)
    if not args.watch or num_steps in steps:
      return
    time.sleep(60)


if __name__ == "__main__":
  main()
