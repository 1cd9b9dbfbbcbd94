"""Two processes joined by jax.distributed on 127.0.0.1 train the same run as one process.

The global batch at step s depends on (seed, s) only, each process feeding its rows of it, so a
2-process run (2 processes x 2 CPU devices) must reach the parameters of the plain 1-process
run of the same config (here on this test process's single CPU device: only the reduction
order differs, within float tolerance), and a 2-process checkpoint must resume on 1 process
with the same data.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import restore_train_state, smoke_config, subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_STEPS = 5
OVERRIDES = {"num_steps": NUM_STEPS, "checkpoint.every": 3, "checkpoint.keep": 2,
             "sample.every": 1000, "log_every": 1}  # checkpoints at steps 3 and 5
FIELDS = ("params", "ema_params", "opt_state")


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


def _assert_states_close(actual, expected) -> None:
  actual, expected = jax.device_get(actual), jax.device_get(expected)
  assert int(actual.step) == int(expected.step)
  for name in FIELDS:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 getattr(actual, name), getattr(expected, name))


@pytest.fixture(scope="module", name="two_process_run")
def fixture_two_process_run(tmp_path_factory) -> pathlib.Path:
  """The workdir of a 2-process run of NUM_STEPS steps (checkpoints at steps 3 and 5)."""
  workdir = tmp_path_factory.mktemp("mp") / "run"
  port = _free_port()
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                       JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(workdir)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
  return workdir


def test_two_processes_match_the_plain_single_process_run(two_process_run, tmp_path):
  from lookahead_drift import metrics_io, train_loop  # pylint: disable=g-import-not-at-top
  config = smoke_config(**OVERRIDES)
  plain = train_loop.run(config, str(tmp_path / "plain"))  # 1 process, 1 device
  _assert_states_close(restore_train_state(config, str(two_process_run)), plain)
  records = metrics_io.read_jsonl(os.path.join(two_process_run, "metrics.jsonl"))
  plain_records = metrics_io.read_jsonl(str(tmp_path / "plain" / "metrics.jsonl"))
  assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))  # once, by process 0
  np.testing.assert_allclose([r["loss"] for r in records],
                             [r["loss"] for r in plain_records], rtol=1e-5)


def test_a_two_process_checkpoint_resumes_on_one_process(two_process_run, tmp_path):
  from lookahead_drift import train_loop  # pylint: disable=g-import-not-at-top
  config = smoke_config(**OVERRIDES)
  workdir = tmp_path / "run"
  shutil.copytree(two_process_run, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(NUM_STEPS))  # as if stopped after step 3
  resumed = train_loop.run(config, str(workdir))  # 1 process: steps 4 and 5
  _assert_states_close(resumed, restore_train_state(config, str(two_process_run)))


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
