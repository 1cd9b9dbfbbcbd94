"""The toy study's design (issue 15): its settings, its arms and each arm's config.

Everything starts from configs/toy2d.py (the fitted toy config: noise 8, MLP 128x4, batch 256,
AdamW, lr 1e-2 cosine to 1e-3, EMA 0.99, mean shift); only the number of steps (see
Settings.num_steps), the learning rate (tuned) and the loss fields of each arm change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from experiments.toy2d import common
from lookahead_drift import input_pipeline

Runs = list[tuple[str, int]]  # (data set, seed) of each run, in the order of the run axis
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


def targets(runs: Runs, n: int, index: int, stream: int) -> np.ndarray:
  """[R, n, 2] target samples; (seed, index, stream) seeds each draw, so each is fresh."""
  return np.stack([input_pipeline.sample_toy(name, n, [seed, index, stream])
                   for name, seed in runs])


def make_config(s: Settings, spec: ArmSpec, lr_factor: float, num_steps: int) -> Any:
  """configs/toy2d.py with the arm's loss, lr = factor × the config's lr, `num_steps` steps."""
  opt = common.make_config().optimizer
  overrides = {"num_steps": num_steps,  # the cosine schedule spans exactly this run
               "data.batch_size": s.batch_size, "model.hidden": s.hidden,
               "optimizer.warmup_steps": s.warmup_steps,
               # the schedule keeps its shape
               "optimizer.end_value": opt.get("end_value", 0.0) * lr_factor,
               "optimizer.learning_rate": opt.learning_rate * lr_factor,
               "loss.num_lookahead": spec.k}
  overrides = {k: v for k, v in overrides.items() if v is not None}  # None: the config's
  return common.make_config({**overrides, **{f"loss.{k}": v for k, v in spec.loss}})


def batch_size(s: Settings) -> int:
  return s.batch_size or common.make_config().data.batch_size
