"""Toy 2-D study (issue 15): does lookahead drifting (k >= 1) beat drifting (k = 0)?

  PYTHONPATH=. python experiments/toy2d/run.py --out=experiments/toy2d/issue15   # everything
  PYTHONPATH=. python experiments/toy2d/run.py --out=/tmp/toy2d --quick          # tiny (tests)
  PYTHONPATH=. python experiments/toy2d/run.py --out=... --stage=timing          # one stage

Everything starts from configs/toy2d.py (the fitted toy config: noise 8, MLP 128x4, batch 256,
AdamW, lr 1e-2 cosine to 1e-3, EMA 0.99, mean shift); only the number of steps (see
Settings.num_steps), the learning rate (tuned) and the loss fields of each arm change.

Stages (`--stage`; "all" runs them in this order, each writes its file into --out and later
stages read it, so any stage can be rerun alone):
1. tune    -> tune.json: every method of TUNED_METHODS (k = 0..3, eq. 6) trains with the
   config's lr times each of Settings.lr_factors on seeds and data apart from the study
   (short runs); the method keeps the factor with the lowest energy distance to VALIDATION
   samples (a sample stream the study never evaluates on).
2. timing  -> timing.json: seconds per training step of every study arm (all data sets x
   seeds vmapped), measured in interleaved repeats (median and spread). Equal-time readings
   and the step counts of the "equal time" arms come from this file: rerun this stage on a
   quiet machine (then `--stage=study` for the equal-time arms, and `--stage=analyse`).
3. study   -> arms/<arm>.json (+ .npz samples): every arm of study_arms() trains all data sets
   x seeds at once (vmapped, steps scanned); every `eval_every` steps the EMA generator is
   scored against FRESH test samples (energy distance, sliced W2) and every `pr_every` steps
   also by k-NN precision / recall (k = 3). Arms share initialisations, noise and data per seed.
4. analyse -> results.json, results.md, curves.png, controls.png, samples*.png: paired-by-seed
   differences to k = 0 with exact bootstrap 95 % intervals (seeds resampled) and sign counts,
   at every evaluation, at the final step and at equal wall-clock time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import platform
import subprocess
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from configs import toy2d  # noqa: E402
from lookahead_drift import encoder, experiment, input_pipeline, models, toy_metrics  # noqa: E402

TRAIN, VALID, TEST = 0, 1, 2  # independent streams of target samples
TUNE_SEED_OFFSET = 1000  # tuning runs use other initialisations and data than the study
EVAL_KEY = 7  # the generator noise at evaluation (shared by every arm)
METRICS = ("energy", "sliced_w2", "precision", "recall")
LOWER_IS_BETTER = {"energy": True, "sliced_w2": True, "precision": False, "recall": False}
METRIC_NAMES = {"energy": "ED", "sliced_w2": "SW2", "precision": "P", "recall": "R"}


@dataclasses.dataclass(frozen=True)
class Settings:
  datasets: tuple[str, ...] = input_pipeline.TOY_DATASETS
  num_seeds: int = 5
  num_steps: int = 2000  # configs/toy2d.py has 6000; the compute budget allows 2000 (README)
  chunk: int = 50  # steps per jit-ed scan; every eval/step count is a multiple of it
  eval_every: int = 100  # energy distance and sliced W2
  pr_every: int = 500  # precision / recall (numpy, slower)
  batch_size: int | None = None  # None: the config's (256)
  hidden: tuple[int, ...] | None = None  # None: the config's (128, 128, 128, 128)
  warmup_steps: int | None = None  # None: the config's (100)
  num_eval: int = 2048  # generated and fresh target samples for ED and SW2
  num_pr: int = 1024  # generated and fresh target samples for precision / recall
  pr_k: int = 3
  num_projections: int = 128  # sliced W2
  num_floor_pairs: int = 8  # pairs of target sample sets for the metrics' noise floor
  lr_factors: tuple[float, ...] = (0.5, 1.0, 2.0)  # times the config's lr (and its end value)
  tune_seeds: int = 2
  tune_steps: int = 1000
  timing_steps: int = 25  # one timed chunk
  timing_repeats: int = 5
  num_boot: int = 20000  # Monte Carlo bootstrap draws when exact enumeration is too large


QUICK = Settings(datasets=("eight_gaussians", "checkerboard"), num_seeds=2, num_steps=4, chunk=2,
                 eval_every=2, pr_every=4, batch_size=32, hidden=(16, 16), warmup_steps=1,
                 num_eval=64, num_pr=48, num_projections=8, num_floor_pairs=2,
                 lr_factors=(0.5, 1.0), tune_seeds=1, tune_steps=2, timing_steps=2,
                 timing_repeats=2, num_boot=500)


@dataclasses.dataclass(frozen=True)
class ArmSpec:
  """One training arm: a loss setting, whose tuned lr it uses, and how many steps it trains."""
  name: str
  k: int
  group: str  # "main", "extra", "control", "equal_time"
  lr_of: str  # the tuned method whose learning rate this arm uses
  lr_mult: float = 1.0
  loss: tuple[tuple[str, Any], ...] = ()  # config.loss overrides on top of num_lookahead=k
  equal_time_of: str | None = None  # trains the steps that take k = 0's wall time (timing.json)
  note: str = ""


EQ6 = (("step_size", 1.0), ("term_scaling", "none"), ("term_weights", None))
TUNED_METHODS = ("k=0", "k=1", "k=2", "k=3")


def study_arms(quick: bool = False) -> list[ArmSpec]:
  """Every arm of the study; the quick version keeps one of each kind."""
  ks = (1,) if quick else (1, 2, 3)
  arms = [ArmSpec("k=0", 0, "main", "k=0", loss=EQ6, note="drifting (k = 0)")]
  arms += [ArmSpec(f"k={k}", k, "main", f"k={k}", loss=EQ6,
                   note="lookahead, eq. 6 as written (η = 1, raw sum, w_i = 1)") for k in ks]
  arms += [ArmSpec("k=1 unit_rms", 1, "extra", "k=1",
                   loss=(("step_size", 1.0), ("term_scaling", "unit_rms"), ("term_weights", None)),
                   note="extension: each term scaled to unit RMS (k=1's tuned lr)")]
  if not quick:
    arms += [ArmSpec("k=1 η=0.5", 1, "extra", "k=1",
                     loss=(("step_size", 0.5), ("term_scaling", "none"), ("term_weights", None)),
                     note="extension: chain step η = 0.5 (k=1's tuned lr)")]
    arms += [ArmSpec("k=1 at lr of k=0", 1, "extra", "k=0", loss=EQ6,
                     note="eq. 6 at k = 0's tuned lr (is the tuned-lr gap the difference?)")]
  for c in sorted({2, max(ks) + 1}):  # x + (k+1)V for k = 1 and the largest k
    arms.append(ArmSpec(f"k=0 x+{c}V", 0, "control", "k=0",
                        loss=(("term_weights", (float(c),)),),
                        note=f"k = 0 regressed onto x + {c}V (term_weights=({c},))"))
  arms.append(ArmSpec("k=0 lr×2", 0, "control", "k=0", lr_mult=2.0, loss=EQ6,
                      note="k = 0 at twice its tuned learning rate"))
  arms += [ArmSpec(f"k={k} summed", k, "control", f"k={k}", loss=EQ6 + (("chain", "summed"),),
                   note="one chain on the summed, normalised field (k's tuned lr)") for k in ks]
  arms += [ArmSpec(f"k={k} equal time", k, "equal_time", f"k={k}", loss=EQ6,
                   equal_time_of="k=0",
                   note="eq. 6, trained for the steps k = 0's run takes in wall time") for k in ks]
  return arms


def slug(name: str) -> str:
  return (name.replace("=", "").replace(" ", "_").replace("×", "x").replace("+", "p")
          .replace("η", "eta"))


def make_config(s: Settings, spec: ArmSpec, lr_factor: float, num_steps: int) -> Any:
  """configs/toy2d.py with the arm's loss, lr = factor × the config's lr, `num_steps` steps."""
  config = toy2d.get_config()
  config.num_steps = num_steps  # the cosine schedule spans exactly this run
  if s.batch_size is not None:
    config.data.batch_size = s.batch_size
  if s.hidden is not None:
    config.model.hidden = s.hidden
  if s.warmup_steps is not None:
    config.optimizer.warmup_steps = s.warmup_steps
  opt = config.optimizer
  opt.end_value = opt.get("end_value", 0.0) * lr_factor  # keep the schedule's shape
  opt.learning_rate = opt.learning_rate * lr_factor
  config.loss.num_lookahead = spec.k
  for key, value in spec.loss:
    config.loss[key] = value
  return config


@dataclasses.dataclass
class Arm:
  """One config trained on R runs at once: its vmapped init and jit-ed chunk of steps."""
  init: Callable  # seeds [R] -> TrainState with a leading run axis
  chunk: Callable  # (states, real [R, T, B, 2]) -> states


def arm_from_config(config: Any) -> Arm:
  generator, noise_shape = models.create_generator(config.model)
  noise_shape = tuple(noise_shape)
  feature_fn, encoder_params = encoder.create_feature_fn(config.encoder)
  optimizer, schedule = experiment.create_optimizer(config)
  step = functools.partial(
      experiment.train_step, encoder_params=encoder_params, generator=generator,
      noise_shape=noise_shape, feature_fn=feature_fn, optimizer=optimizer, schedule=schedule,
      loss_config=experiment.create_loss_config(config), ema_decay=config.ema_decay)

  def init_one(seed: jax.Array) -> experiment.TrainState:
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = generator.init(init_rng, jnp.zeros((1, *noise_shape), jnp.float32))
    return experiment.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                            opt_state=optimizer.init(params), rng=state_rng)

  def chunk(states: experiment.TrainState, real: jax.Array) -> experiment.TrainState:
    def body(st, batch):  # batch [R, B, 2]: one step of every run
      st, _ = jax.vmap(lambda one, b: step(one, {"image": b}))(st, batch)
      return st, None

    states, _ = jax.lax.scan(body, states, jnp.swapaxes(real, 0, 1))
    return states

  return Arm(jax.jit(jax.vmap(init_one)), jax.jit(chunk, donate_argnums=0))


@functools.lru_cache(maxsize=None)
def make_arm(s: Settings, spec: ArmSpec, lr_factor: float, num_steps: int) -> Arm:
  return arm_from_config(make_config(s, spec, lr_factor, num_steps))


def batch_size(s: Settings) -> int:
  return s.batch_size or toy2d.get_config().data.batch_size


def real_batches(s: Settings, runs: list[tuple[str, int]], c: int) -> np.ndarray:
  """[R, chunk, B, 2] training data of chunk c; (seed, c, TRAIN) seeds it, equal for all arms."""
  b = batch_size(s)
  return np.stack([input_pipeline.sample_toy(name, s.chunk * b, [seed, c, TRAIN]).reshape(
      s.chunk, b, 2) for name, seed in runs])


def targets(runs: list[tuple[str, int]], n: int, index: int, stream: int) -> np.ndarray:
  """[R, n, 2] target samples; (seed, index, stream) seeds each draw, so each is fresh."""
  return np.stack([input_pipeline.sample_toy(name, n, [seed, index, stream])
                   for name, seed in runs])


@functools.lru_cache(maxsize=None)
def make_eval_fn(s: Settings) -> Callable:
  """(ema params [R], seeds [R], eval index, targets [R, E, 2]) -> samples, ED, SW2 per run."""
  spec = ArmSpec("k=0", 0, "main", "k=0")
  generator, noise_shape = models.create_generator(make_config(s, spec, 1.0, 1).model)
  directions = toy_metrics.random_directions(jax.random.PRNGKey(EVAL_KEY), s.num_projections, 2)

  def one(params, seed, index, target):
    key = jax.random.fold_in(jax.random.PRNGKey(seed + EVAL_KEY), index)
    x = generator.apply(params, jax.random.normal(key, (target.shape[0], *noise_shape)))
    return (x, toy_metrics.energy_distance(x, target),
            toy_metrics.sliced_wasserstein(x, target, directions))

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0)))


def train_runs(s: Settings, arm: Arm, runs: list[tuple[str, int]], num_steps: int,
               stream: int, log: Callable, eval_every: int, pr_every: int) -> dict[str, Any]:
  """Trains one arm on every run; scores the EMA generator every eval_every steps."""
  eval_fn = make_eval_fn(s)
  seeds = np.asarray([seed for _, seed in runs])
  t0 = time.perf_counter()
  states = arm.init(jnp.asarray(seeds))
  rec = {"step": [], "energy": [], "sliced_w2": [], "pr_step": [], "precision": [],
         "recall": [], "chunk_seconds": []}
  last_x = None

  def evaluate(step: int) -> None:
    nonlocal last_x
    tgt = targets(runs, s.num_eval, step, stream)
    x, ed, sw = jax.device_get(eval_fn(states.ema_params, jnp.asarray(seeds), step, tgt))
    rec["step"].append(step)
    rec["energy"].append(ed.tolist())
    rec["sliced_w2"].append(sw.tolist())
    last_x = x
    if step > 0 and (step % pr_every == 0 or step == num_steps):
      pr = [toy_metrics.precision_recall(x[i, :s.num_pr], tgt[i, :s.num_pr], k=s.pr_k)
            for i in range(len(runs))]
      rec["pr_step"].append(step)
      rec["precision"].append([p for p, _ in pr])
      rec["recall"].append([r for _, r in pr])

  evaluate(0)
  for c in range(num_steps // s.chunk):
    batch = real_batches(s, runs, c)
    t = time.perf_counter()
    states = jax.block_until_ready(arm.chunk(states, batch))
    rec["chunk_seconds"].append(time.perf_counter() - t)
    step = (c + 1) * s.chunk
    if step % eval_every == 0 or step == num_steps:
      evaluate(step)
  rec["wall_seconds"] = time.perf_counter() - t0
  log(f"    {num_steps} steps, {rec['wall_seconds']:.0f}s (first chunk incl. compile "
      f"{rec['chunk_seconds'][0]:.1f}s); final ED by run: "
      + " ".join(f"{v:.3f}" for v in rec["energy"][-1]))
  return rec, last_x


def split_by_dataset(rec: dict[str, Any], runs: list[tuple[str, int]]) -> dict[str, Any]:
  out = {}
  for name in dict.fromkeys(n for n, _ in runs):
    idx = [i for i, (n, _) in enumerate(runs) if n == name]
    out[name] = {"seeds": [runs[i][1] for i in idx]}
    for m in METRICS:
      out[name][m] = [[row[i] for i in idx] for row in rec[m]]
  return out


# --------------------------------------------------------------------------------------- stages


def stage_tune(s: Settings, out: str, log: Callable) -> dict[str, Any]:
  """Each tuned method's lr factor: the lowest mean validation ED over data sets and seeds."""
  specs = {a.name: a for a in study_arms(s is QUICK) if a.name in TUNED_METHODS}
  runs = [(name, TUNE_SEED_OFFSET + i) for name in s.datasets for i in range(s.tune_seeds)]
  res = {"runs": runs, "steps": s.tune_steps, "factors": list(s.lr_factors),
         "base_lr": toy2d.get_config().optimizer.learning_rate, "methods": {}}
  for name, spec in specs.items():
    res["methods"][name] = {"scores": {}, "by_dataset": {}}
    for f in s.lr_factors:
      log(f"  tune {name}, lr factor {f:g}")
      rec, _ = train_runs(s, make_arm(s, spec, f, s.tune_steps), runs, s.tune_steps, VALID,
                          log, eval_every=s.tune_steps, pr_every=10**9)
      per = split_by_dataset(rec, runs)
      by_ds = {ds: float(np.mean(v["energy"][-1])) for ds, v in per.items()}
      res["methods"][name]["by_dataset"][str(f)] = by_ds
      res["methods"][name]["scores"][str(f)] = float(np.mean(list(by_ds.values())))
    scores = res["methods"][name]["scores"]
    res["methods"][name]["chosen"] = float(min(scores, key=scores.__getitem__))
    log(f"  {name}: chosen lr factor {res['methods'][name]['chosen']:g} (scores {scores})")
  write_json(os.path.join(out, "tune.json"), res)
  return res


def lr_factor(spec: ArmSpec, tune: dict[str, Any]) -> float:
  return tune["methods"][spec.lr_of]["chosen"] * spec.lr_mult


def stage_timing(s: Settings, out: str, tune: dict[str, Any], log: Callable) -> dict[str, Any]:
  """Seconds per step of each arm (all runs vmapped), chunks timed in rotating order."""
  runs = [(name, seed) for name in s.datasets for seed in range(s.num_seeds)]
  specs = [a for a in study_arms(s is QUICK) if a.group != "equal_time"]
  ts = dataclasses.replace(s, chunk=s.timing_steps)
  arms = [make_arm(ts, a, lr_factor(a, tune), s.num_steps) for a in specs]
  batch = real_batches(ts, runs, 0)
  states = []
  for spec, arm in zip(specs, arms):  # compile, and one untimed chunk
    st = arm.init(jnp.arange(len(runs)))
    states.append(jax.block_until_ready(arm.chunk(st, batch)))
  log(f"  compiled {len(arms)} arms")
  times = {a.name: [] for a in specs}
  for rep in range(s.timing_repeats):
    order = list(range(len(arms)))
    order = order[rep % len(order):] + order[:rep % len(order)]
    for i in order:
      t = time.perf_counter()
      states[i] = jax.block_until_ready(arms[i].chunk(states[i], batch))
      times[specs[i].name].append((time.perf_counter() - t) / s.timing_steps)
  res = {"machine": machine_info(), "num_runs": len(runs), "steps_per_chunk": s.timing_steps,
         "repeats": s.timing_repeats, "arms": {}}
  for name, v in times.items():
    res["arms"][name] = {"step_seconds": v, "median": float(np.median(v)),
                         "min": float(np.min(v)), "max": float(np.max(v)),
                         "run_step_seconds": float(np.median(v)) / len(runs)}
    log(f"  {name}: {1e3 * np.median(v):.1f} ms/step for {len(runs)} runs "
        f"(min {1e3 * np.min(v):.1f}, max {1e3 * np.max(v):.1f})")
  write_json(os.path.join(out, "timing.json"), res)
  return res


def equal_time_steps(s: Settings, spec: ArmSpec, timing: dict[str, Any]) -> int:
  """Steps (a multiple of s.chunk, >= one chunk) of `spec` that take k = 0's wall time."""
  base = timing["arms"][spec.equal_time_of]["median"] * s.num_steps
  own = timing["arms"][spec.name.replace(" equal time", "")]["median"]
  return max(s.chunk, int(round(base / own / s.chunk)) * s.chunk)


def stage_study(s: Settings, out: str, tune: dict[str, Any], timing: dict[str, Any],
                log: Callable, only: list[str] | None = None, skip_existing: bool = False
                ) -> None:
  runs = [(name, seed) for name in s.datasets for seed in range(s.num_seeds)]
  os.makedirs(os.path.join(out, "arms"), exist_ok=True)
  for spec in study_arms(s is QUICK):
    path = os.path.join(out, "arms", slug(spec.name))
    if only and spec.name not in only:
      continue
    if skip_existing and os.path.exists(path + ".json"):
      log(f"  skip {spec.name}: {path}.json exists")
      continue
    if spec.equal_time_of is not None and timing is None:
      raise FileNotFoundError(f"{spec.name} needs timing.json: run --stage=timing first")
    steps = s.num_steps if spec.equal_time_of is None else equal_time_steps(s, spec, timing)
    f = lr_factor(spec, tune)
    log(f"  {spec.name}: {steps} steps, lr factor {f:g} ({spec.note})")
    rec, x = train_runs(s, make_arm(s, spec, f, steps), runs, steps, TEST, log,
                        eval_every=s.eval_every, pr_every=s.pr_every)
    result = {"spec": dataclasses.asdict(spec), "lr_factor": f, "num_steps": steps,
              "learning_rate": make_config(s, spec, f, steps).optimizer.learning_rate,
              "step": rec["step"], "pr_step": rec["pr_step"],
              "chunk_seconds": rec["chunk_seconds"], "wall_seconds": rec["wall_seconds"],
              "machine": machine_info(), "datasets": split_by_dataset(rec, runs)}
    write_json(path + ".json", result)
    first = {name: x[[i for i, (n, sd) in enumerate(runs) if n == name and sd == 0][0]]
             for name in s.datasets}
    np.savez_compressed(path + ".npz", **first)


# ----------------------------------------------------------------------------------- statistics


def bootstrap_means(d: np.ndarray, num_boot: int = 20000, seed: int = 0,
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
  cumulative share reaches (1 - level) / 2 and (1 + level) / 2 (inverted CDF, no interpolation)."""
  means = bootstrap_means(d, **kw)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
  return float(lo), float(hi)


def paired(arm: np.ndarray, base: np.ndarray, lower_is_better: bool, **kw) -> dict[str, Any]:
  """Per-seed differences arm - base (same seeds, same order): mean, 95 % CI, seeds better."""
  d = np.asarray(arm, np.float64) - np.asarray(base, np.float64)
  better = d < 0 if lower_is_better else d > 0
  lo, hi = bootstrap_ci(d, **kw)
  return {"mean": float(d.mean()), "ci": [lo, hi], "better": int(better.sum()), "n": len(d),
          "diffs": d.tolist()}


def equal_time_index(steps: list[int], run_step_seconds: float, budget: float) -> int | None:
  """Index of the last evaluation whose step is reached within `budget` seconds (None: none)."""
  reached = np.nonzero(np.asarray(steps) * run_step_seconds <= budget * (1 + 1e-9))[0]
  return int(reached[-1]) if reached.size else None


# ------------------------------------------------------------------------------------- analysis


def load_arms(s: Settings, out: str) -> dict[str, dict[str, Any]]:
  arms = {}
  for spec in study_arms(s is QUICK):
    path = os.path.join(out, "arms", slug(spec.name))
    if os.path.exists(path + ".json"):
      with open(path + ".json") as fh:
        arms[spec.name] = json.load(fh)
      arms[spec.name]["samples"] = dict(np.load(path + ".npz"))
  return arms


def noise_floor(s: Settings) -> dict[str, Any]:
  """The metrics between two independent target sample sets of the evaluation sizes."""
  directions = toy_metrics.random_directions(jax.random.PRNGKey(EVAL_KEY), s.num_projections, 2)
  out = {}
  for name in s.datasets:
    runs = [(name, 5000 + i) for i in range(s.num_floor_pairs)]
    a, b = targets(runs, s.num_eval, 0, TEST), targets(runs, s.num_eval, 1, TEST)
    ed = [float(toy_metrics.energy_distance(x, y)) for x, y in zip(a, b)]
    sw = [float(toy_metrics.sliced_wasserstein(x, y, directions)) for x, y in zip(a, b)]
    pr = [toy_metrics.precision_recall(x[:s.num_pr], y[:s.num_pr], k=s.pr_k) for x, y in zip(a, b)]
    out[name] = {"energy": ed, "sliced_w2": sw, "precision": [p for p, _ in pr],
                 "recall": [r for _, r in pr]}
  return out


def metric_rows(rec: dict[str, Any], ds: str, metric: str) -> tuple[list[int], np.ndarray]:
  steps = rec["pr_step"] if metric in ("precision", "recall") else rec["step"]
  return steps, np.asarray(rec["datasets"][ds][metric], np.float64)  # [evals, seeds]


def analyse(s: Settings, out: str, arms: dict[str, Any], timing: dict[str, Any],
            tune: dict[str, Any]) -> dict[str, Any]:
  kw = {"num_boot": s.num_boot}
  base = arms["k=0"]
  t_run = {n: a["run_step_seconds"] for n, a in timing["arms"].items()}
  budget = base["num_steps"] * t_run["k=0"]  # seconds of one run of k = 0, all its steps
  res = {"per_step": {}, "final": {}, "equal_time": {}, "vs_controls": {}, "summary": {}}
  for ds in s.datasets:
    res["per_step"][ds], res["final"][ds], res["equal_time"][ds] = {}, {}, {}
    for name, rec in arms.items():
      fin, per = {}, {}
      for m in METRICS:
        steps, v = metric_rows(rec, ds, m)
        bsteps, bv = metric_rows(base, ds, m)
        fin[m] = {"mean": float(v[-1].mean()), "std": float(v[-1].std(ddof=1)) if v.shape[1] > 1
                  else 0.0, "step": steps[-1]}
        if name != "k=0" and rec["spec"]["equal_time_of"] is None:
          fin[m]["vs_k0"] = paired(v[-1], bv[-1], LOWER_IS_BETTER[m], **kw)
          common = [st for st in steps if st in bsteps]
          per[m] = {"step": common, "vs_k0": [
              paired(v[steps.index(st)], bv[bsteps.index(st)], LOWER_IS_BETTER[m], **kw)
              for st in common]}
        elif rec["spec"]["equal_time_of"] is not None:
          # Its final step took k = 0's full run time: compare with k = 0's final.
          fin[m]["vs_k0"] = paired(v[-1], bv[-1], LOWER_IS_BETTER[m], **kw)
      res["final"][ds][name] = fin
      if per:
        res["per_step"][ds][name] = per
      # Equal time read off the full-length curve (the cosine schedule not yet finished).
      # (Only k >= 1: a k = 0 control costs what k = 0 costs; its timing differs by noise.)
      if rec["spec"]["k"] > 0 and rec["spec"]["equal_time_of"] is None and name in t_run:
        et = {"seconds": budget}
        for m in METRICS:
          steps, v = metric_rows(rec, ds, m)
          bsteps, bv = metric_rows(base, ds, m)
          i = equal_time_index(steps, t_run[name], budget)
          if i is None:
            et[m] = {"step": None}
            continue
          et[m] = {"step": steps[i], "mean": float(v[i].mean()),
                   "vs_k0": paired(v[i], bv[-1], LOWER_IS_BETTER[m], **kw)}
        res["equal_time"][ds][name] = et
    # Lookahead against the controls that could explain it.
    res["vs_controls"][ds] = {}
    for name, rec in arms.items():
      k = rec["spec"]["k"]
      if rec["spec"]["group"] != "main" or k == 0:
        continue
      for ctrl in (f"k=0 x+{k + 1}V", "k=0 lr×2", f"k={k} summed"):
        if ctrl in arms:
          res["vs_controls"][ds][f"{name} vs {ctrl}"] = {
              m: paired(metric_rows(rec, ds, m)[1][-1], metric_rows(arms[ctrl], ds, m)[1][-1],
                        LOWER_IS_BETTER[m], **kw) for m in METRICS}
  return res


# ------------------------------------------------------------------------------------- writing


def _ci(p: dict[str, Any], digits: int = 4) -> str:
  return (f"{p['mean']:+.{digits}f} [{p['ci'][0]:+.{digits}f}, {p['ci'][1]:+.{digits}f}] "
          f"{p['better']}/{p['n']}")


def write_markdown(path: str, s: Settings, arms: dict[str, Any], res: dict[str, Any],
                   timing: dict[str, Any], tune: dict[str, Any], floor: dict[str, Any]) -> None:
  base_lr = tune["base_lr"]
  L = [f"Settings: {s.num_seeds} seeds (0-{s.num_seeds - 1}) × {len(s.datasets)} data sets, "
       f"{s.num_steps} steps (configs/toy2d.py otherwise), cosine schedule over each arm's own "
       f"steps; ED and SW2 on {s.num_eval} generated vs {s.num_eval} fresh test samples every "
       f"{s.eval_every} steps; precision / recall (k = {s.pr_k}) on {s.num_pr} vs {s.num_pr} every "
       f"{s.pr_every} steps. Differences are arm − k=0 per seed: mean [exact bootstrap 95 % CI "
       "over seeds] and the number of seeds on which the arm is better (lower ED / SW2, higher "
       "P / R).", "",
       "## Learning rate (tuned on validation samples, seeds and data apart from the study)", "",
       f"{tune['steps']} steps (cosine over them), seeds {sorted({r[1] for r in tune['runs']})}; "
       "score = validation ED at the last step, mean over seeds and data sets. lr = factor × "
       f"{base_lr:g} (end value 1e-3 × factor).", "",
       "| method | " + " | ".join(f"×{f:g}" for f in tune["factors"]) + " | chosen |",
       "|---|" + "---|" * (len(tune["factors"]) + 1)]
  for name, m in tune["methods"].items():
    L.append(f"| {name} | " + " | ".join(f"{m['scores'][str(f)]:.4f}" for f in tune["factors"])
             + f" | ×{m['chosen']:g} |")
  L += ["", "## Arms", "", "| arm | group | lr | steps | ms/step (all runs) [min, max] | × k=0 | "
        "what |", "|---|---|---|---|---|---|---|"]
  t0 = timing["arms"]["k=0"]["median"]
  for name, a in arms.items():
    t = timing["arms"].get(name)
    tt = (f"{1e3 * t['median']:.1f} [{1e3 * t['min']:.1f}, {1e3 * t['max']:.1f}] | "
          f"{t['median'] / t0:.2f}" if t else " | ")
    L.append(f"| {name} | {a['spec']['group']} | {a['learning_rate']:.3g} | {a['num_steps']} | "
             f"{tt} | {a['spec']['note']} |")
  L += ["", f"Timing ({timing['num_runs']} runs vmapped, {timing['repeats']} interleaved repeats "
        f"of {timing['steps_per_chunk']} steps): {timing['machine']['cpu']}, load "
        f"{timing['machine']['load']} (load average at the timing stage).", ""]
  for ds in s.datasets:
    L += [f"## {ds}", "", "Final step (equal steps; 'equal time' arms: their final step, "
          "which takes k = 0's wall time). Noise floor (data vs data): ED "
          f"{np.mean(floor[ds]['energy']):.4f}, SW2 {np.mean(floor[ds]['sliced_w2']):.4f}, "
          f"P {np.mean(floor[ds]['precision']):.3f}, R {np.mean(floor[ds]['recall']):.3f}.", "",
          "| arm | ED | ΔED vs k=0 | ΔSW2 vs k=0 | P | ΔP vs k=0 | R | ΔR vs k=0 |",
          "|---|---|---|---|---|---|---|---|"]
    for name, f in res["final"][ds].items():
      d = lambda m: _ci(f[m]["vs_k0"], 3 if m in ("precision", "recall") else 4) \
          if "vs_k0" in f[m] else ""
      L.append(f"| {name} | {f['energy']['mean']:.4f} ± {f['energy']['std']:.4f} | "
               f"{d('energy')} | {d('sliced_w2')} | {f['precision']['mean']:.3f} | "
               f"{d('precision')} | {f['recall']['mean']:.3f} | {d('recall')} |")
    L += ["", "Equal time read off the full-length curves (last evaluation within k = 0's run "
          "time; these runs are mid-schedule there, their lr not yet decayed):", "",
          "| arm | ED step | ΔED vs k=0 final | ΔSW2 | P/R step | ΔP | ΔR |",
          "|---|---|---|---|---|---|---|"]
    for name, e in res["equal_time"][ds].items():
      c = lambda m, dg=4: _ci(e[m]["vs_k0"], dg) if "vs_k0" in e[m] else "not reached"
      L.append(f"| {name} | {e['energy']['step']} | {c('energy')} | {c('sliced_w2')} | "
               f"{e['precision']['step']} | {c('precision', 3)} | {c('recall', 3)} |")
    if res["vs_controls"][ds]:
      L += ["", "Lookahead against its controls (final step, lookahead − control):", "",
            "| comparison | ΔED | ΔSW2 | ΔP | ΔR |", "|---|---|---|---|---|"]
      for name, c in res["vs_controls"][ds].items():
        L.append(f"| {name} | {_ci(c['energy'])} | {_ci(c['sliced_w2'])} | "
                 f"{_ci(c['precision'], 3)} | {_ci(c['recall'], 3)} |")
    L.append("")
  with open(path, "w") as fh:
    fh.write("\n".join(L) + "\n")


def _band(ax, x, v, color, label, ls="-"):
  """Mean over seeds and its bootstrap 95 % interval."""
  ci = np.array([bootstrap_ci(row, num_boot=2000) for row in v])
  ax.plot(x, v.mean(1), color=color, label=label, lw=1.4, ls=ls)
  ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.18, lw=0)


def _delta_band(ax, per: dict[str, Any], color, label, ls="-"):
  x = per["step"]
  ax.plot(x, [p["mean"] for p in per["vs_k0"]], color=color, label=label, lw=1.4, ls=ls)
  ax.fill_between(x, [p["ci"][0] for p in per["vs_k0"]], [p["ci"][1] for p in per["vs_k0"]],
                  color=color, alpha=0.18, lw=0)


def plot_curves(path: str, s: Settings, arms: dict[str, Any], res: dict[str, Any],
                timing: dict[str, Any], floor: dict[str, Any]) -> None:
  main = [n for n, a in arms.items() if a["spec"]["group"] == "main"]
  cols = ["ED vs step", "ΔED vs k=0 (paired)", "ED vs seconds (timing.json)", "precision",
          "recall"]
  fig, axes = plt.subplots(len(s.datasets), len(cols), figsize=(4.2 * len(cols),
                                                                3.3 * len(s.datasets)),
                           squeeze=False)
  for r, ds in enumerate(s.datasets):
    for n, name in enumerate(main):
      rec, color = arms[name], f"C{n}"
      steps, v = metric_rows(rec, ds, "energy")
      _band(axes[r, 0], steps[1:], v[1:], color, name)
      if name in res["per_step"][ds]:
        _delta_band(axes[r, 1], res["per_step"][ds][name]["energy"], color, name)
      if name in timing["arms"]:
        secs = np.asarray(steps[1:]) * timing["arms"][name]["run_step_seconds"]
        _band(axes[r, 2], secs, v[1:], color, name)
      for c, m in ((3, "precision"), (4, "recall")):
        psteps, pv = metric_rows(rec, ds, m)
        _band(axes[r, c], psteps, pv, color, name)
    for name, rec in arms.items():  # budget-matched runs: one point each at k = 0's time
      if rec["spec"]["group"] == "equal_time":
        n = main.index(name.replace(" equal time", ""))
        steps, v = metric_rows(rec, ds, "energy")
        secs = steps[-1] * timing["arms"][name.replace(" equal time", "")]["run_step_seconds"]
        ci = bootstrap_ci(v[-1], num_boot=2000)
        axes[r, 2].errorbar([secs], [v[-1].mean()], yerr=[[v[-1].mean() - ci[0]],
                                                         [ci[1] - v[-1].mean()]],
                            fmt="*", color=f"C{n}", ms=9, capsize=3,
                            label=f"{name} (own schedule)")
    for c, m in ((0, "energy"), (2, "energy"), (3, "precision"), (4, "recall")):
      axes[r, c].axhline(np.mean(floor[ds][m]), color="gray", ls="--", lw=1, label="data vs data")
    axes[r, 1].axhline(0.0, color="black", lw=0.8)
    for c in (0, 2):
      axes[r, c].set_yscale("log")
    for c, title in enumerate(cols):
      axes[r, c].set_title(f"{ds}: {title}", fontsize=9)
      axes[r, c].set_xlabel("seconds of one run (under load)" if c == 2 else "training step")
      axes[r, c].grid(alpha=0.3, which="both")
  axes[0, 0].legend(fontsize=7)
  axes[0, 2].legend(fontsize=6)
  fig.suptitle("Main arms (eq. 6): mean over seeds, band = bootstrap 95 % CI over seeds; "
               "ΔED band = paired 95 % CI; stars: equal-time runs (own cosine schedule)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_controls(path: str, s: Settings, arms: dict[str, Any], res: dict[str, Any]) -> None:
  summed = lambda a: dict(map(tuple, a["spec"]["loss"])).get("chain") == "summed"
  panels = [("k = 0 controls: x + cV, lr × 2", lambda a: a["spec"]["k"] == 0),
            ("lookahead variants", lambda a: a["spec"]["k"] > 0 and not summed(a)),
            ("summed chain (symlog axis)", lambda a: summed(a) or a["spec"]["group"] == "main"
             and a["spec"]["k"] > 0)]
  fig, axes = plt.subplots(len(s.datasets), len(panels), figsize=(5.5 * len(panels),
                                                                   3.3 * len(s.datasets)),
                           squeeze=False)
  for r, ds in enumerate(s.datasets):
    for c, (title, pick) in enumerate(panels):
      ax = axes[r, c]
      names = [n for n, a in arms.items() if n in res["per_step"][ds] and pick(a)]
      for i, name in enumerate(names):
        main = arms[name]["spec"]["group"] == "main"
        _delta_band(ax, res["per_step"][ds][name]["energy"], f"C{i}", name,
                    ls="--" if main else "-")
      ax.axhline(0.0, color="black", lw=0.8)
      if title.startswith("summed"):
        ax.set_yscale("symlog", linthresh=0.1)
      ax.set_title(f"{ds}: ΔED vs k=0, {title}", fontsize=9)
      ax.set_xlabel("training step")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6)
  fig.suptitle("Paired ΔED (arm − k=0) with bootstrap 95 % CI over seeds", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_samples(path: str, s: Settings, arms: dict[str, Any], names: list[str]) -> None:
  fig, axes = plt.subplots(len(s.datasets), len(names) + 1,
                           figsize=(2.3 * (len(names) + 1), 2.4 * len(s.datasets)), squeeze=False)
  for r, ds in enumerate(s.datasets):
    real = targets([(ds, 0)], s.num_eval, 10**6, TEST)[0]
    panels = [("data (test)", real)] + [(n, arms[n]["samples"][ds]) for n in names]
    for c, (title, pts) in enumerate(panels):
      ax = axes[r, c]
      ax.scatter(pts[:, 0], pts[:, 1], s=1.0, alpha=0.5, lw=0,
                 color="black" if c == 0 else f"C{(c - 1) % 10}")
      ax.set(xlim=(-4.5, 4.5), ylim=(-4.5, 4.5), xticks=[], yticks=[], aspect="equal")
      if r == 0:
        ax.set_title(title, fontsize=8)
      if c == 0:
        ax.set_ylabel(ds)
  fig.suptitle(f"Final samples (seed 0, EMA generator, {s.num_eval} points)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def stage_analyse(s: Settings, out: str, tune: dict[str, Any], timing: dict[str, Any],
                  log: Callable) -> dict[str, Any]:
  arms = load_arms(s, out)
  res = analyse(s, out, arms, timing, tune)
  floor = noise_floor(s)
  write_markdown(os.path.join(out, "results.md"), s, arms, res, timing, tune, floor)
  plot_curves(os.path.join(out, "curves.png"), s, arms, res, timing, floor)
  plot_controls(os.path.join(out, "controls.png"), s, arms, res)
  main = [n for n, a in arms.items() if a["spec"]["group"] in ("main", "equal_time")]
  rest = ["k=0"] + [n for n in arms if n not in main]
  plot_samples(os.path.join(out, "samples.png"), s, arms, main)
  plot_samples(os.path.join(out, "samples_controls.png"), s, arms, rest)
  results = {"settings": dataclasses.asdict(s), "arms_present": list(arms), "analysis": res,
             "noise_floor": floor}
  write_json(os.path.join(out, "results.json"), results)
  log(f"  wrote results.md, results.json, curves.png, controls.png, samples*.png "
      f"({len(arms)} arms)")
  return results


# ---------------------------------------------------------------------------------------- misc


def machine_info() -> dict[str, Any]:
  try:
    cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
               if l.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    cpu = platform.processor() or "unknown"
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except OSError:
    commit = "unknown"
  return {"cpu": cpu, "cores": os.cpu_count(), "git": commit, "affinity": sorted(os.sched_getaffinity(0)),
          "jax": jax.__version__, "device": str(jax.devices()[0]),
          "load": [round(v, 2) for v in os.getloadavg()]}


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


def write_json(path: str, obj: Any) -> None:
  with open(path, "w") as fh:
    json.dump(_jsonable(obj), fh, indent=1)


def read_json(path: str) -> Any:
  with open(path) as fh:
    return json.load(fh)


STAGES = ("tune", "timing", "study", "analyse")


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder for every stage's files")
  parser.add_argument("--quick", action="store_true", help="a tiny version (a few steps)")
  parser.add_argument("--stage", default="all", choices=("all",) + STAGES)
  parser.add_argument("--arms", default="", help="study stage: comma-separated arm names only")
  parser.add_argument("--skip_existing", action="store_true",
                      help="study stage: keep arms whose arms/<arm>.json exists")
  args = parser.parse_args(argv)
  s = QUICK if args.quick else Settings()
  if any(v % s.chunk for v in (s.num_steps, s.eval_every, s.pr_every, s.tune_steps)):
    raise ValueError("num_steps, eval_every, pr_every and tune_steps must be multiples of chunk")
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)
  stages = STAGES if args.stage == "all" else (args.stage,)
  log(f"stages {stages}; machine {machine_info()}")
  results = {}
  for stage in stages:
    t = time.perf_counter()
    log(f"stage {stage}")
    if stage == "tune":
      results["tune"] = stage_tune(s, args.out, log)
      continue
    tune = read_json(os.path.join(args.out, "tune.json"))
    if stage == "timing":
      results["timing"] = stage_timing(s, args.out, tune, log)
    else:
      timing_path = os.path.join(args.out, "timing.json")
      # The study's equal-time arms need timing.json; its other arms do not.
      timing = read_json(timing_path) if os.path.exists(timing_path) else None
      if stage == "study":
        stage_study(s, args.out, tune, timing, log,
                    only=[a for a in args.arms.split(",") if a] or None,
                    skip_existing=args.skip_existing)
      else:
        results["analysis"] = stage_analyse(s, args.out, tune, timing, log)
    log(f"stage {stage} took {time.perf_counter() - t:.0f}s")
  return results


if __name__ == "__main__":
  main()
