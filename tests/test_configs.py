"""Every shipped config builds and passes the checks a run makes before any work."""

import importlib
import os

import pytest

import configs
from lookahead_drift import experiment, guidance, train_loop

NAMES = sorted(f[:-3] for f in os.listdir(os.path.dirname(configs.__file__))
               if f.endswith(".py") and f not in ("__init__.py", "common.py")
               and not f.startswith("encoder_"))


def test_the_list_is_not_empty():
  assert "fashion_mnist_cpu_cond" in NAMES and "toy2d" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_config_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  train_loop.validate_config(config)
  experiment.create_loss_config(config)
  cond = guidance.from_config(config)
  if name.endswith("_cond"):
    assert cond is not None and cond.labels_per_step >= 1
  else:
    assert cond is None
