"""Trains the proxy metric's classifier (lookahead_drift.proxy_metric) once; the committed
proxy_net.npz beside this file came from the defaults (test accuracy 0.9132, ~7 min, one core).

  python experiments/fashion_mnist/recipe/train_proxy.py \
      --out=experiments/fashion_mnist/recipe/proxy_net.npz
"""

import argparse

from lookahead_drift import proxy_metric

if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="where to write the .npz")
  parser.add_argument("--data_dir", default=None, help="Fashion-MNIST IDX files (default: "
                      "/usr/share/datasets/fashion-mnist)")
  parser.add_argument("--num_steps", type=int, default=3000)
  parser.add_argument("--seed", type=int, default=1234)
  args = parser.parse_args()
  proxy_metric.train(args.data_dir, args.out, seed=args.seed, num_steps=args.num_steps)
