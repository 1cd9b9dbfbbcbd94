"""The train step on 8 fake CPU devices equals the single-device step (subprocess)."""

import os
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 2


def _worker() -> None:
  """Runs in a subprocess with 8 fake devices; prints SHARDING_OK when all checks pass."""
  sys.path.insert(0, str(REPO / "tests"))
  import jax  # pylint: disable=g-import-not-at-top
  from train_helpers import smoke_config  # pylint: disable=g-import-not-at-top
  from lookahead_drift import experiment, sharding  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8, jax.devices()
  config = smoke_config(**{"mesh.shard_params": True})
  dataset = experiment.create_dataset(config, 0)
  batches = [{"image": next(dataset)["image"]} for _ in range(NUM_STEPS)]

  def run(mesh):
    exp = experiment.create_experiment(config, mesh)
    state = exp.state
    for batch in batches:
      global_batch = sharding.global_batch(batch, mesh)
      assert len(global_batch["image"].sharding.device_set) == mesh.size
      state, metrics = exp.step_fn(state, global_batch, exp.encoder_params)
    return state, jax.device_get(metrics)

  reference, ref_metrics = run(sharding.create_mesh(1, devices=jax.devices()[:1]))
  reference = jax.device_get(reference)
  for num_model in (1, 2):  # (8 data) and (4 data, 2 model) with params split over "model"
    mesh = sharding.create_mesh(num_model)
    state, metrics = run(mesh)
    if num_model == 2:
      specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
      assert any("model" in tuple(s) for s in specs), specs
    state = jax.device_get(state)
    for name in ("params", "ema_params", "opt_state"):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                   getattr(state, name), getattr(reference, name))
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  print("SHARDING_OK")


def test_sharded_step_equals_single_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and "SHARDING_OK" in proc.stdout, proc.stderr[-4000:]


def test_batch_size_must_split_over_data_shards():
  import jax  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from lookahead_drift import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh(1)
  sharding.check_batch_size(jax.device_count() * 4, mesh)
  with pytest.raises(ValueError, match="mesh.num_model=3"):
    sharding.create_mesh(3, devices=jax.devices()[:1])


if __name__ == "__main__":
  _worker()
