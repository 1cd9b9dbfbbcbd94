"""Does lookahead help on images? Paired arms on the Fashion-MNIST recipe (issue 22).

  taskset -c 0 python -m experiments.fashion_mnist.lookahead.study --lane=0 &
  taskset -c 1 python -m experiments.fashion_mnist.lookahead.study --lane=1 &
  python -m experiments.fashion_mnist.lookahead.study --time      # step cost per arm, quiet machine
  python -m experiments.fashion_mnist.lookahead.study --inception # 2,000-sample Inception FID/KID
  python -m experiments.fashion_mnist.lookahead.study --report    # paired table, curves.png

Every arm is the recipe's conditional arm (experiments/fashion_mnist/recipe/run.py, arm
"cond": configs/fashion_mnist_cpu_cond.py at --steps steps) with loss options changed; seed s
fixes the initialisation, the noise and the data order, so arms with one seed are paired. A
lane takes the next (seed, arm) with no result (seeds first), trains it (a killed arm resumes
from its checkpoint), scores the raw and EMA parameters of every kept checkpoint with the proxy
(5,000 samples against the 10,000 test images) and writes results/ARM_sSEED.json. Nothing
finished is ever redone.
"""

import json
import os
import sys
import time

import jax
import numpy as np

from experiments import stats
from experiments.fashion_mnist.recipe import run as recipe
from experiments.fashion_mnist.recipe import validate
from lookahead_drift import inference, metrics_io, proxy_metric, train_loop

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY = os.path.join(recipe.HERE, "proxy_net.npz")  # the recipe's frozen proxy net

# name -> config.loss overrides. k0 is the baseline every difference is taken to.
ARMS = {
    "k0": {},
    "k1": {"num_lookahead": 1},                            # eq. 6 as written: η = 1, raw sum
    "k2": {"num_lookahead": 2},
    "k1_norm": {"num_lookahead": 1, "term_scaling": "norm", "norm_momentum": 0.9},
    "adaptive": {"num_lookahead": 2, "lookahead_tol": 0.5},
    "k1_summed": {"num_lookahead": 1, "chain": "summed"},  # one chain pushed by the summed field
}
SEEDS = (0, 1, 2)


def arm_config(arm: str, seed: int, steps: int):
  config = recipe.arm_config("cond", steps)
  config.seed = seed
  config.checkpoint.update(dict(every=max(steps // 4, 1), keep=8))  # every curve point kept
  for key, value in ARMS[arm].items():
    config.loss[key] = value
  return config


def result_path(arm: str, seed: int) -> str:
  return os.path.join(HERE, "results", f"{arm}_s{seed}.json")


def train_and_score(arm, seed, args, scorer, reference):
  config = arm_config(arm, seed, args.steps)
  workdir = os.path.join(args.runs, f"{arm}_s{seed}")
  print(f"[lane {args.lane}] {arm} seed {seed}: {ARMS[arm]}", flush=True)
  tic = time.perf_counter()
  train_loop.run(config, workdir)
  train_seconds = time.perf_counter() - tic
  curve = []
  for step in inference.checkpoint_steps(workdir):
    grid = os.path.join(HERE, "grids", f"{arm}_s{seed}") if step == args.steps else None
    scores = recipe.score(workdir, scorer, reference, args.num_samples, grid, step=step)
    curve.append(scores)
  record = dict(arm=arm, seed=seed, loss_overrides=ARMS[arm], steps=args.steps,
                train_seconds=round(train_seconds, 1), lane=args.lane,
                command=" ".join(sys.argv), terms_used=_terms_used(workdir), curve=curve)
  with open(result_path(arm, seed), "w") as f:
    json.dump(record, f, indent=2)
  print(f"[lane {args.lane}] {arm} seed {seed}: raw proxy FD "
        f"{curve[-1]['raw']['proxy_fd']:.2f} ({train_seconds / 60:.1f} min)", flush=True)


def _terms_used(workdir: str) -> float | None:
  """Mean lookahead terms per step over the run, from metrics.jsonl (adaptive chains)."""
  values = [float(v) for record in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            for k, v in record.items() if k.endswith("terms_used")]
  return float(np.mean(values)) if values else None


def load_results() -> dict:
  """{(arm, seed): record} of every finished arm, with its Inception record if scored."""
  out = {}
  for arm in ARMS:
    for seed in SEEDS:
      if os.path.exists(result_path(arm, seed)):
        with open(result_path(arm, seed)) as f:
          record = json.load(f)
        inc = os.path.join(HERE, "results", "inception", f"{arm}_s{seed}_n2000.json")
        if os.path.exists(inc):
          with open(inc) as f:
            record["inception"] = json.load(f)
        out[(arm, seed)] = record
  return out


def paired(results: dict, metric) -> dict:
  """arm -> {seeds, values, mean difference to k0 and its bootstrap interval} for `metric`
  (a function of a record, or None where the record lacks it), over seeds that both have."""
  out = {}
  for arm in ARMS:
    seeds = [s for s in SEEDS if (arm, s) in results and ("k0", s) in results
             and metric(results[(arm, s)]) is not None and metric(results[("k0", s)]) is not None]
    if not seeds:
      continue
    values = [metric(results[(arm, s)]) for s in seeds]
    row = stats.paired(values, [metric(results[("k0", s)]) for s in seeds], lower_is_better=True)
    out[arm] = dict(seeds=seeds, values=values, mean=float(np.mean(values)), diff=row["mean"],
                    diffs=row["diffs"], better=row["better"],
                    ci=row["ci"] if len(seeds) > 1 else None)
  return out


def step_costs() -> dict:
  """arm -> seconds per step as a ratio to k0, from results/step_cost.json (--time)."""
  path = os.path.join(HERE, "results", "step_cost.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {arm: v["ratio_to_first"] for arm, v in json.load(f).items()
            if isinstance(v, dict) and "ratio_to_first" in v}


def proxy_at(record: dict, step: float) -> float:
  """Raw proxy FD of a run at `step`, linear between its scored checkpoints (equal time: an
  arm r times as costly as k0 has reached step 700 / r when k0 reaches 700)."""
  steps = [p["step"] for p in record["curve"]]
  return float(np.interp(step, steps, [p["raw"]["proxy_fd"] for p in record["curve"]]))


def report() -> str:
  """Markdown: per arm the raw proxy FD at the last step (and Inception FID/KID where scored),
  paired differences to k0 with a bootstrap 95 % interval over seeds; then the same proxy at
  equal wall-clock time (the arm's curve read at k0's time, from the measured step costs)."""
  results = load_results()
  costs = step_costs()
  metrics = {
      "proxy FD (raw, 5,000)": lambda r: r["curve"][-1]["raw"]["proxy_fd"],
      "proxy FD (raw, 5,000) at k0's wall-clock time": lambda r: (
          proxy_at(r, r["steps"] / costs[r["arm"]]) if r["arm"] in costs else None),
      "Inception FID (raw, 2,000)": lambda r: r.get("inception", {}).get("inception_fid"),
      "Inception KID (raw, 2,000)": lambda r: (r.get("inception", {}).get("inception_kid")
                                               or [None])[0],
  }
  lines = []
  for name, metric in metrics.items():
    table = paired(results, metric)
    if not table:
      continue
    lines += [f"**{name}**", "", "| arm | seeds | per seed | mean | difference to k0 | 95 % "
              "interval (bootstrap over seeds) |", "|---|---|---|---|---|---|"]
    for arm, row in table.items():
      ci = "n/a (one seed)" if row["ci"] is None else f"[{row['ci'][0]:+.2f}, {row['ci'][1]:+.2f}]"
      lines.append(f"| {arm} | {','.join(map(str, row['seeds']))} | "
                   f"{', '.join(f'{v:.2f}' for v in row['values'])} | {row['mean']:.2f} | "
                   f"{row['diff']:+.2f} | {ci} |")
    lines.append("")
  return "\n".join(lines)


def figure(path: str) -> None:
  """Raw proxy FD against step per arm: the mean over seeds and the band from the lowest to
  the highest seed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  results = load_results()
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for arm in ARMS:
    curves = [[p for p in r["curve"] if p["step"] % max(r["steps"] // 4, 1) == 0]
              for (a, _), r in sorted(results.items()) if a == arm]
    if not curves:
      continue
    # The scheduled checkpoints only (a run killed and resumed also kept its kill step).
    steps = sorted(set.intersection(*({p["step"] for p in c} for c in curves)))
    values = np.array([[p["raw"]["proxy_fd"] for p in c if p["step"] in steps] for c in curves])
    line, = ax.plot(steps, values.mean(0), marker="o", label=f"{arm} ({len(values)} seeds)")
    ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
  ax.set(xlabel="step", ylabel="proxy FD (raw parameters, 5,000 samples)", yscale="log",
         title="Fashion-MNIST, conditional recipe (band: seed range)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = recipe.lane_parser(__doc__.splitlines()[0], "/work/runs/lookahead")
  parser.add_argument("--seeds", default="", help="comma-separated subset (default: 0,1,2)")
  parser.add_argument("--inception", action="store_true",
                      help="Inception FID/KID of 2,000 raw samples of each finished arm, then exit")
  parser.add_argument("--report", action="store_true", help="print the paired table, then exit")
  args = parser.parse_args(argv)
  arms = [a for a in args.arms.split(",") if a] or list(ARMS)
  seeds = [int(s) for s in args.seeds.split(",") if s] or list(SEEDS)
  if args.report:
    print(report())
    figure(os.path.join(HERE, "curves.png"))
    return
  if args.inception:
    scorer = proxy_metric.load(PROXY)
    names = [f"{a}_s{s}" for s in seeds for a in arms if os.path.exists(result_path(a, s))]
    validate.inception_sets(names, 2000, args.runs, scorer,
                            out=os.path.join(HERE, "results", "inception"))
    return
  if args.time:
    configs = {arm: arm_config(arm, 0, args.steps) for arm in arms}
    recipe.write_step_costs(configs, args, os.path.join(HERE, "results", "step_cost.json"))
    return
  for d in ("results", "grids"):
    os.makedirs(os.path.join(HERE, d), exist_ok=True)
  os.makedirs(args.runs, exist_ok=True)
  scorer = proxy_metric.load(PROXY)
  reference = scorer.features(recipe.test_images())
  for seed in seeds:
    for arm in arms:
      if os.path.exists(result_path(arm, seed)) or not recipe.claim(
          os.path.join(args.runs, f"{arm}_s{seed}.claim")):
        continue
      train_and_score(arm, seed, args, scorer, reference)


if __name__ == "__main__":
  main()
