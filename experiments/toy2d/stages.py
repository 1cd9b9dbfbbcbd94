"""The toy study's stages: tune, timing, study and analyse (run.py's docstring says what each
writes); each reads what the earlier ones wrote into `out`."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments import records
from experiments.toy2d import analysis, common, report
from experiments.toy2d.design import (EVAL_KEY, METRICS, QUICK, TEST, TRAIN, TUNE_SEED_OFFSET,
                                      TUNED_METHODS, VALID, ArmSpec, Runs, Settings,
                                      batch_size, make_config, slug, study_arms, targets)
from lookahead_drift import input_pipeline, toy_metrics

@functools.lru_cache(maxsize=None)
def make_arm(s: Settings, spec: ArmSpec, lr_factor: float, num_steps: int) -> common.Arm:
  return common.arm_from_config(make_config(s, spec, lr_factor, num_steps))


def train_streams(s: Settings, runs: Runs) -> list:
  """Each run's training batches; chunk c of run (data set, seed) is drawn from the sample
  stream (seed, c, TRAIN): equal for all arms."""
  return [common.chunked_stream(name, seed, s.chunk, batch_size(s), TRAIN)
          for name, seed in runs]


@functools.lru_cache(maxsize=None)
def make_eval_fn(s: Settings) -> Callable:
  """(ema params [R], seeds [R], eval index, targets [R, E, 2]) -> samples, ED, SW2 per run."""
  spec = ArmSpec("k=0", 0, "main", "k=0")
  generate, noise_shape = common.generate_fn(make_config(s, spec, 1.0, 1).model)
  directions = toy_metrics.random_directions(jax.random.PRNGKey(EVAL_KEY), s.num_projections, 2)

  def one(params, seed, index, target):
    key = jax.random.fold_in(jax.random.PRNGKey(seed + EVAL_KEY), index)
    x = generate(params, jax.random.normal(key, (target.shape[0], *noise_shape)))
    return (x, toy_metrics.energy_distance(x, target),
            toy_metrics.sliced_wasserstein(x, target, directions))

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0)))


def evaluate(s: Settings, rec: dict[str, Any], ema_params: Any, runs: Runs, step: int,
             stream: int, with_pr: bool) -> np.ndarray:
  """Appends the EMA generators' scores at `step` to `rec`; returns their samples [R, E, 2]."""
  seeds = jnp.asarray([seed for _, seed in runs])
  tgt = targets(runs, s.num_eval, step, stream)
  x, ed, sw = jax.device_get(make_eval_fn(s)(ema_params, seeds, step, tgt))
  rec["step"].append(step)
  rec["energy"].append(ed.tolist())
  rec["sliced_w2"].append(sw.tolist())
  if with_pr:
    pr = [toy_metrics.precision_recall(x[i, :s.num_pr], tgt[i, :s.num_pr], k=s.pr_k)
          for i in range(len(runs))]
    rec["pr_step"].append(step)
    rec["precision"].append([p for p, _ in pr])
    rec["recall"].append([r for _, r in pr])
  return x


def train_runs(s: Settings, arm: common.Arm, runs: Runs, num_steps: int, stream: int,
               log: Callable, eval_every: int, pr_every: int) -> tuple[dict[str, Any], Any]:
  """Trains one arm on every run; scores the EMA generator every eval_every steps (and
  precision / recall every pr_every steps and at the end). Returns the record and the last
  samples."""
  t0 = time.perf_counter()
  states = arm.init([seed for _, seed in runs])
  rec = {"step": [], "energy": [], "sliced_w2": [], "pr_step": [], "precision": [],
         "recall": [], "chunk_seconds": []}
  x = evaluate(s, rec, states.ema_params, runs, 0, stream, with_pr=False)
  streams = train_streams(s, runs)
  for c in range(num_steps // s.chunk):
    batches = common.real_batches(streams, s.chunk)
    t = time.perf_counter()
    states = jax.block_until_ready(arm.chunk(states, batches))
    rec["chunk_seconds"].append(time.perf_counter() - t)
    step = (c + 1) * s.chunk
    if step % eval_every == 0 or step == num_steps:
      x = evaluate(s, rec, states.ema_params, runs, step, stream,
                   with_pr=step % pr_every == 0 or step == num_steps)
  rec["wall_seconds"] = time.perf_counter() - t0
  log(f"    {num_steps} steps, {rec['wall_seconds']:.0f}s (first chunk incl. compile "
      f"{rec['chunk_seconds'][0]:.1f}s); final ED by run: "
      + " ".join(f"{v:.3f}" for v in rec["energy"][-1]))
  return rec, x


def split_by_dataset(rec: dict[str, Any], runs: Runs) -> dict[str, Any]:
  out = {}
  for name in dict.fromkeys(n for n, _ in runs):
    idx = [i for i, (n, _) in enumerate(runs) if n == name]
    out[name] = {"seeds": [runs[i][1] for i in idx]}
    for m in METRICS:
      out[name][m] = [[row[i] for i in idx] for row in rec[m]]
  return out


def stage_tune(s: Settings, out: str, log: Callable) -> dict[str, Any]:
  """Each tuned method's lr factor: the lowest mean validation ED over data sets and seeds."""
  specs = {a.name: a for a in study_arms(s is QUICK) if a.name in TUNED_METHODS}
  runs = [(name, TUNE_SEED_OFFSET + i) for name in s.datasets for i in range(s.tune_seeds)]
  res = {"runs": runs, "steps": s.tune_steps, "factors": list(s.lr_factors),
         "base_lr": common.make_config().optimizer.learning_rate, "methods": {}}
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
  records.write_json(os.path.join(out, "tune.json"), res)
  return res


def lr_factor(spec: ArmSpec, tune: dict[str, Any]) -> float:
  return tune["methods"][spec.lr_of]["chosen"] * spec.lr_mult


def stage_timing(s: Settings, out: str, tune: dict[str, Any], log: Callable) -> dict[str, Any]:
  """Seconds per step of each arm (all runs vmapped), chunks timed in rotating order."""
  runs = [(name, seed) for name in s.datasets for seed in range(s.num_seeds)]
  specs = [a for a in study_arms(s is QUICK) if a.group != "equal_time"]
  ts = dataclasses.replace(s, chunk=s.timing_steps)
  arms = [make_arm(ts, a, lr_factor(a, tune), s.num_steps) for a in specs]
  batch = common.real_batches(train_streams(ts, runs), ts.chunk)
  states = []
  for arm in arms:  # compile, and one untimed chunk
    st = arm.init([seed for _, seed in runs])
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
  res = {"machine": records.machine_info(), "num_runs": len(runs),
         "steps_per_chunk": s.timing_steps, "repeats": s.timing_repeats, "arms": {}}
  for name, v in times.items():
    res["arms"][name] = {"step_seconds": v, "median": float(np.median(v)),
                         "min": float(np.min(v)), "max": float(np.max(v)),
                         "run_step_seconds": float(np.median(v)) / len(runs)}
    log(f"  {name}: {1e3 * np.median(v):.1f} ms/step for {len(runs)} runs "
        f"(min {1e3 * np.min(v):.1f}, max {1e3 * np.max(v):.1f})")
  records.write_json(os.path.join(out, "timing.json"), res)
  return res


def equal_time_steps(s: Settings, spec: ArmSpec, timing: dict[str, Any]) -> int:
  """Steps (a multiple of s.chunk, >= one chunk) of `spec` that take k = 0's wall time."""
  base = timing["arms"][spec.equal_time_of]["median"] * s.num_steps
  own = timing["arms"][spec.name.replace(" equal time", "")]["median"]
  return max(s.chunk, int(round(base / own / s.chunk)) * s.chunk)


def stage_study(s: Settings, out: str, tune: dict[str, Any], timing: dict[str, Any],
                log: Callable, only: list[str] | None = None, skip_existing: bool = False
                ) -> None:
  """Trains every arm (or those named in `only`) on all runs; writes arms/<arm>.json, .npz."""
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
              "machine": records.machine_info(), "datasets": split_by_dataset(rec, runs)}
    records.write_json(path + ".json", result)
    first = {name: x[[i for i, (n, sd) in enumerate(runs) if n == name and sd == 0][0]]
             for name in s.datasets}
    np.savez_compressed(path + ".npz", **first)


def stage_analyse(s: Settings, out: str, tune: dict[str, Any], timing: dict[str, Any],
                  log: Callable) -> dict[str, Any]:
  """results.json, results.md and the plots from the arms' files, tune.json and timing.json."""
  arms = analysis.load_arms(s, out)
  res = analysis.analyse(s, arms, timing)
  floor = analysis.noise_floor(s)
  report.write_markdown(os.path.join(out, "results.md"), s, arms, res, timing, tune, floor)
  report.plot_curves(os.path.join(out, "curves.png"), s, arms, res, timing, floor)
  report.plot_controls(os.path.join(out, "controls.png"), s, arms, res)
  main = [n for n, a in arms.items() if a["spec"]["group"] in ("main", "equal_time")]
  rest = ["k=0"] + [n for n in arms if n not in main]
  report.plot_samples(os.path.join(out, "samples.png"), s, arms, main)
  report.plot_samples(os.path.join(out, "samples_controls.png"), s, arms, rest)
  results = {"settings": dataclasses.asdict(s), "arms_present": list(arms), "analysis": res,
             "noise_floor": floor}
  records.write_json(os.path.join(out, "results.json"), results)
  log(f"  wrote results.md, results.json, curves.png, controls.png, samples*.png "
      f"({len(arms)} arms)")
  return results
