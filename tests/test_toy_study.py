"""experiments/toy2d (run.py and its modules): --quick runs every stage end to end; the
statistics against hand values."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import toy2d
from experiments import stats
from experiments.toy2d import analysis, design, stages

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("toy2d"))
  subprocess.run([sys.executable, "-m", "experiments.toy2d.run", f"--out={out}", "--quick"],
                 cwd=REPO, check=True)
  return out, {"analysis": _read(out, "results.json")}


def _read(out, name):
  with open(os.path.join(out, name)) as fh:
    return json.load(fh)


# ------------------------------------------------------------------------- the quick pipeline


def test_quick_writes_all_outputs(quick):
  out, _ = quick
  for name in ("curves.png", "controls.png", "samples.png", "samples_controls.png"):
    with open(os.path.join(out, name), "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  for name in ("tune.json", "timing.json", "results.json"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  table = open(os.path.join(out, "results.md")).read()
  for label in ("| k=0 |", "| k=1 |", "| k=0 x+2V |", "| k=0 lr×2 |", "| k=1 equal time |",
                "k=1 vs k=0 lr×2"):
    assert label in table
  # Every arm of the quick study was trained and saved.
  expected = {a.name for a in design.study_arms(quick=True)}
  assert set(_read(out, "results.json")["arms_present"]) == expected


def test_quick_tune_picks_the_lowest_validation_score(quick):
  out, _ = quick
  tune = _read(out, "tune.json")
  assert set(tune["methods"]) == {"k=0", "k=1"}
  for m in tune["methods"].values():
    scores = {float(f): v for f, v in m["scores"].items()}
    assert set(scores) == set(design.QUICK.lr_factors)
    assert m["chosen"] == min(scores, key=scores.get)
    for f, by_ds in m["by_dataset"].items():  # the score is the mean over data sets
      assert math.isclose(m["scores"][f], np.mean(list(by_ds.values())), rel_tol=1e-12)


def test_quick_arms_shaped_finite_and_using_their_lr(quick):
  out, _ = quick
  s, tune, timing = design.QUICK, _read(out, "tune.json"), _read(out, "timing.json")
  chosen = {n: m["chosen"] for n, m in tune["methods"].items()}
  for spec in design.study_arms(quick=True):
    rec = _read(out, os.path.join("arms", design.slug(spec.name) + ".json"))
    steps = rec["num_steps"]
    if spec.equal_time_of is None:
      assert steps == s.num_steps
    else:
      assert steps == stages.equal_time_steps(s, spec, timing)
    assert rec["lr_factor"] == chosen[spec.lr_of] * spec.lr_mult
    base_lr = toy2d.get_config().optimizer.learning_rate
    assert math.isclose(rec["learning_rate"], base_lr * rec["lr_factor"], rel_tol=1e-9)
    assert rec["step"] == sorted(set(range(0, steps + 1, s.eval_every)) | {steps})
    assert rec["pr_step"][-1] == steps
    for ds in s.datasets:
      d = rec["datasets"][ds]
      assert len(d["energy"]) == len(rec["step"]) and len(d["precision"]) == len(rec["pr_step"])
      for m in design.METRICS:
        flat = [v for row in d[m] for v in row]
        assert all(len(row) == s.num_seeds for row in d[m])
        assert all(math.isfinite(v) for v in flat)
      assert all(v > 0 for row in d["energy"] for v in row)
      assert all(0 <= v <= 1 for m in ("precision", "recall") for row in d[m] for v in row)
  assert set(timing["arms"]) >= {"k=0", "k=1"}
  assert all(a["min"] <= a["median"] <= a["max"] for a in timing["arms"].values())


def test_quick_analysis_diffs_are_paired_by_seed(quick):
  out, results = quick
  res = results["analysis"]["analysis"]
  for ds in design.QUICK.datasets:
    k0 = _read(out, "arms/k0.json")["datasets"][ds]["energy"][-1]
    k1 = _read(out, "arms/k1.json")["datasets"][ds]["energy"][-1]
    p = res["final"][ds]["k=1"]["energy"]["vs_k0"]
    assert np.allclose(p["diffs"], np.subtract(k1, k0))
    assert p["better"] == int(np.sum(np.subtract(k1, k0) < 0))
    assert p["ci"][0] <= p["mean"] <= p["ci"][1]


# -------------------------------------------------------------------------------- statistics


def test_bootstrap_is_exact_for_few_seeds():
  # Two seeds, differences (0, 1): the 4 ordered resamples have means 0, 0.5, 0.5, 1.
  assert sorted(stats.bootstrap_means([0.0, 1.0])) == [0.0, 0.5, 0.5, 1.0]
  assert stats.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
  # (0, 0, 3): the mean is (number of 3s drawn) = Binomial(3, 1/3): P = 8, 12, 6, 1 (/27) for
  # means 0, 1, 2, 3, so the CDF is 8/27, 20/27, 26/27, 1.
  means = stats.bootstrap_means([0.0, 0.0, 3.0])
  assert len(means) == 27
  assert [int(np.sum(means == v)) for v in (0, 1, 2, 3)] == [8, 12, 6, 1]
  assert stats.bootstrap_ci([0.0, 0.0, 3.0]) == (0.0, 3.0)  # 26/27 < 0.975
  assert stats.bootstrap_ci([0.0, 0.0, 3.0], level=0.5) == (0.0, 2.0)  # 8/27 >= .25; 20/27 < .75
  assert stats.bootstrap_ci([0.3] * 5) == (0.3, 0.3)
  assert len(stats.bootstrap_means(np.arange(5.0))) == 5**5


def test_bootstrap_monte_carlo_beyond_the_exact_limit():
  d = np.arange(7.0)  # 7^7 > 200,000 resamples: Monte Carlo
  means = stats.bootstrap_means(d, num_boot=4000, seed=1)
  assert means.shape == (4000,)
  assert abs(means.mean() - 3.0) < 0.1  # E = 3; the mean of 4000 draws is within ±0.03
  assert abs(means.std() - d.std() / math.sqrt(7)) < 0.05  # sd of a resample mean: σ/√n
  lo, hi = stats.bootstrap_ci(d, num_boot=4000, seed=1)
  assert 1.0 < lo < 3.0 < hi < 5.0


def test_paired_differences_and_sign_counts():
  p = stats.paired([1.0, 2.0, 3.0, 5.0], [2.0, 2.0, 2.0, 2.0], lower_is_better=True)
  assert p["diffs"] == [-1.0, 0.0, 1.0, 3.0] and p["mean"] == 0.75
  assert p["better"] == 1 and p["n"] == 4  # ties are not "better"
  q = stats.paired([1.0, 2.0, 3.0, 5.0], [2.0, 2.0, 2.0, 2.0], lower_is_better=False)
  assert q["better"] == 2
  assert p["ci"] == q["ci"] and -1.0 < p["ci"][0] < 0.75 < p["ci"][1] < 3.0  # 4^4 resamples


def test_equal_time_index_and_steps():
  assert analysis.equal_time_index([0, 10, 20, 30], 0.5, 10.0) == 2  # step 20 takes exactly 10 s
  assert analysis.equal_time_index([0, 10, 20, 30], 0.5, 9.99) == 1
  assert analysis.equal_time_index([0, 10, 20, 30], 0.5, 100.0) == 3
  assert analysis.equal_time_index([10, 20], 0.5, 1.0) is None
  s = design.Settings()  # 2000 steps, chunks of 50
  timing = {"arms": {"k=0": {"median": 0.03}, "k=1": {"median": 0.06},
                     "k=3": {"median": 0.11}}}
  spec = lambda k: design.ArmSpec(f"k={k} equal time", k, "equal_time", f"k={k}",
                               equal_time_of="k=0")
  assert stages.equal_time_steps(s, spec(1), timing) == 1000
  assert stages.equal_time_steps(s, spec(3), timing) == 550  # 2000·3/11 = 545.5 -> 11 chunks


def test_make_config_arms():
  s = design.Settings()
  arms = {a.name: a for a in design.study_arms()}
  c = design.make_config(s, arms["k=0 x+2V"], 2.0, 700)
  assert c.loss.num_lookahead == 0 and tuple(c.loss.term_weights) == (2.0,)
  assert c.optimizer.learning_rate == pytest.approx(2e-2)
  assert c.optimizer.end_value == pytest.approx(2e-3)  # the schedule keeps its shape
  assert c.num_steps == 700 and c.model.noise_dim == 8 and c.data.batch_size == 256
  c3 = design.make_config(s, arms["k=3"], 1.0, 2000)
  assert c3.loss.num_lookahead == 3 and c3.loss.term_scaling == "none"
  assert c3.loss.step_size == 1.0 and c3.loss.term_weights is None
  assert arms["k=0 lr×2"].lr_mult == 2.0 and arms["k=0 lr×2"].lr_of == "k=0"
  assert dict(arms["k=2 summed"].loss)["chain"] == "summed"
  assert {a.name for a in design.study_arms() if a.group == "main"} == {"k=0", "k=1", "k=2", "k=3"}


def test_x_plus_cV_control_equals_k0_under_drift_normalisation():
  """Why the x + cV controls train exactly like k = 0: each temperature's summed field is
  divided by its RMS, so a common weight c cancels (the README relies on this)."""
  import jax
  from lookahead_drift import drift
  x = jax.random.normal(jax.random.PRNGKey(0), (48, 2))
  y = jax.random.normal(jax.random.PRNGKey(1), (48, 2)) + 1.0
  grad = lambda w, norm=True: jax.grad(lambda v: drift.drift_loss(v, y, config=drift.LossConfig(
      normalization="mean_shift", term_weights=w, drift_normalization=norm))[0])(x)
  np.testing.assert_allclose(grad((2.0,)), grad(None), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(grad((4.0,)), grad(None), rtol=1e-6, atol=1e-9)
  # Without drift normalisation the weight would matter (so the check above could fail).
  assert not np.allclose(grad((2.0,), False), grad(None, False))
