"""The toy study's analysis: paired-by-seed differences of every arm to k = 0 (and of
lookahead to its controls) at every evaluation, at the final step and at equal wall-clock
time, with bootstrap intervals over seeds (`experiments.stats`)."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from experiments import records, stats
from experiments.toy2d.design import (EVAL_KEY, LOWER_IS_BETTER, METRICS, QUICK, TEST, Settings,
                                      slug, study_arms, targets)
from lookahead_drift import toy_metrics


def equal_time_index(steps: list[int], run_step_seconds: float, budget: float) -> int | None:
  """Index of the last evaluation whose step is reached within `budget` seconds (None: none)."""
  reached = np.nonzero(np.asarray(steps) * run_step_seconds <= budget * (1 + 1e-9))[0]
  return int(reached[-1]) if reached.size else None


def load_arms(s: Settings, out: str) -> dict[str, dict[str, Any]]:
  """Each arm's record (arms/<arm>.json) with its final samples ("samples": .npz), if saved."""
  arms = {}
  for spec in study_arms(s is QUICK):
    path = os.path.join(out, "arms", slug(spec.name))
    if os.path.exists(path + ".json"):
      arms[spec.name] = records.read_json(path + ".json")
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
  """The evaluation steps of `metric` and its values there [evals, seeds]."""
  steps = rec["pr_step"] if metric in ("precision", "recall") else rec["step"]
  return steps, np.asarray(rec["datasets"][ds][metric], np.float64)


def _final_and_per_step(name: str, rec: dict[str, Any], base: dict[str, Any], ds: str,
                        kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """An arm's final values (and their difference to k = 0's final) and, for an arm with
  k = 0's steps, the paired difference at every evaluation both made."""
  fin, per = {}, {}
  for m in METRICS:
    steps, v = metric_rows(rec, ds, m)
    bsteps, bv = metric_rows(base, ds, m)
    fin[m] = {"mean": float(v[-1].mean()), "std": float(v[-1].std(ddof=1)) if v.shape[1] > 1
              else 0.0, "step": steps[-1]}
    if name == "k=0":
      continue
    # An equal-time arm's final step took k = 0's full run time: compared with k = 0's final.
    fin[m]["vs_k0"] = stats.paired(v[-1], bv[-1], LOWER_IS_BETTER[m], **kw)
    if rec["spec"]["equal_time_of"] is None:
      common = [st for st in steps if st in bsteps]
      per[m] = {"step": common, "vs_k0": [
          stats.paired(v[steps.index(st)], bv[bsteps.index(st)], LOWER_IS_BETTER[m], **kw)
          for st in common]}
  return fin, per


def _equal_time(rec: dict[str, Any], base: dict[str, Any], ds: str, run_step_seconds: float,
                budget: float, kw: dict[str, Any]) -> dict[str, Any]:
  """Equal time read off an arm's full-length curve (its cosine schedule not yet finished):
  its last evaluation within `budget` seconds against k = 0's final."""
  et = {"seconds": budget}
  for m in METRICS:
    steps, v = metric_rows(rec, ds, m)
    i = equal_time_index(steps, run_step_seconds, budget)
    if i is None:
      et[m] = {"step": None}
      continue
    et[m] = {"step": steps[i], "mean": float(v[i].mean()),
             "vs_k0": stats.paired(v[i], metric_rows(base, ds, m)[1][-1], LOWER_IS_BETTER[m],
                                   **kw)}
  return et


def _vs_controls(arms: dict[str, Any], ds: str, kw: dict[str, Any]) -> dict[str, Any]:
  """Each main lookahead arm against the controls that could explain it (final step)."""
  out = {}
  for name, rec in arms.items():
    k = rec["spec"]["k"]
    if rec["spec"]["group"] != "main" or k == 0:
      continue
    for ctrl in (f"k=0 x+{k + 1}V", "k=0 lr×2", f"k={k} summed"):
      if ctrl in arms:
        out[f"{name} vs {ctrl}"] = {
            m: stats.paired(metric_rows(rec, ds, m)[1][-1], metric_rows(arms[ctrl], ds, m)[1][-1],
                            LOWER_IS_BETTER[m], **kw) for m in METRICS}
  return out


def analyse(s: Settings, arms: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
  """{"per_step", "final", "equal_time", "vs_controls"}: each {data set: {arm: ...}}."""
  kw = {"num_boot": s.num_boot}
  base = arms["k=0"]
  t_run = {n: a["run_step_seconds"] for n, a in timing["arms"].items()}
  budget = base["num_steps"] * t_run["k=0"]  # seconds of one run of k = 0, all its steps
  res = {"per_step": {}, "final": {}, "equal_time": {}, "vs_controls": {}, "summary": {}}
  for ds in s.datasets:
    res["per_step"][ds], res["final"][ds], res["equal_time"][ds] = {}, {}, {}
    for name, rec in arms.items():
      res["final"][ds][name], per = _final_and_per_step(name, rec, base, ds, kw)
      if per:
        res["per_step"][ds][name] = per
      # (Only k >= 1: a k = 0 control costs what k = 0 costs; its timing differs by noise.)
      if rec["spec"]["k"] > 0 and rec["spec"]["equal_time_of"] is None and name in t_run:
        res["equal_time"][ds][name] = _equal_time(rec, base, ds, t_run[name], budget, kw)
    res["vs_controls"][ds] = _vs_controls(arms, ds, kw)
  return res
