"""experiments/toy2d/fit.py end to end on the smoke config: it trains, scores and logs; and
the toy arms (experiments/toy2d/common.py) train a conditional config too."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np

from experiments.toy2d import common

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_fit_smoke_writes_png_and_scored_log(tmp_path):
  subprocess.run([sys.executable, "-m", "experiments.toy2d.fit", f"--out={tmp_path}",
                  "--label=smoke", "--config_arg=smoke",
                  "--datasets=eight_gaussians,checkerboard", "--num_eval=300",
                  "--set", "optimizer.learning_rate=3e-3"], cwd=REPO, check=True)
  assert (tmp_path / "smoke.png").stat().st_size > 0
  with open(tmp_path / "log.jsonl") as fh:
    logged = [json.loads(line) for line in fh]
  assert [r["label"] for r in logged] == ["smoke"]
  assert logged[0]["overrides"] == ["optimizer.learning_rate=3e-3"]
  record = logged[0]
  for name in ("eight_gaussians", "checkerboard"):
    r = record["results"][name]
    assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
  assert 0.0 <= record["results"]["eight_gaussians"]["in_mode"] <= 1.0


def test_conditional_arm_trains_on_the_train_binarys_class_batches():
  config = common.make_config({"num_steps": 2}, "smoke", name="toy2d_cond")
  datasets = ("eight_gaussians", "checkerboard")
  arm = common.arm_from_config(config)
  states = arm.init([0, 1])
  batches = common.real_batches(common.train_streams(config, datasets), 2)
  assert set(batches) == {"label", "image", "neg_image"}
  states = arm.chunk(states, batches)
  assert np.asarray(states.step).tolist() == [2, 2]
  generate, noise_shape = common.generate_fn(config.model)
  noise = jax.random.normal(jax.random.PRNGKey(0), (16, *noise_shape))
  x = jax.vmap(generate, in_axes=(0, None))(states.ema_params, noise)
  assert x.shape == (2, 16, 2) and np.isfinite(np.asarray(x)).all()
