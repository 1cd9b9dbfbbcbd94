"""experiments/toy2d/run.py --quick: runs end to end and writes finite, consistent results."""

import importlib.util
import json
import math
import os
import sys

import pytest

_RUN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "experiments", "toy2d", "run.py")


def _load_run_module():
  spec = importlib.util.spec_from_file_location("toy2d_study_run", _RUN)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  run = _load_run_module()
  out = str(tmp_path_factory.mktemp("toy2d"))
  results = run.main([f"--out={out}", "--quick"])
  return run, out, results


def _finite(values):
  return all(math.isfinite(v) for v in values)


def test_quick_writes_all_outputs(quick):
  _, out, _ = quick
  for name in ("samples.png", "curves.png"):
    with open(os.path.join(out, name), "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(out, "results.json")) as fh:
    data = json.load(fh)
  assert set(data) >= {"settings", "machine", "chosen", "sweep", "study", "noise_floor", "table"}
  table = open(os.path.join(out, "results.md")).read()
  for label in ("| eight_gaussians | k=0 |", "| eight_gaussians | k=1 (", "noise floor"):
    assert label in table


def test_quick_metrics_finite_and_shaped(quick):
  run, _, results = quick
  s = run.QUICK
  arms = results["study"]["eight_gaussians"]["arms"]
  assert sorted(r["k"] for r in arms.values()) == list(s.ks)
  evals = s.num_steps // s.eval_every + 1
  for rec in arms.values():
    assert rec["step"] == [i * s.eval_every for i in range(evals)]
    for metric in ("energy", "sliced_w2"):
      assert len(rec[metric]) == evals and all(len(v) == s.num_seeds for v in rec[metric])
      assert _finite([v for row in rec[metric] for v in row])
      assert all(v > 0 for row in rec[metric] for v in row)
    assert rec["run_step_seconds"] > 0
  for row in results["table"]["eight_gaussians"].values():
    assert _finite(row["final_energy"] + row["final_sliced_w2"] + row["equal_time_energy"])


def test_quick_sweep_picks_the_best_validation_score(quick):
  run, _, results = quick
  arms = results["sweep"]["arms"]
  assert len(arms) == len(run.QUICK.sweep_grid) * sum(k > 0 for k in run.QUICK.ks)
  for k in run.QUICK.ks:
    if k == 0:
      assert tuple(results["chosen"][k]) == run.DEFAULT_VARIANT
      continue
    scores = {tuple(r["variant"]): r["score"] for r in arms.values() if r["k"] == k}
    assert tuple(results["chosen"][k]) == min(scores, key=scores.get)
    assert [r.get("chosen", False) for r in arms.values() if r["k"] == k].count(True) == 1


def test_equal_time_uses_the_last_evaluation_within_budget(quick):
  run, _, _ = quick
  rec = {"step": [0, 10, 20, 30], "run_step_seconds": 0.5}
  assert run.equal_time(rec, 10.0) == 2  # step 20 takes exactly 10 s
  assert run.equal_time(rec, 9.99) == 1
  assert run.equal_time(rec, 100.0) == 3


def test_make_config_rejects_unknown_term_weights(quick):
  run, _, _ = quick
  with pytest.raises(ValueError, match="term weights"):
    run.make_config(run.QUICK, 1, (1.0, "none", "linear"))
  config = run.make_config(run.QUICK, 2, (0.5, "unit_rms", "geometric"))
  assert tuple(config.loss.term_weights) == (1.0, 0.5, 0.25)
  assert config.loss.step_size == 0.5 and config.loss.num_lookahead == 2
  # The study pins its learning rate rather than following configs/toy2d.py.
  faster = run.dataclasses.replace(run.QUICK, learning_rate=0.0123)
  assert run.make_config(faster, 0, run.DEFAULT_VARIANT).optimizer.learning_rate == 0.0123
