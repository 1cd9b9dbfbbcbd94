"""Toy 2-D study (issue 4): does lookahead drifting (k >= 1) beat drifting (k = 0)?

  python experiments/toy2d/run.py --out=experiments/toy2d            # the whole study
  python experiments/toy2d/run.py --out=/tmp/toy2d --quick           # a tiny version (tests)

Stages:
1. Sweep: on one data set, every k >= 1 tries a few settings of the knobs the paper leaves
   open (step size η, term scaling, term weights); each k keeps the one with the lowest energy
   distance to VALIDATION samples (a sample stream the final evaluation never sees).
2. Study: every data set × k × seed trains a one-step MLP generator with `train.train_step`
   (data sets and seeds vmapped, steps scanned). Every k shares the optimizer, learning rate,
   batch, initialisations, noise and training data. After every `eval_every` steps the EMA
   generator is scored against FRESH test samples (energy distance, sliced W2). The k values
   advance in turn, chunk by chunk, so that their step times are measured under the same load.
3. Outputs in --out: samples.png, curves.png, results.md (tables), results.json (everything).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from configs import toy2d  # noqa: E402
from lookahead_drift import encoder, input_pipeline, models, toy_metrics, train  # noqa: E402

TRAIN, VALID, TEST = 0, 1, 2  # independent streams of target samples
SWEEP_SEED_OFFSET = 1000  # sweep runs use other initialisations and data than the study
EVAL_KEY = 7  # the generator noise at evaluation (shared by every k)
Variant = tuple[float, str, str]  # (step_size η, term_scaling, term weights "uniform"/"geometric")
DEFAULT_VARIANT: Variant = (1.0, "none", "uniform")  # the paper's eq. 6-7 as written


@dataclasses.dataclass(frozen=True)
class Settings:
  datasets: tuple[str, ...] = input_pipeline.TOY_DATASETS
  ks: tuple[int, ...] = (0, 1, 2, 3)
  num_seeds: int = 3
  num_steps: int = 800
  eval_every: int = 50
  batch_size: int = 256
  hidden: tuple[int, ...] = (128, 128, 128)
  learning_rate: float = 1e-3  # pinned here, not read from configs/toy2d.py
  warmup_steps: int = 100
  num_eval: int = 2048  # generated and held-out target samples per evaluation
  num_projections: int = 128  # sliced W2
  num_floor_pairs: int = 8  # pairs of target sample sets for the noise floor of the metrics
  sweep_dataset: str = "checkerboard"
  sweep_seeds: int = 2
  sweep_steps: int = 400
  # Tried for every k >= 1; the first is the paper's setting. "geometric" weights are 2^-i.
  sweep_grid: tuple[Variant, ...] = (DEFAULT_VARIANT, (0.5, "none", "uniform"),
                                     (1.0, "unit_rms", "uniform"), (1.0, "none", "geometric"))


QUICK = Settings(datasets=("eight_gaussians",), ks=(0, 1), num_seeds=1, num_steps=4, eval_every=2,
                 batch_size=32, hidden=(16, 16), warmup_steps=1, num_eval=64, num_projections=8,
                 num_floor_pairs=2, sweep_seeds=1, sweep_steps=4,
                 sweep_grid=(DEFAULT_VARIANT, (0.5, "unit_rms", "geometric")))


def variant_name(variant: Variant) -> str:
  step_size, scaling, weights = variant
  return f"η={step_size:g}, {scaling}, {weights}"


def make_config(s: Settings, k: int, variant: Variant) -> Any:
  """configs/toy2d.py with the study's sizes, a constant learning rate and one loss variant."""
  config = toy2d.get_config()
  config.num_steps = max(s.num_steps, s.sweep_steps)
  config.data.batch_size = s.batch_size
  config.model.hidden = s.hidden
  # Constant after warmup: a curve cut at any step (or second) is then a finished run.
  config.optimizer.schedule = "constant"
  config.optimizer.learning_rate = s.learning_rate
  config.optimizer.warmup_steps = s.warmup_steps
  step_size, scaling, weights = variant
  if weights not in ("uniform", "geometric"):
    raise ValueError(f"term weights must be 'uniform' or 'geometric', got {weights!r}")
  config.loss.num_lookahead = k
  config.loss.step_size = step_size
  config.loss.term_scaling = scaling
  config.loss.term_weights = (tuple(0.5**i for i in range(k + 1)) if weights == "geometric"
                              else None)
  return config


@dataclasses.dataclass
class Arm:
  """One loss setting trained on all runs at once: its vmapped state and compiled steps."""
  label: str
  k: int
  variant: Variant
  init: Callable  # seeds [R] -> TrainState with a leading run axis
  chunk: Callable  # (states, real [R, T, B, 2]) -> states, jit-ed


@functools.lru_cache(maxsize=None)  # the sweep and the study share compiled steps if they can
def make_arm(s: Settings, k: int, variant: Variant) -> Arm:
  label = f"k={k}" + ("" if k == 0 else f" ({variant_name(variant)})")
  return arm_from_config(make_config(s, k, variant), label, k, variant)


def arm_from_config(config: Any, label: str, k: int = 0, variant: Variant = DEFAULT_VARIANT
                    ) -> Arm:
  """An Arm training `config`'s generator, loss and optimizer (any toy2d.py config)."""
  generator, noise_shape = models.create_generator(config.model)
  noise_shape = tuple(noise_shape)
  feature_fn, encoder_params = encoder.create_feature_fn(config.encoder)
  optimizer, schedule = train.create_optimizer(config)
  step = functools.partial(
      train.train_step, encoder_params=encoder_params, generator=generator,
      noise_shape=noise_shape, feature_fn=feature_fn, optimizer=optimizer, schedule=schedule,
      loss_config=train.create_loss_config(config), ema_decay=config.ema_decay)

  def init_one(seed: jax.Array) -> train.TrainState:
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = generator.init(init_rng, jnp.zeros((1, *noise_shape), jnp.float32))
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                            opt_state=optimizer.init(params), rng=state_rng)

  def chunk(states: train.TrainState, real: jax.Array) -> train.TrainState:
    def body(st, batch):  # batch [R, B, 2]: one step of every run
      st, _ = jax.vmap(lambda one, b: step(one, {"image": b}))(st, batch)
      return st, None

    states, _ = jax.lax.scan(body, states, jnp.swapaxes(real, 0, 1))
    return states

  return Arm(label, k, variant, jax.jit(jax.vmap(init_one)), jax.jit(chunk, donate_argnums=0))


@functools.lru_cache(maxsize=None)
def make_eval_fn(s: Settings) -> Callable:
  """(ema params [R], keys [R], targets [R, E, 2]) -> (samples, energy dist, sliced W2), per run."""
  generator, noise_shape = models.create_generator(make_config(s, 0, DEFAULT_VARIANT).model)
  directions = toy_metrics.random_directions(jax.random.PRNGKey(EVAL_KEY), s.num_projections, 2)

  def one(params, key, target):
    x = generator.apply(params, jax.random.normal(key, (target.shape[0], *noise_shape)))
    return (x, toy_metrics.energy_distance(x, target),
            toy_metrics.sliced_wasserstein(x, target, directions))

  return jax.jit(jax.vmap(one))


def targets(runs: list[tuple[str, int]], n: int, index: int, stream: int) -> np.ndarray:
  """[R, n, 2] target samples; (seed, index, stream) seeds each draw, so each is fresh."""
  return np.stack([input_pipeline.sample_toy(name, n, [seed, index, stream])
                   for name, seed in runs])


def train_arms(s: Settings, specs: list[tuple[int, Variant]], runs: list[tuple[str, int]],
               num_steps: int, eval_stream: int, log: Callable) -> dict[str, Any]:
  """Trains every (k, variant) arm on every run; evaluates every `eval_every` steps."""
  arms = [make_arm(s, k, v) for k, v in specs]
  eval_fn = make_eval_fn(s)
  seeds = jnp.asarray([seed for _, seed in runs])
  states = [arm.init(seeds) for arm in arms]
  chunk_len, num_chunks = s.eval_every, num_steps // s.eval_every
  eval_keys = lambda e: jax.vmap(lambda seed: jax.random.fold_in(
      jax.random.PRNGKey(seed + EVAL_KEY), e))(seeds)
  real = lambda c: np.stack([
      input_pipeline.sample_toy(name, chunk_len * s.batch_size, [seed, c, TRAIN]).reshape(
          chunk_len, s.batch_size, 2) for name, seed in runs])
  # Compile first (on copies: the states are donated) so that the timed chunks measure training.
  t0 = time.perf_counter()
  for arm, st in zip(arms, states):
    jax.block_until_ready(arm.chunk(jax.tree.map(jnp.copy, st), real(0)))
  log(f"  compiled {len(arms)} arms in {time.perf_counter() - t0:.0f}s")
  out = {a.label: {"k": a.k, "variant": list(a.variant), "step": [], "energy": [],
                   "sliced_w2": [], "chunk_seconds": []} for a in arms}
  samples = {}

  def evaluate(e: int, step: int) -> None:
    tgt = targets(runs, s.num_eval, e, eval_stream)
    for arm, st in zip(arms, states):
      x, ed, sw = jax.device_get(eval_fn(st.ema_params, eval_keys(e), tgt))
      rec = out[arm.label]
      rec["step"].append(step)
      rec["energy"].append(ed.tolist())
      rec["sliced_w2"].append(sw.tolist())
      samples[arm.label] = x

  evaluate(0, 0)
  for c in range(num_chunks):
    batch = real(c)
    order = list(range(len(arms)))
    order = order[c % len(order):] + order[:c % len(order)]  # no arm always runs first
    for i in order:
      t = time.perf_counter()
      states[i] = jax.block_until_ready(arms[i].chunk(states[i], batch))
      out[arms[i].label]["chunk_seconds"].append(time.perf_counter() - t)
    evaluate(c + 1, (c + 1) * chunk_len)
    if (c + 1) % max(num_chunks // 5, 1) == 0 or c + 1 == num_chunks:
      log(f"  step {(c + 1) * chunk_len}: " + ", ".join(
          f"{a.label.split(' ')[0]} ED {np.mean(out[a.label]['energy'][-1]):.4f}" for a in arms))
  for arm in arms:
    rec = out[arm.label]
    # One step of all R vmapped runs; per run it is this / R.
    rec["step_seconds"] = float(np.median(rec["chunk_seconds"]) / chunk_len)
  return {"runs": [list(r) for r in runs], "arms": out, "samples": samples}


def noise_floor(s: Settings, datasets: tuple[str, ...], stream: int) -> dict[str, Any]:
  """The metrics between two independent target sample sets of the evaluation size."""
  directions = toy_metrics.random_directions(jax.random.PRNGKey(EVAL_KEY), s.num_projections, 2)
  fn = jax.jit(jax.vmap(lambda a, b: (toy_metrics.energy_distance(a, b),
                                      toy_metrics.sliced_wasserstein(a, b, directions))))
  out = {}
  for name in datasets:
    runs = [(name, 5000 + i) for i in range(s.num_floor_pairs)]
    ed, sw = jax.device_get(fn(targets(runs, s.num_eval, 0, stream),
                               targets(runs, s.num_eval, 1, stream)))
    out[name] = {"energy": ed.tolist(), "sliced_w2": sw.tolist()}
  return out


def sweep(s: Settings, log: Callable) -> tuple[dict[int, Variant], dict[str, Any]]:
  """Picks, for each k >= 1, the variant with the lowest validation energy distance."""
  specs = [(k, v) for k in s.ks if k > 0 for v in s.sweep_grid]
  runs = [(s.sweep_dataset, SWEEP_SEED_OFFSET + i) for i in range(s.sweep_seeds)]
  res = train_arms(s, specs, runs, s.sweep_steps, VALID, log)
  chosen, scores = {0: DEFAULT_VARIANT}, {}
  for label, rec in res["arms"].items():
    # Mean over seeds of the last three evaluations: less noisy than the last one alone.
    scores[label] = float(np.mean(rec["energy"][-3:]))
    rec["score"] = scores[label]
  for k in s.ks:
    if k > 0:
      best = min((l for l in scores if res["arms"][l]["k"] == k), key=scores.__getitem__)
      chosen[k] = tuple(res["arms"][best]["variant"])
      res["arms"][best]["chosen"] = True
  del res["samples"]
  return chosen, res


def equal_time(rec: dict[str, Any], budget: float) -> int:
  """Index of the last evaluation reached within `budget` seconds of one run."""
  steps = np.asarray(rec["step"])
  return int(np.nonzero(steps * rec["run_step_seconds"] <= budget + 1e-12)[0][-1])


def summarise(study: dict[str, Any], datasets: tuple[str, ...], ks: tuple[int, ...]
              ) -> dict[str, Any]:
  """Mean ± std over seeds at the final step and at the wall-clock time of k = 0's last step."""
  table = {}
  for name in datasets:
    arms = study[name]["arms"]
    k0 = next(r for r in arms.values() if r["k"] == 0)
    budget = k0["step"][-1] * k0["run_step_seconds"]
    table[name] = {}
    for label, rec in arms.items():
      ed, sw = np.asarray(rec["energy"]), np.asarray(rec["sliced_w2"])
      i = equal_time(rec, budget)
      table[name][label] = {
          "k": rec["k"], "run_step_ms": 1e3 * rec["run_step_seconds"],
          "final_step": rec["step"][-1],
          "final_energy": [ed[-1].mean(), ed[-1].std()],
          "final_sliced_w2": [sw[-1].mean(), sw[-1].std()],
          "equal_time_seconds": budget, "equal_time_step": rec["step"][i],
          "equal_time_energy": [ed[i].mean(), ed[i].std()],
          "equal_time_sliced_w2": [sw[i].mean(), sw[i].std()]}
  return table


def _pm(v: list[float], digits: int = 4) -> str:
  return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def write_markdown(path: str, s: Settings, table: dict[str, Any], floor: dict[str, Any],
                   sweep_res: dict[str, Any], info: dict[str, Any]) -> None:
  lines = [f"Machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']}; "
           f"load average {info['load_start']} at start, {info['load_end']} at end; "
           f"total {info['seconds']:.0f} s.", "",
           f"Study: {len(s.datasets)} data sets × k ∈ {list(s.ks)} × {s.num_seeds} seeds, "
           f"{s.num_steps} steps, batch {s.batch_size}, MLP {list(s.hidden)}, "
           f"learning rate {s.learning_rate:g}; metrics on "
           f"{s.num_eval} fresh test samples (EMA generator), mean ± std over seeds. "
           "ED: energy distance; SW2: sliced Wasserstein-2. 'Equal time': the last evaluation "
           "each k reaches within the wall-clock time k = 0 needs for all its steps "
           "(ms/step: median per-step time of one run, measured below). The noise floor is the "
           "metric between two independent target sample sets of the same size.", "",
           "| data | method | ms/step | ED, final | SW2, final | step at equal time | "
           "ED, equal time | SW2, equal time |", "|---|---|---|---|---|---|---|---|"]
  for name in s.datasets:
    for label, r in table[name].items():
      lines.append(f"| {name} | {label} | {r['run_step_ms']:.2f} | {_pm(r['final_energy'])} | "
                   f"{_pm(r['final_sliced_w2'])} | {r['equal_time_step']} | "
                   f"{_pm(r['equal_time_energy'])} | {_pm(r['equal_time_sliced_w2'])} |")
    f = floor[name]
    lines.append(f"| {name} | noise floor (data vs data) | | "
                 f"{_pm([np.mean(f['energy']), np.std(f['energy'])])} | "
                 f"{_pm([np.mean(f['sliced_w2']), np.std(f['sliced_w2'])])} | | | |")
  lines += ["", f"Sweep on {s.sweep_dataset} ({s.sweep_seeds} seeds, {s.sweep_steps} steps, "
            "seeds and data apart from the study): validation ED, mean of the last three "
            "evaluations and the seeds; * = chosen for the study.", "",
            "| k | η | term scaling | term weights | validation ED |", "|---|---|---|---|---|"]
  for rec in sweep_res["arms"].values():
    eta, scaling, weights = rec["variant"]
    lines.append(f"| {rec['k']} | {eta:g} | {scaling} | {weights} | {rec['score']:.4f}"
                 f"{' *' if rec.get('chosen') else ''} |")
  with open(path, "w") as fh:
    fh.write("\n".join(lines) + "\n")


def plot_samples(path: str, s: Settings, study: dict[str, Any]) -> None:
  labels = list(next(iter(study.values()))["arms"])
  fig, axes = plt.subplots(len(s.datasets), len(labels) + 1,
                           figsize=(2.6 * (len(labels) + 1), 2.6 * len(s.datasets)),
                           squeeze=False)
  for row, name in enumerate(s.datasets):
    panels = [("data (test)", study[name]["test_sample"])] + [
        (label.split(" ")[0], study[name]["samples"][label][0]) for label in labels]
    for col, (title, pts) in enumerate(panels):
      ax = axes[row, col]
      ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, lw=0,
                 color="black" if col == 0 else f"C{col - 1}")
      ax.set(xlim=(-5, 5), ylim=(-5, 5), xticks=[], yticks=[], aspect="equal")
      if row == 0:
        ax.set_title(title)
      if col == 0:
        ax.set_ylabel(name)
  fig.suptitle(f"Samples after {s.num_steps} steps (seed 0, EMA generator)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_curves(path: str, s: Settings, study: dict[str, Any], floor: dict[str, Any]) -> None:
  fig, axes = plt.subplots(len(s.datasets), 4, figsize=(16, 3.3 * len(s.datasets)),
                           squeeze=False)
  for row, name in enumerate(s.datasets):
    for j, (metric, title) in enumerate((("energy", "energy distance"),
                                         ("sliced_w2", "sliced W2"))):
      for col, axis in ((2 * j, "step"), (2 * j + 1, "seconds")):
        ax = axes[row, col]
        for n, (label, rec) in enumerate(study[name]["arms"].items()):
          steps = np.asarray(rec["step"])
          x = steps if axis == "step" else steps * rec["run_step_seconds"]
          v = np.asarray(rec[metric])
          ax.plot(x[1:], v[1:].mean(1), color=f"C{n}", label=label.split(" ")[0], lw=1.5)
          ax.fill_between(x[1:], v[1:].min(1), v[1:].max(1), color=f"C{n}", alpha=0.2, lw=0)
        ax.axhline(np.mean(floor[name][metric]), color="gray", ls="--", lw=1,
                   label="noise floor")
        ax.set_yscale("log")
        ax.set_xlabel("training step" if axis == "step" else "seconds (one run, this CPU)")
        ax.set_title(f"{name}: {title}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[row, 0].legend(fontsize=8)
  fig.suptitle("Mean over seeds (line) and min-max (band), fresh test samples")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def machine_info() -> dict[str, Any]:
  try:
    cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
               if l.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    cpu = platform.processor() or "unknown"
  return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
          "device": str(jax.devices()[0]), "python": platform.python_version()}


def _jsonable(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {str(k): _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, (np.floating, np.integer)):
    return tree.item()
  if isinstance(tree, np.ndarray):
    return tree.tolist()
  return tree


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder for the figures, table and JSON")
  parser.add_argument("--quick", action="store_true", help="a tiny version (a few steps)")
  parser.add_argument("--learning_rate", type=float, default=None,
                      help=f"the one learning rate of every method (default {Settings.learning_rate})")
  args = parser.parse_args(argv)
  s = QUICK if args.quick else Settings()
  if args.learning_rate is not None:
    s = dataclasses.replace(s, learning_rate=args.learning_rate)
  if s.num_steps % s.eval_every or s.sweep_steps % s.eval_every:
    raise ValueError("num_steps and sweep_steps must be multiples of eval_every")
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  info = {**machine_info(), "load_start": [round(v, 1) for v in os.getloadavg()]}
  log = lambda msg: print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

  log(f"sweep on {s.sweep_dataset}: {len(s.sweep_grid)} variants × k in "
      f"{[k for k in s.ks if k > 0]}")
  chosen, sweep_res = sweep(s, log)
  for k, v in chosen.items():
    log(f"  chosen for k={k}: {variant_name(v)}")

  log(f"study: {len(s.datasets)} data sets × {s.num_seeds} seeds vmapped, k in {list(s.ks)}")
  runs = [(name, seed) for name in s.datasets for seed in range(s.num_seeds)]
  res = train_arms(s, [(k, chosen[k]) for k in s.ks], runs, s.num_steps, TEST, log)
  study = {}
  for name in s.datasets:
    idx = [i for i, (n, _) in enumerate(runs) if n == name]
    arms = {}
    for label, rec in res["arms"].items():
      arms[label] = {**rec, "run_step_seconds": rec["step_seconds"] / len(runs),
                     "energy": [[e[i] for i in idx] for e in rec["energy"]],
                     "sliced_w2": [[e[i] for i in idx] for e in rec["sliced_w2"]]}
    study[name] = {"runs": [runs[i] for i in idx], "arms": arms,
                   "samples": {l: x[idx] for l, x in res["samples"].items()},
                   "test_sample": targets([(name, 0)], s.num_eval, 10**6, TEST)[0]}
  floor = noise_floor(s, s.datasets, TEST)
  table = summarise(study, s.datasets, s.ks)
  info["load_end"] = [round(v, 1) for v in os.getloadavg()]
  info["seconds"] = time.perf_counter() - start

  plot_samples(os.path.join(args.out, "samples.png"), s, study)
  plot_curves(os.path.join(args.out, "curves.png"), s, study, floor)
  write_markdown(os.path.join(args.out, "results.md"), s, table, floor, sweep_res, info)
  results = {"settings": dataclasses.asdict(s), "machine": info,
             "chosen": {k: list(v) for k, v in chosen.items()}, "sweep": sweep_res,
             "study": {n: {"runs": r["runs"], "arms": r["arms"]} for n, r in study.items()},
             "noise_floor": floor, "table": table}
  with open(os.path.join(args.out, "results.json"), "w") as fh:
    json.dump(_jsonable(results), fh, indent=1)
  log(f"done; wrote {args.out}/samples.png, curves.png, results.md, results.json")
  return results


if __name__ == "__main__":
  main()
