"""Issue 11: do the toy generators of configs/toy2d.py fit? One experiment per call.

  python -m experiments.toy2d.fit --out=experiments/toy2d/fit --label=default
  python -m experiments.toy2d.fit --out=/tmp/fit --label=nd8 --set model.noise_dim=8 \
      --set ema_decay=0.9
  python -m experiments.toy2d.fit --out=/tmp/fit --label=cond --config=toy2d_cond \
      --datasets=eight_gaussians,checkerboard

Trains configs/toy2d.py (or --config, another configs/ module; plus the --set overrides,
ml_collections paths) on every toy data set at once (the runs vmapped, steps scanned in
chunks, with `common.arm_from_config`: `experiment.create_experiment`'s state and step), on
the same training batches as `python -m lookahead_drift.train` (`experiment.create_dataset`).
Then, per data set, draws NUM_EVAL samples from the EMA generator (labels cycling over the
classes for a conditional one) and scores them against NUM_EVAL FRESH real points (another
stream than training): k-NN precision / recall (k = 3), energy distance, and for
eight_gaussians the share of points within 3 sigma of a mode (overall, per mode) next to the
real data's share.

Writes OUT/LABEL.png (real vs generated per data set) and appends one JSON line per experiment
(settings, metrics, timings) to OUT/log.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import records  # noqa: E402
from experiments.toy2d import common  # noqa: E402
from lookahead_drift import cli, input_pipeline, toy_metrics  # noqa: E402

NUM_EVAL = 4000
EVAL_STREAM = 0xE7A1  # fresh real points for evaluation, never trained on
EVAL_NOISE_KEY = 7


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


def train(config: Any, datasets: Sequence[str]) -> tuple[Any, float, float]:
  """Trains `config` on each data set (runs vmapped, chunks of steps); returns the final
  states and the compile and training seconds."""
  steps = config.num_steps
  chunk_len = math.gcd(steps, 100)
  start = time.perf_counter()
  arm = common.arm_from_config(config)
  states = arm.init([config.seed] * len(datasets))
  warmup = common.real_batches(common.train_streams(config, datasets), chunk_len)
  jax.block_until_ready(arm.chunk(jax.tree.map(jnp.copy, states), warmup))
  compile_s = time.perf_counter() - start
  t0 = time.perf_counter()
  streams = common.train_streams(config, datasets)
  for _ in range(steps // chunk_len):
    states = arm.chunk(states, common.real_batches(streams, chunk_len))
  jax.block_until_ready(states)
  return states, compile_s, time.perf_counter() - t0


def fit(out: str, label: str, overrides: Sequence[str] = (), config_arg: str | None = None,
        datasets: Sequence[str] = input_pipeline.TOY_DATASETS, num_eval: int = NUM_EVAL,
        config_name: str = "toy2d") -> dict[str, Any]:
  """One experiment: trains, scores, writes OUT/LABEL.png and a line of OUT/log.jsonl."""
  datasets, overrides = tuple(datasets), list(overrides)
  config = common.make_config(common.parse_overrides(overrides), config_arg, config_name)
  os.makedirs(out, exist_ok=True)
  states, compile_s, train_s = train(config, datasets)
  generate, noise_shape = common.generate_fn(config.model)
  noise = jax.random.normal(jax.random.PRNGKey(EVAL_NOISE_KEY), (num_eval, *noise_shape))
  gen_all = np.asarray(jax.jit(jax.vmap(generate, in_axes=(0, None)))(states.ema_params, noise))
  samples, reals, results = {}, {}, {}
  for i, name in enumerate(datasets):
    samples[name] = gen_all[i]
    reals[name] = input_pipeline.sample_toy(name, num_eval, [config.seed, EVAL_STREAM])
    results[name] = evaluate(name, samples[name], reals[name])
  record = {"label": label, "overrides": overrides, "num_steps": config.num_steps,
            "batch_size": config.data.batch_size, "compile_seconds": round(compile_s, 1),
            "train_seconds_all_sets": round(train_s, 1),
            "train_seconds_per_set": round(train_s / len(datasets), 1),
            "machine": {k: v for k, v in records.machine_info().items() if k in ("cpu", "cores")},
            "affinity": sorted(os.sched_getaffinity(0)),
            "load": [round(v, 1) for v in os.getloadavg()], "results": results}
  title = (f"{label}: {' '.join(overrides) or f'configs/{config_name}.py defaults'}; "
           f"{config.num_steps} steps, EMA generator, {num_eval} samples")
  plot(os.path.join(out, f"{label}.png"), title, datasets, samples, reals, results)
  with open(os.path.join(out, "log.jsonl"), "a") as fh:
    fh.write(json.dumps(records.jsonable(record)) + "\n")
  summary = "  ".join(
      f"{n[:5]} P {r['precision']:.3f} R {r['recall']:.3f}" +
      (f" in3σ {r['in_mode']:.3f}/{r['real_in_mode']:.3f} min-mode "
       f"{min(r['in_mode_per_mode']):.3f}" if "in_mode" in r else "")
      for n, r in results.items())
  print(f"{label}: {summary}  | train {train_s:.0f}s ({train_s / len(datasets):.0f}s/set), "
        f"compile {compile_s:.0f}s", flush=True)
  return record


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  fit(f.out, f.label, f.set, f.config_arg, f.datasets, f.num_eval, f.config)


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Folder for LABEL.png and log.jsonl.")
  flags.DEFINE_string("label", None, "Name of the experiment (PNG, log line).")
  flags.DEFINE_multi_string("set", [], "Config override path=value (repeatable).")
  flags.DEFINE_string("config", "toy2d", "The config: a module of configs/ (toy2d, toy2d_cond).")
  flags.DEFINE_string("config_arg", None, "The config's argument (e.g. smoke).")
  flags.DEFINE_list("datasets", list(input_pipeline.TOY_DATASETS), "Toy data sets.")
  flags.DEFINE_integer("num_eval", NUM_EVAL, "Generated and fresh real samples per data set.")
  flags.mark_flags_as_required(["out", "label"])
  cli.run_absl(main)
