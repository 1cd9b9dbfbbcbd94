"""experiments/fashion_mnist/lookahead/study.py: paired differences to k = 0, and arm configs
that a run accepts."""

import pytest

from experiments.fashion_mnist.lookahead import study
from lookahead_drift import experiment, train_loop


def test_paired_differences_use_only_seeds_both_arms_have():
  results = {("k0", 0): {"v": 10.0}, ("k0", 1): {"v": 12.0}, ("k0", 2): {"v": 11.0},
             ("k1", 0): {"v": 8.0}, ("k1", 1): {"v": 13.0},          # seed 2 not finished
             ("k2", 2): {"v": 5.0}}
  table = study.paired(results, lambda r: r["v"])
  assert table["k0"]["diff"] == 0.0
  assert table["k1"]["seeds"] == [0, 1] and table["k1"]["diffs"] == [-2.0, 1.0]
  assert table["k1"]["diff"] == -0.5 and table["k1"]["better"] == 1
  lo, hi = table["k1"]["ci"]
  assert lo == -2.0 and hi == 1.0  # two seeds: the resample means are -2, -0.5, 1
  assert table["k2"]["ci"] is None  # one seed: no interval


@pytest.mark.parametrize("arm", list(study.ARMS))
def test_every_arm_is_a_valid_run(arm):
  config = study.arm_config(arm, seed=1, steps=40)
  train_loop.validate_config(config)
  loss = experiment.create_loss_config(config)
  assert config.seed == 1 and config.conditional.labels_per_step == 10
  assert loss.num_lookahead == study.ARMS[arm].get("num_lookahead", 0)


def test_equal_time_reads_the_curve_where_the_costlier_arm_stands():
  record = {"curve": [{"step": 175, "raw": {"proxy_fd": 200.0}},
                      {"step": 350, "raw": {"proxy_fd": 100.0}},
                      {"step": 700, "raw": {"proxy_fd": 60.0}}]}
  assert study.proxy_at(record, 700) == 60.0
  assert study.proxy_at(record, 700 / 2.0) == 100.0  # twice k0's step cost: step 350
  assert study.proxy_at(record, 262.5) == pytest.approx(150.0)
