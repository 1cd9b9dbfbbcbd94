"""The toy study's report: results.md (tables of the analysis) and the plots (curves,
controls, samples)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.stats import bootstrap_ci  # noqa: E402
from experiments.toy2d.analysis import metric_rows  # noqa: E402
from experiments.toy2d.design import TEST, Settings, targets  # noqa: E402


def _ci(p: dict[str, Any], digits: int = 4) -> str:
  return (f"{p['mean']:+.{digits}f} [{p['ci'][0]:+.{digits}f}, {p['ci'][1]:+.{digits}f}] "
          f"{p['better']}/{p['n']}")


def write_markdown(path: str, s: Settings, arms: dict[str, Any], res: dict[str, Any],
                   timing: dict[str, Any], tune: dict[str, Any], floor: dict[str, Any]) -> None:
  """results.md: the settings, the tuned learning rates, the arms and one section per data set."""
  L = _setup_lines(s, arms, timing, tune)
  for ds in s.datasets:
    L += _dataset_lines(ds, res, floor[ds])
  with open(path, "w") as fh:
    fh.write("\n".join(L) + "\n")


def _setup_lines(s: Settings, arms: dict[str, Any], timing: dict[str, Any],
                 tune: dict[str, Any]) -> list[str]:
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
  return L


def _dataset_lines(ds: str, res: dict[str, Any], floor: dict[str, Any]) -> list[str]:
  L = [f"## {ds}", "", "Final step (equal steps; 'equal time' arms: their final step, "
       "which takes k = 0's wall time). Noise floor (data vs data): ED "
       f"{np.mean(floor['energy']):.4f}, SW2 {np.mean(floor['sliced_w2']):.4f}, "
       f"P {np.mean(floor['precision']):.3f}, R {np.mean(floor['recall']):.3f}.", "",
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
  return L


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


def _equal_time_stars(ax, ds: str, arms: dict[str, Any], main: list[str],
                      timing: dict[str, Any]) -> None:
  """The budget-matched runs: one point each (mean, bootstrap 95 % CI) at k = 0's time."""
  for name, rec in arms.items():
    if rec["spec"]["group"] == "equal_time":
      n = main.index(name.replace(" equal time", ""))
      steps, v = metric_rows(rec, ds, "energy")
      secs = steps[-1] * timing["arms"][name.replace(" equal time", "")]["run_step_seconds"]
      ci = bootstrap_ci(v[-1], num_boot=2000)
      ax.errorbar([secs], [v[-1].mean()], yerr=[[v[-1].mean() - ci[0]], [ci[1] - v[-1].mean()]],
                  fmt="*", color=f"C{n}", ms=9, capsize=3, label=f"{name} (own schedule)")


def plot_curves(path: str, s: Settings, arms: dict[str, Any], res: dict[str, Any],
                timing: dict[str, Any], floor: dict[str, Any]) -> None:
  """curves.png: per data set, the main arms' ED (vs step and vs seconds), ΔED to k = 0,
  precision and recall."""
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
    _equal_time_stars(axes[r, 2], ds, arms, main, timing)
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
  """controls.png: ΔED to k = 0 of the controls and the lookahead variants."""
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
  """Test data and the final samples (seed 0) of the arms `names`, per data set."""
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
