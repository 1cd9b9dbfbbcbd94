"""tools/gpu_bench.sh end to end in its dry-run mode (toy sizes, CPU): every part's report,
the recorded failure of one part, the combined results and the Markdown table.

One data set and one batch size keep it within about three minutes on two loaded cores (the
script's matrix is DATASETS x BATCHES x DTYPES); "float16", which the models do not offer,
makes the first train part fail, and the parts after it must still run. Speed is never asserted.
"""

import json
import math
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu_bench")
  env = dict(os.environ, OUT=str(out), DRY_RUN="1", JAX_PLATFORMS="cpu", DATASETS="cifar10",
             BATCHES="16", DTYPES="float16 bfloat16", PYTHON=sys.executable)
  env.pop("OFFICIAL_DIR", None)
  proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_bench.sh")], cwd=ROOT, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:]
  with open(out / "results.json", encoding="utf-8") as f:
    results = json.load(f)
  return out, results, proc.stdout


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_outputs_and_outcomes(run):
  out, results, log = run
  assert sorted(os.listdir(out)) == ["parts.tar.gz", "results.json", "table.md"]
  assert list(results) == ["train_cifar10_b16_float16", "train_cifar10_b16_bfloat16",
                           "stream_k0", "stream_k1", "grid"]
  outcomes = {name: part["status"]["status"] for name, part in results.items()}
  assert outcomes.pop("train_cifar10_b16_float16") == "failed"
  assert set(outcomes.values()) == {"ok"}
  with tarfile.open(out / "parts.tar.gz") as tar:
    names = set(tar.getnames())
  for name in results:
    assert {f"parts/{name}.status.json", f"parts/{name}.log"} <= names
  assert "cifar10: no data at" in log and "OFFICIAL_DIR not set" in log


def test_train_step_report(run):
  _, results, _ = run
  part = results["train_cifar10_b16_bfloat16"]
  assert part["status"] | {"kind": "train", "data": "cifar10", "batch": 16,
                           "dtype": "bfloat16", "dry_run": True} == part["status"]
  step = part["report"]["train_step"]
  assert step["global_batch_size"] == 16 and step["data"] == "synthetic"
  assert step["model_dtype"] == step["encoder_dtype"] == "bfloat16"
  median = step["step_time"]["median_s"]
  assert _positive(median) and _positive(step["global_images_per_s"])
  assert step["global_images_per_s"] == pytest.approx(16 / median)
  flops, use = step["xla_analysis"]["flops"], step["utilisation"]
  assert _positive(flops)
  assert use["achieved_tflops"] == pytest.approx(flops / median / 1e12)
  # No peak is known for a CPU: no MFU and no peak memory, never invented.
  assert use["peak_tflops"] is None and use["mfu"] is None and step["peak_memory"] is None
  assert part["report"]["flags"]["random_encoder"] == [8]


def test_stream_and_grid_reports(run):
  _, results, _ = run
  for k in (0, 1):
    (r,) = results[f"stream_k{k}"]["report"]["drift_loss"]
    assert r["num_lookahead"] == k and r["batch_size"] == 256 and r["shapes"] == {
        "d64": [1, 256, 64]}
    assert _positive(r["time"]["median_s"])
  rows = results["grid"]["report"]["compare"]
  assert [r["shape"] for r in rows] == [[1, 16, 8], [2, 16, 4]]
  for row in rows:
    assert list(row["variants"]) == ["this", "this@default", "this@high", "this@highest"]
    for v in row["variants"].values():
      assert _positive(v["time"]["median_s"])
      assert v["grad_rel_err_vs_float64"] < 2e-4  # on CPU every precision computes float32


def test_table(run):
  out, _, _ = run
  table = (out / "table.md").read_text(encoding="utf-8")
  assert "DRY_RUN" in table
  lines = table.splitlines()
  row = next(line for line in lines if line.startswith("| cifar10 | 16 | bfloat16 |"))
  assert "n/a / n/a" in row and "synthetic images" in row  # TFLOP/s / peak / MFU
  assert any(line.startswith("| cifar10 | 16 | float16 | - |") and "failed (rc " in line
             for line in lines)
  assert sum(line.startswith("| 256 | 64 | ") for line in lines) == 2
  assert sum(line.startswith("| 2x16x4 | this") for line in lines) == 4
  assert "| grid | ok |" in table
