"""tools/benchmark.py end to end on the smoke config: JSON layout and sane, finite times.

Both runs are subprocesses (one with 2 fake CPU devices, which needs its own XLA_FLAGS) and
run concurrently to stay within the test budget. Speed is never asserted.
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "benchmark.py")
SMOKE = ["--config=configs/toy2d.py:smoke", "--steps=3", "--warmup=1"]


def _launch(args: list[str], num_devices: int | None = None) -> subprocess.Popen:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"  # the checks below (no memory_stats, fake devices) are CPU's
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={num_devices}"
                      if num_devices else "")
  return subprocess.Popen([sys.executable, TOOL, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _synthetic_report(step_ms: float, drift_ms: float) -> dict:
  """A minimal report as the tool writes it, with known times (for --summarize)."""
  step = {"median_s": step_ms / 1e3, "min_s": step_ms / 2e3}
  return {
      "config": "configs/toy2d.py", "overrides": {"loss.num_lookahead": "1"},
      "environment": {"device_count": 1, "backend": "cpu", "process_count": 1},
      "train_step": {"global_batch_size": 100, "step_time": step, "compile_s": 1.0},
      "drift_loss": [{"shapes": {"d2": [1, 64, 2]}, "batch_size": 64, "num_lookahead": 1,
                      "mode": "grad", "time": {"median_s": drift_ms / 1e3,
                                               "min_s": drift_ms / 2e3},
                      "xla_analysis": {"temp_bytes": 2**20}}],
  }


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bench")
  synthetic = []
  for i, (step_ms, drift_ms) in enumerate([(10.0, 4.0), (30.0, 8.0), (20.0, 6.0)]):
    synthetic.append(str(tmp / f"synthetic{i}.json"))
    with open(synthetic[-1], "w", encoding="utf-8") as f:
      json.dump(_synthetic_report(step_ms, drift_ms), f)
  # All three at once: the two measuring runs and --summarize (needs no config).
  runs = {
      "one_device": _launch([*SMOKE, f"--json={tmp / 'one_device.json'}",
                             "--config.loss.num_lookahead=1", "--drift_batch_sizes=16",
                             "--drift_ks=2", "--drift_dims=3", "--drift_steps=2"]),
      "two_devices": _launch([*SMOKE, f"--json={tmp / 'two_devices.json'}", "--nodrift"],
                             num_devices=2),
      "summarize": _launch([f"--summarize={','.join(synthetic)}"]),
      "parts": _launch([*SMOKE, f"--json={tmp / 'parts.json'}", "--notrain_step", "--nodrift",
                        "--parts", "--parts_rounds=2"]),
  }
  out = {}
  for name, proc in runs.items():
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{log[-4000:]}"
    if name == "summarize":
      out[name] = (None, log)
      continue
    with open(tmp / f"{name}.json", encoding="utf-8") as f:
      out[name] = (json.load(f), log)
  return out


def _assert_time_stats(stats: dict, n: int) -> None:
  assert stats["n"] == n
  for key in ("median_s", "q25_s", "q75_s", "min_s", "max_s"):
    assert math.isfinite(stats[key]) and stats[key] > 0, (key, stats)
  assert stats["min_s"] <= stats["q25_s"] <= stats["median_s"] <= stats["q75_s"] <= stats["max_s"]
  assert stats["iqr_s"] == pytest.approx(stats["q75_s"] - stats["q25_s"])


def _assert_train_step(step: dict, num_devices: int) -> None:
  assert step["global_batch_size"] == 32 and step["process_batch_size"] == 32
  assert step["mesh_shape"] == {"data": num_devices, "model": 1}
  _assert_time_stats(step["step_time"], 3)
  for key in ("setup_s", "lower_s", "compile_s", "first_run_s", "pipelined_step_s",
              "process_images_per_s", "global_images_per_s"):
    assert math.isfinite(step[key]) and step[key] > 0, key
  assert step["global_images_per_s"] == pytest.approx(32 / step["step_time"]["median_s"])
  assert step["process_median_step_s"] == [step["step_time"]["median_s"]]
  assert math.isfinite(step["final_loss"])
  # CPU has no memory_stats: reported as absent, never invented.
  assert step["peak_memory"] is None
  assert step["xla_analysis"]["argument_bytes"] > 0


def test_one_device_report(reports):
  report, log = reports["one_device"]
  assert report["config"] == "configs/toy2d.py:smoke"
  assert report["overrides"] == {"loss.num_lookahead": "1"}
  env = report["environment"]
  assert env["backend"] == "cpu" and env["device_count"] == 1 and env["process_count"] == 1
  assert env["jax_version"] and env["device_kind"]
  _assert_train_step(report["train_step"], num_devices=1)
  assert "| train step |" in log and "images/s, global" in log


def test_drift_grid(reports):
  report, log = reports["one_device"]
  grid = report["drift_loss"]
  assert [(r["batch_size"], r["num_lookahead"]) for r in grid] == [(16, 2)]
  for r in grid:
    assert r["shapes"] == {"d3": [1, 16, 3]} and r["mode"] == "grad"
    _assert_time_stats(r["time"], 2)
    assert r["compile_s"] > 0 and math.isfinite(r["loss"])
  assert "| d3: 1x16x3 | 16 | 2 |" in log


def test_two_fake_devices_shard_the_step(reports):
  report, _ = reports["two_devices"]
  assert report["environment"]["device_count"] == 2
  _assert_train_step(report["train_step"], num_devices=2)
  assert "drift_loss" not in report


def test_parts_add_up_to_a_table(reports):
  report, log = reports["parts"]
  parts = report["parts"]
  names = ["generator forward+backward", "encoder positives", "encoder generated fwd+bwd",
           "drift loss value+grad", "optimizer + EMA"]
  assert list(parts["parts"]) == names + ["whole step", "host input"]
  for name, row in parts["parts"].items():
    assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"] < 60, (name, row)
    assert (row["temp_bytes"] is None) == (name == "host input")
  assert parts["parts_sum_s"] == pytest.approx(sum(parts["parts"][n]["median_s"] for n in names))
  assert parts["rounds"] == 2 and parts["batch_size"] == 32
  assert "| sum of the five parts |" in log and "| whole step |" in log


def test_summarize_combines_repeated_runs(reports):
  _, log = reports["summarize"]
  rows = [line for line in log.splitlines() if line.startswith("| configs/") or
          line.startswith("| d2:")]
  # Three runs of one setting -> one row; median of 10/30/20 ms is 20 ms, 100 / 0.02 s = 5000
  # images/s; fastest = half the smallest median (as written above).
  assert rows[0] == ("| configs/toy2d.py loss.num_lookahead=1 (1 cpu dev, 1 proc) | 100 | 3 | "
                     "10 / 30 / 20 | 20 | 5000 | 5 | 1.00 / 1.00 / 1.00 |")
  assert rows[1] == "| d2: 1x64x2 | 64 | 1 | grad | 4 / 8 / 6 | 6 | 2 | 1.00 MiB |"
  assert len(rows) == 2


def test_drift_before_loads_a_package_copy_beside_the_package(tmp_path):
  """--compare_before with a copy of the drift package: it loads as its own modules (not the
  current ones) and, being the same code here, gives the same loss."""
  import shutil

  import jax
  import jax.numpy as jnp

  from lookahead_drift import drift
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  try:
    import official_code
  finally:
    sys.path.remove(os.path.join(ROOT, "tools"))
  copy = tmp_path / "drift"
  shutil.copytree(os.path.join(ROOT, "lookahead_drift", "drift"), copy,
                  ignore=shutil.ignore_patterns("__pycache__"))
  before = official_code.load_drift_before(str(copy))
  assert before.__name__ == "drift_before"
  assert sys.modules["drift_before.field"] is not sys.modules["lookahead_drift.drift.field"]
  gen, pos = jax.random.normal(jax.random.key(0), (2, 1, 12, 5))
  ours = drift.drift_loss(gen, pos, config=drift.LossConfig())[0]
  theirs = before.drift_loss(gen, pos, config=before.LossConfig())[0]
  assert float(theirs) == pytest.approx(float(ours), rel=1e-6)
  with pytest.raises(FileNotFoundError, match="no Python file or package"):
    official_code.load_drift_before(str(tmp_path / "missing"))
