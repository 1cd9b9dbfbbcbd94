"""Toy 2-D study (issue 15): does lookahead drifting (k >= 1) beat drifting (k = 0)?

  python -m experiments.toy2d.run --out=experiments/toy2d/issue15   # everything
  python -m experiments.toy2d.run --out=/tmp/toy2d --quick          # tiny (tests)
  python -m experiments.toy2d.run --out=... --stage=timing          # one stage
  python -m experiments.toy2d.run --out=... --stage=study --arms="k=1,k=0 lr×2" --skip_existing

(from the repository root). Modules: design.py (settings, arms, configs), common.py (shared
with fit.py: config, batches, arms built with `experiment.create_experiment`), stages.py,
analysis.py, report.py (results.md and plots); experiments/stats.py (bootstrap, paired
differences).

Everything starts from configs/toy2d.py (design.py says what each arm changes).

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

import os
import time
from typing import Any, Sequence

from absl import flags

from experiments import records
from experiments.toy2d import stages
from experiments.toy2d.design import QUICK, Settings
from lookahead_drift import cli

STAGES = ("tune", "timing", "study", "analyse")


def run_study(out: str, quick: bool = False, stage: str = "all", arms: Sequence[str] = (),
              skip_existing: bool = False) -> dict[str, Any]:
  """Runs `stage` ("all": every stage in order) into `out`; returns what the stages made."""
  s = QUICK if quick else Settings()
  if any(v % s.chunk for v in (s.num_steps, s.eval_every, s.pr_every, s.tune_steps)):
    raise ValueError("num_steps, eval_every, pr_every and tune_steps must be multiples of chunk")
  os.makedirs(out, exist_ok=True)
  start = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)
  todo = STAGES if stage == "all" else (stage,)
  log(f"stages {todo}; machine {records.machine_info()}")
  read = lambda name: records.read_json(os.path.join(out, name))
  results = {}
  for name in todo:
    t = time.perf_counter()
    log(f"stage {name}")
    if name == "tune":
      results["tune"] = stages.stage_tune(s, out, log)
    elif name == "timing":
      results["timing"] = stages.stage_timing(s, out, read("tune.json"), log)
    else:  # the study's equal-time arms need timing.json; its other arms do not
      timing = read("timing.json") if os.path.exists(os.path.join(out, "timing.json")) else None
      if name == "study":
        stages.stage_study(s, out, read("tune.json"), timing, log, only=list(arms) or None,
                           skip_existing=skip_existing)
      else:
        results["analysis"] = stages.stage_analyse(s, out, read("tune.json"), timing, log)
    log(f"stage {name} took {time.perf_counter() - t:.0f}s")
  return results


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  run_study(f.out, quick=f.quick, stage=f.stage, arms=f.arms, skip_existing=f.skip_existing)


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Folder for every stage's files.")
  flags.DEFINE_bool("quick", False, "A tiny version (a few steps).")
  flags.DEFINE_enum("stage", "all", ("all",) + STAGES, "The stage to run (all: every stage).")
  flags.DEFINE_list("arms", [], "Study stage: these arms only (comma-separated names).")
  flags.DEFINE_bool("skip_existing", False, "Study stage: keep arms whose arms/<arm>.json exists.")
  flags.mark_flag_as_required("out")
  cli.run_absl(main)
