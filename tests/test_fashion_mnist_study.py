"""experiments/fashion_mnist/run.py: imports, builds a valid config per method, writes results.

The study itself needs hours of CPU (Inception at ~4 images/s); this checks everything around
it that breaks silently: the imports, each method's config and loss, the table and the figure.
Runs in a subprocess because the script defines absl flags at import.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import importlib.util, json, os, pathlib, sys
    spec = importlib.util.spec_from_file_location("fm_run", sys.argv[1])
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    from absl import flags
    from lookahead_drift import drift, experiment
    workdir, results = sys.argv[2], sys.argv[3]
    flags.FLAGS([sys.argv[0], f"--workdir={workdir}", f"--results={results}"])

    kinds = {}
    for method, (kind, overrides) in run.METHODS.items():
      config = run.run_config(method)
      loss = experiment.create_loss_config(config)   # raises on an invalid loss override
      assert isinstance(loss, drift.LossConfig)
      for key, value in overrides.items():
        got = getattr(loss, key)
        assert got == (tuple(value) if isinstance(value, (list, tuple)) else value), (method, key)
      kinds.setdefault(kind, set()).add(config.encoder.checkpoint)
      assert run.ENCODER_CONFIGS[kind]
      assert f"--workdir={workdir}/{method} " in run.train_command(method, 100)
    flags.FLAGS.seed = 3
    assert f"--workdir={workdir}/k1_seed3 " in run.train_command("k1", 100)
    assert "--config.seed=3 " in run.train_command("k1", 100)
    flags.FLAGS.seed = 0
    assert all(len(paths) == 1 for paths in kinds.values()) and len(kinds) == 2, kinds

    # Two evaluations of k1 (with a training log), one of k1 seed 1, the real-image floor.
    for folder, method, seed, step, fid in (
        ("k1", "k1", None, 100, 200.0), ("k1", "k1", None, 200, 150.0),
        ("k1_seed1", "k1", 1, 200, 160.0), ("real", "real test images", None, 0, 30.0)):
      folder = pathlib.Path(workdir, folder)
      folder.mkdir(parents=True, exist_ok=True)
      row = dict(method=method, step=step, n_gen=10, n_ref=20, fid=fid, kid=fid / 1e4,
                 kid_std=1e-3)
      if seed is not None:  # Rows written before seeds were recorded have none: seed 0.
        row["seed"] = seed
      (folder / f"eval_{step}_10.json").write_text(json.dumps(row))
    rates = [0.1, 2.0, 2.0, 4.0]  # steps/s per log window; the first includes compilation
    pathlib.Path(workdir, "k1", "metrics.jsonl").write_text(
        "".join(json.dumps(dict(step=10 * i, steps_per_sec=r)) + "\\n"
                for i, r in enumerate(rates)))
    from lookahead_drift import pictures
    import numpy as np
    os.makedirs(results, exist_ok=True)
    pictures.save_samples_png(os.path.join(results, "samples_k1_step200.png"),
                              np.zeros((4, 28, 28, 1), np.float32))
    run.write_table()
""")


def test_study_script_configs_table_and_figure(tmp_path):
  workdir, results = tmp_path / "work", tmp_path / "results"
  workdir.mkdir()
  proc = subprocess.run(
      [sys.executable, "-c", _SCRIPT, str(REPO / "experiments/fashion_mnist/run.py"),
       str(workdir), str(results)],
      capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]

  rows = json.loads((results / "results.json").read_text())
  assert [(r["method"], r["seed"], r["step"]) for r in rows] == [
      ("real test images", 0, 0), ("k1", 0, 100), ("k1", 0, 200), ("k1", 1, 200)]
  k1 = [r for r in rows if r["method"] == "k1" and r["seed"] == 0]
  assert all(r["encoder"] == "cls" for r in k1)
  # Median of 1/rate over windows (10, 0.5, 0.5, 0.25 s/step) is 0.5 s/step.
  assert all(abs(r["seconds_per_step"] - 0.5) < 1e-9 for r in k1)
  assert rows[0]["encoder"] == "-" and rows[0]["seconds_per_step"] is None

  table = (results / "table.md").read_text().splitlines()
  assert table[0].startswith("| method | encoder | seed | step | FID |")
  assert "| k1 | cls | 0 | 200 | 150.0 | 15.00 ± 1.00 | 0.50 | 10 | 20 |" in table
  assert "| k1 | cls | 1 | 200 | 160.0 | 16.00 ± 1.00 | - | 10 | 20 |" in table
  assert "| real test images | - | - | - | 30.0 |" in table[2]
  for name in ("curves.png", "samples.png"):  # samples.png: the grids by method and step
    assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
