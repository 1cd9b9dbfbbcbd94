"""The recipe ablation (issue 21): short arms of configs/fashion_mnist_cpu.py, one lever each.

  taskset -c 0 python -m experiments.fashion_mnist.recipe.run --lane=0 &
  taskset -c 1 python -m experiments.fashion_mnist.recipe.run --lane=1 &

Each lane takes the next arm that has no result and that no live process claims, trains it
with `train_loop.run` (so a killed arm resumes from its checkpoint), then scores 5,000
one-step samples of its EMA and raw parameters with the proxy (lookahead_drift.proxy_metric)
against the 10,000 test images and writes results/ARM.json and grids/ARM.png. A lane stops
when no arm is left. Arms and their config overrides are in ARMS; everything else is the CPU
config at --steps steps.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from configs import common, fashion_mnist_cpu
from lookahead_drift import (experiment, inference, input_pipeline, pictures, proxy_metric,
                             train_loop)

HERE = os.path.dirname(os.path.abspath(__file__))
ENCODERS = {"base": "/work/runs/enc_base/encoder", "strong": "/work/runs/enc_strong/encoder"}

# The conditional recipe's overrides (configs/fashion_mnist_cpu_cond.py as an arm).
COND = {"data.batch_size": 120, "conditional": dict(
    labels_per_step=10, gen_per_label=6, neg_per_label=0, cfg_max=1.0)}

# name -> (config overrides as {"a.b": value}, encoder key). The first is the baseline.
ARMS = {
    "base": ({}, "base"),
    "enc_strong": ({}, "strong"),
    "pos4x": ({"data.batch_size": 256, "gen_batch_size": 64}, "base"),
    "base_seed1": ({"seed": 1}, "base"),
    "no_locations": ({"encoder.include_locations": False}, "base"),
    "lr_const": ({"optimizer.schedule": "constant"}, "base"),
    "temp_0.05": ({"loss.temperatures": (0.05,)}, "base"),
    "width24": ({"model.base_channels": 24}, "base"),
    "k1": ({"loss.num_lookahead": 1}, "base"),  # lookahead, eq. 6 as written (issue 22)
    "dit": ({"model.name": "dit", "model.patch_size": 4, "model.width": 128, "model.depth": 4,
             "model.num_heads": 4}, "base"),
    # The raw image as one more feature group (the official feature set has raw tokens).
    "raw_pixels": ({"encoder.include_raw": True}, "base"),
    # Class-conditional without guidance: per step 6 generated and 12 real images per class, so
    # each sample is drifted only against its own class (60 generated, near the base's 64).
    "cond": (COND, "base"),
    # Levers on the conditional recipe (session 4): each changes one thing from "cond".
    # 32 real positives per class instead of 12 (the paper's N_pos ablation), same generated.
    "cond_pos32": ({**COND, "data.batch_size": 320}, "base"),
    # 5 classes a step, 12 generated and 24 real each: the same images per step, a denser
    # kernel estimate per class.
    "cond_l5": ({**COND, "conditional": dict(COND["conditional"], labels_per_step=5,
                                             gen_per_label=12)}, "base"),
    "cond_temp_0.05": ({**COND, "loss.temperatures": (0.05,)}, "base"),
    "cond_width24": ({**COND, "model.base_channels": 24}, "base"),
}


def arm_config(name: str, steps: int):
  overrides, enc = ARMS[name]
  config = fashion_mnist_cpu.get_config()
  config.num_steps = steps
  config.encoder.checkpoint = ENCODERS[enc]
  config.tensorboard = False
  config.checkpoint.update(dict(every=max(steps // 4, 1), keep=1))
  config.sample.every = steps
  config.log_every = 50
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
  for key, value in overrides.items():
    if key == "conditional":  # sampled with uniform labels at α = 1 (inference.generate)
      common.make_conditional(config, **value)
      continue
    *parents, leaf = key.split(".")
    section = config
    for p in parents:
      section = section[p]
    section[leaf] = value
  return config


def claim(path: str) -> bool:
  """True if this process now owns `path` (a pid file); a dead owner's claim is taken."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    try:
      os.kill(int(open(path).read().strip() or 0), 0)
      return False
    except (ProcessLookupError, ValueError):
      os.remove(path)
      return claim(path)
  os.write(fd, str(os.getpid()).encode())
  os.close(fd)
  return True


def test_images() -> np.ndarray:
  """The 10,000 Fashion-MNIST test images (uint8), every score's reference."""
  return input_pipeline.load_images(dict(name="fashion_mnist", split="test"))[0]


def save_grid(path: str, images: np.ndarray, scorer) -> None:
  """1,000 samples' class grid: one row per class the proxy net assigns, ten per row."""
  pictures.save_class_rows_png(path, images[:1000], scorer.classify(images[:1000]),
                               classes=range(10))


def score(workdir: str, scorer, reference_features: np.ndarray, num: int,
          grid_path: str | None, step: int | None = None):
  """Proxy scores of `num` samples of the EMA and the raw parameters, and a grid of each (one
  row per class the proxy net assigns). At a few hundred steps the EMA (decay 0.999) still
  holds much of the initialisation, so short arms are ranked by the raw parameters."""
  trained = inference.restore(workdir, step=step)
  out = {"step": trained.step}
  for which in ("ema", "raw"):
    images = pictures.to_uint8(inference.generate(
        trained.config, trained.weights(which == "ema"), num, jax.random.PRNGKey(0)))
    s = scorer.score(images, reference_features)
    out[which] = {k: v for k, v in s.items() if k != "proxy_sha256"}
    out["proxy_sha256"] = s["proxy_sha256"]
    labels = scorer.classify(images)
    out[which]["class_shares"] = [round(float(v), 4) for v in
                                  np.bincount(labels, minlength=10) / len(images)]
    if grid_path:
      save_grid(f"{grid_path}_{which}.png", images, scorer)
  return out


def table() -> str:
  """The finished arms as a Markdown table (README), best raw proxy FD first."""
  rows = []
  for name in ARMS:
    path = os.path.join(HERE, "results", f"{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        rows.append(json.load(f))
  rows.sort(key=lambda r: r["raw"]["proxy_fd"])
  lines = ["| arm | change from the CPU config | proxy FD, raw (EMA) | proxy KID, raw | "
           "train min (loaded core) |", "|---|---|---|---|---|"]
  for r in rows:
    change = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "none"
    if r["encoder"] != "base":
      change = f"encoder {r['encoder']}" + ("" if change == "none" else f", {change}")
    lines.append(f"| {r['arm']} | {change} | {r['raw']['proxy_fd']:.1f} "
                 f"({r['ema']['proxy_fd']:.1f}) | {r['raw']['proxy_kid']:.2f} ± "
                 f"{r['raw']['proxy_kid_std']:.2f} | {r['train_seconds'] / 60:.1f} |")
  return "\n".join(lines)


def time_configs(configs: dict, steps: int, rounds: int) -> dict:
  """Seconds per train step of each config, interleaved over `rounds` in one process on one
  fixed batch, and each as a ratio to the first config's time of the same round."""
  built = {}
  for name, config in configs.items():
    exp = experiment.create_experiment(config)
    batch = jax.device_put(experiment.train_inputs(next(experiment.create_dataset(config, 0))))
    state = exp.state
    for _ in range(2):  # compile and warm up
      state, metrics = exp.step_fn(state, batch, exp.encoder_params)
    jax.block_until_ready(metrics)
    built[name] = [exp, batch, state]
  times = {name: [] for name in configs}
  for _ in range(rounds):
    for name, (exp, batch, state) in built.items():
      tic = time.perf_counter()
      for _ in range(steps):
        state, metrics = exp.step_fn(state, batch, exp.encoder_params)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - tic) / steps)
      built[name][2] = state
  base = np.array(times[next(iter(configs))])
  return {name: dict(seconds_per_step=float(np.median(t)), spread=[float(min(t)), float(max(t))],
                     ratio_to_first=float(np.median(np.array(t) / base)),
                     ratio_spread=[float(min(np.array(t) / base)), float(max(np.array(t) / base))])
          for name, t in times.items()}


def write_step_costs(configs: dict, args, path: str) -> dict:
  """time_configs with the lane's --time_steps/--time_rounds, printed and written to `path`
  with the machine and its load (a timing is read only on a quiet machine)."""
  result = dict(time_configs(configs, args.time_steps, args.time_rounds),
                machine=os.uname().nodename, cpus=len(os.sched_getaffinity(0)),
                load=os.getloadavg(), command=" ".join(sys.argv))
  print(json.dumps(result, indent=2))
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  return result


def lane_parser(description: str, runs: str) -> argparse.ArgumentParser:
  """The flags every study lane takes (this runner's and the lookahead study's)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--lane", type=int, default=0)
  parser.add_argument("--steps", type=int, default=700)
  parser.add_argument("--num_samples", type=int, default=5000)
  parser.add_argument("--arms", default="", help="comma-separated subset (default: all)")
  parser.add_argument("--runs", default=runs)
  parser.add_argument("--time", action="store_true",
                      help="time each arm's train step (quiet machine), write the step costs, exit")
  parser.add_argument("--time_steps", type=int, default=5)
  parser.add_argument("--time_rounds", type=int, default=3)
  return parser


def main(argv=None):
  parser = lane_parser(__doc__.splitlines()[0], "/work/runs/recipe")
  parser.add_argument("--proxy", default=os.path.join(HERE, "proxy_net.npz"))
  parser.add_argument("--table", action="store_true", help="print the results table only")
  parser.add_argument("--grids", action="store_true",
                      help="only (re)draw grids/ARM_{raw,ema}.png of the finished arms")
  args = parser.parse_args(argv)
  if args.table:
    print(table())
    return
  names = [a for a in args.arms.split(",") if a] or list(ARMS)
  if args.time:
    cpus = len(os.sched_getaffinity(0))  # one file per core count (taskset -c 0 vs none)
    write_step_costs({name: arm_config(name, args.steps) for name in names}, args,
                     os.path.join(HERE, "results", f"step_cost_{cpus}cpu.json"))
    return
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  os.makedirs(os.path.join(HERE, "grids"), exist_ok=True)
  os.makedirs(args.runs, exist_ok=True)
  scorer = proxy_metric.load(args.proxy)
  if args.grids:
    for name in names:
      workdir = os.path.join(args.runs, name)
      if os.path.exists(os.path.join(HERE, "results", f"{name}.json")):
        trained = inference.restore(workdir)
        for which in ("ema", "raw"):
          save_grid(os.path.join(HERE, "grids", f"{name}_{which}.png"), pictures.to_uint8(
              inference.generate(trained.config, trained.weights(which == "ema"), 1000,
                                 jax.random.PRNGKey(0))), scorer)
    return
  reference = scorer.features(test_images())
  for name in names:
    result_path = os.path.join(HERE, "results", f"{name}.json")
    if not os.path.isdir(ENCODERS[ARMS[name][1]]):
      print(f"[lane {args.lane}] arm {name}: its encoder is not trained yet, skipped",
            flush=True)
      continue
    if os.path.exists(result_path) or not claim(os.path.join(args.runs, f"{name}.claim")):
      continue
    config = arm_config(name, args.steps)
    workdir = os.path.join(args.runs, name)
    print(f"[lane {args.lane}] arm {name}: {ARMS[name]}", flush=True)
    tic = time.perf_counter()
    train_loop.run(config, workdir)
    train_seconds = time.perf_counter() - tic
    scores = score(workdir, scorer, reference, args.num_samples,
                   os.path.join(HERE, "grids", name))
    overrides, enc = ARMS[name]
    record = dict(arm=name, overrides={k: list(v) if isinstance(v, tuple) else v
                                       for k, v in overrides.items()},
                  encoder=enc, steps=args.steps, train_seconds=round(train_seconds, 1),
                  lane=args.lane, command=" ".join(sys.argv), **scores)
    with open(result_path, "w") as f:
      json.dump(record, f, indent=2)
    print(f"[lane {args.lane}] {name}: EMA proxy FD {scores['ema']['proxy_fd']:.2f}, raw "
          f"{scores['raw']['proxy_fd']:.2f} ({train_seconds / 60:.1f} min)", flush=True)


if __name__ == "__main__":
  main()
