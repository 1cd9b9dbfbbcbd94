"""experiments/toy2d/fit.py end to end on the smoke config: it trains, scores and logs."""

import importlib.util
import json
import os
import sys

_FIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "experiments", "toy2d", "fit.py")


def test_fit_smoke_writes_png_and_scored_log(tmp_path):
  spec = importlib.util.spec_from_file_location("toy2d_fit", _FIT)
  fit = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = fit
  spec.loader.exec_module(fit)
  record = fit.main([f"--out={tmp_path}", "--label=smoke", "--config_arg=smoke",
                     "--datasets=eight_gaussians,checkerboard", "--num_eval=300",
                     "--set", "optimizer.learning_rate=3e-3"])
  assert (tmp_path / "smoke.png").stat().st_size > 0
  with open(tmp_path / "log.jsonl") as fh:
    logged = [json.loads(line) for line in fh]
  assert [r["label"] for r in logged] == ["smoke"]
  assert logged[0]["overrides"] == ["optimizer.learning_rate=3e-3"]
  for name in ("eight_gaussians", "checkerboard"):
    r = record["results"][name]
    assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
  assert 0.0 <= record["results"]["eight_gaussians"]["in_mode"] <= 1.0
