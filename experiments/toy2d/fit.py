"""Issue 11: do the toy generators of configs/toy2d.py fit? One experiment per call.

  python experiments/toy2d/fit.py --out=experiments/toy2d/fit --label=default
  python experiments/toy2d/fit.py --out=/tmp/fit --label=nd8 --set model.noise_dim=8 \
      --set ema_decay=0.9

Trains configs/toy2d.py (plus the --set overrides, ml_collections paths) on every toy data set
at once (the three runs vmapped, steps scanned in chunks, via run.py's `arm_from_config`), on the
same training batches as `python -m lookahead_drift.train` (toy stream seeded by
(config.seed, step, 0x70)). Then, per data set, draws NUM_EVAL samples from the EMA generator and
scores them against NUM_EVAL FRESH real points (another stream than training):
k-NN precision / recall (k = 3), energy distance, and for eight_gaussians the share of points
within 3 sigma of a mode (overall, per mode) next to the real data's share.

Writes OUT/LABEL.png (real vs generated per data set) and appends one JSON line per experiment
(settings, metrics, timings) to OUT/log.jsonl.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import run  # noqa: E402  (experiments/toy2d/run.py; puts the repository root on sys.path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from configs import toy2d  # noqa: E402
from lookahead_drift import input_pipeline, models, toy_metrics  # noqa: E402

NUM_EVAL = 4000
TRAIN_STREAM = 0x70  # input_pipeline._toy_stream's: the train binary's batches
EVAL_STREAM = 0xE7A1  # fresh real points for evaluation, never trained on
EVAL_NOISE_KEY = 7


def parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as bidirectional


def make_config(overrides: list[str], arg: str | None = None) -> Any:
  """configs/toy2d.py with `path=value` overrides (e.g. 'loss.temperatures=(0.05, 0.2)')."""
  config = toy2d.get_config(arg)
  for item in overrides:
    path, _, text = item.partition("=")
    *parents, leaf = path.strip().split(".")
    node = config
    for name in parents:
      node = node[name]
    value = parse_value(text)
    if isinstance(value, list):
      value = tuple(value)
    if leaf not in node:
      raise KeyError(f"--set {item!r}: {path!r} is not a field of configs/toy2d.py")
    node[leaf] = value
  return config


def real_batches(datasets: tuple[str, ...], seed: int, start: int, length: int,
                 batch: int) -> np.ndarray:
  """[R, length, batch, 2]: the train binary's batches for steps start .. start + length - 1."""
  return np.stack([np.stack([input_pipeline.sample_toy(name, batch, [seed, t, TRAIN_STREAM])
                             for t in range(start, start + length)]) for name in datasets])


def evaluate(name: str, generated: np.ndarray, real: np.ndarray) -> dict[str, Any]:
  p, r = toy_metrics.precision_recall(generated, real, k=3)
  out = {"precision": p, "recall": r,
         "energy": float(toy_metrics.energy_distance(generated, real))}
  if name == "eight_gaussians":
    centers = input_pipeline.eight_gaussians_centers()
    sigma = input_pipeline.EIGHT_GAUSSIANS_STD
    share, per_mode = toy_metrics.in_mode_share(generated, centers, sigma)
    real_share, real_per_mode = toy_metrics.in_mode_share(real, centers, sigma)
    out.update(in_mode=share, in_mode_per_mode=per_mode.tolist(), real_in_mode=real_share,
               real_in_mode_per_mode=real_per_mode.tolist())
  return out


def plot(path: str, title: str, datasets: tuple[str, ...], samples: dict[str, np.ndarray],
         reals: dict[str, np.ndarray], results: dict[str, Any]) -> None:
  fig, axes = plt.subplots(2, len(datasets), figsize=(3.2 * len(datasets), 6.6), squeeze=False)
  for col, name in enumerate(datasets):
    r = results[name]
    for row, (pts, color, what) in enumerate(((reals[name], "black", "real (fresh)"),
                                              (samples[name], "C0", "generated (EMA)"))):
      ax = axes[row, col]
      ax.scatter(pts[:, 0], pts[:, 1], s=1.0, alpha=0.4, lw=0, color=color)
      ax.set(xlim=(-5, 5), ylim=(-5, 5), xticks=[], yticks=[], aspect="equal")
      label = f"{name}\n{what}"
      if row == 1:
        label += f"\nP {r['precision']:.3f}  R {r['recall']:.3f}"
        if "in_mode" in r:
          label += f"\nin 3σ {r['in_mode']:.3f} (real {r['real_in_mode']:.3f})"
      ax.set_title(label, fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--label", required=True, help="name of the experiment (PNG, log line)")
  parser.add_argument("--set", action="append", default=[], dest="overrides",
                      help="config override path=value (repeatable)")
  parser.add_argument("--config_arg", default=None, help="configs/toy2d.py argument (smoke)")
  parser.add_argument("--datasets", default=",".join(input_pipeline.TOY_DATASETS))
  parser.add_argument("--num_eval", type=int, default=NUM_EVAL)
  args = parser.parse_args(argv)
  datasets = tuple(args.datasets.split(","))
  config = make_config(args.overrides, args.config_arg)
  os.makedirs(args.out, exist_ok=True)
  steps, batch, seed = config.num_steps, config.data.batch_size, config.seed
  chunk_len = math.gcd(steps, 100)

  start = time.perf_counter()
  arm = run.arm_from_config(config)
  states = arm.init(jnp.full((len(datasets),), seed))
  jax.block_until_ready(arm.chunk(jax.tree.map(jnp.copy, states),
                                  real_batches(datasets, seed, 0, chunk_len, batch)))
  compile_s = time.perf_counter() - start
  t0 = time.perf_counter()
  for c in range(steps // chunk_len):
    states = arm.chunk(states, real_batches(datasets, seed, c * chunk_len, chunk_len, batch))
  jax.block_until_ready(states)
  train_s = time.perf_counter() - t0

  generator, noise_shape = models.create_generator(config.model)
  noise = jax.random.normal(jax.random.PRNGKey(EVAL_NOISE_KEY), (args.num_eval, *noise_shape))
  gen_all = np.asarray(jax.jit(jax.vmap(generator.apply, in_axes=(0, None)))(
      states.ema_params, noise))
  samples, reals, results = {}, {}, {}
  for i, name in enumerate(datasets):
    samples[name] = gen_all[i]
    reals[name] = input_pipeline.sample_toy(name, args.num_eval, [seed, EVAL_STREAM])
    results[name] = evaluate(name, samples[name], reals[name])
  record = {"label": args.label, "overrides": args.overrides, "num_steps": steps,
            "batch_size": batch, "compile_seconds": round(compile_s, 1),
            "train_seconds_all_sets": round(train_s, 1),
            "train_seconds_per_set": round(train_s / len(datasets), 1),
            "machine": {k: v for k, v in run.machine_info().items() if k in ("cpu", "cores")},
            "affinity": sorted(os.sched_getaffinity(0)),
            "load": [round(v, 1) for v in os.getloadavg()], "results": results}
  title = (f"{args.label}: {' '.join(args.overrides) or 'configs/toy2d.py defaults'}; "
           f"{steps} steps, EMA generator, {args.num_eval} samples")
  plot(os.path.join(args.out, f"{args.label}.png"), title, datasets, samples, reals, results)
  with open(os.path.join(args.out, "log.jsonl"), "a") as fh:
    fh.write(json.dumps(run._jsonable(record)) + "\n")
  summary = "  ".join(
      f"{n[:5]} P {r['precision']:.3f} R {r['recall']:.3f}" +
      (f" in3σ {r['in_mode']:.3f}/{r['real_in_mode']:.3f} min-mode "
       f"{min(r['in_mode_per_mode']):.3f}" if "in_mode" in r else "")
      for n, r in results.items())
  print(f"{args.label}: {summary}  | train {train_s:.0f}s ({train_s / len(datasets):.0f}s/set), "
        f"compile {compile_s:.0f}s", flush=True)
  return record


if __name__ == "__main__":
  main()
