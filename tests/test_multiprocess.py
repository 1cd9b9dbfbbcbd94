"""Two processes joined by jax.distributed on 127.0.0.1 train like one process on the same
global batch (each process feeds only its own half)."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import restore_train_state, smoke_config  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_STEPS = 3
OVERRIDES = {"num_steps": NUM_STEPS, "checkpoint.every": NUM_STEPS, "sample.every": 1000,
             "log_every": 1}


def _worker(process_id: int, port: int, workdir: str) -> None:
  """One of the two processes: joins the run and trains through the library entry point."""
  from lookahead_drift import sharding, train_loop  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed(f"127.0.0.1:{port}", 2, process_id)
  assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  train_loop.run(smoke_config(**OVERRIDES), workdir)
  print(f"WORKER_OK {process_id}", flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
  from lookahead_drift import experiment, input_pipeline, metrics_io, sharding  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "mp")
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), workdir], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0 and f"WORKER_OK {i}" in out, err[-4000:]

  # Reference: one process, one device, global batch = process 0's rows then process 1's.
  config = smoke_config(**OVERRIDES)
  streams = [input_pipeline.create_dataset(config.data, seed=config.seed, process_index=i,
                                           process_count=2) for i in range(2)]
  exp = experiment.create_experiment(config)
  state = exp.state
  for _ in range(NUM_STEPS):
    halves = [next(s)["image"] for s in streams]
    assert not np.array_equal(halves[0], halves[1])
    batch = {"image": np.concatenate(halves, 0)}
    state, _ = exp.step_fn(state, sharding.global_batch(batch, exp.mesh), exp.encoder_params)
  reference = jax.device_get(state)

  restored = jax.device_get(restore_train_state(config, workdir))
  assert int(restored.step) == NUM_STEPS
  for name in ("params", "ema_params", "opt_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 getattr(restored, name), getattr(reference, name))
  records = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3]  # written once, by process 0


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
