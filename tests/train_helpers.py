"""Helpers of the training tests: the toy smoke config, a checkpoint's whole train state, and
the environment of a subprocess that runs a binary."""

import importlib
import os
import pathlib

import ml_collections

from lookahead_drift import checkpoint
from lookahead_drift import experiment

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/NAME.py's get_config(arg), imported from the installed `configs` package."""
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(arg) if arg else module.get_config()


def restore_train_state(config: ml_collections.ConfigDict, workdir: str
                        ) -> experiment.TrainState:
  """The whole train state (optimizer and RNG included) of WORKDIR's latest checkpoint."""
  exp = experiment.create_experiment(config)
  return checkpoint.restore(os.path.join(workdir, "checkpoints"), exp.state).state


def subprocess_env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, **extra)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  return env


def smoke_config(**updates) -> ml_collections.ConfigDict:
  """The toy smoke config without TensorBoard, with flattened `updates` ("a.b": value)."""
  config = load_config("toy2d", "smoke")
  config.tensorboard = False
  if "nonfinite" in updates:
    config.nonfinite = updates.pop("nonfinite")
  config.update_from_flattened_dict(updates)
  return config


def without_timing(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]
