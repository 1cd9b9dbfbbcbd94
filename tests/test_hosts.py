"""Multi-process flags: incomplete ones are refused before any work, and a run nobody joins
ends with one line instead of waiting forever or aborting with a C++ stack trace."""

import pathlib
import socket
import subprocess
import sys

import pytest

from lookahead_drift import cli, sharding

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch):
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(key, raising=False)


def test_process_flags_without_coordinator_are_an_error():
  sharding.maybe_initialize_distributed(None, None, None)  # Single process: nothing to join.
  with pytest.raises(ValueError, match=r"--num_processes=2 --process_id=0 without "
                                       r"--coordinator_address"):
    sharding.maybe_initialize_distributed(None, 2, 0)
  with pytest.raises(ValueError, match=r"--process_id=1 without --coordinator_address"):
    sharding.maybe_initialize_distributed(None, None, 1)


def test_inconsistent_process_flags_are_an_error():
  with pytest.raises(ValueError, match="go together"):
    sharding.maybe_initialize_distributed("127.0.0.1:1", 2, None)
  with pytest.raises(ValueError, match=r"--process_id=2 is outside \[0, --num_processes=2\)"):
    sharding.maybe_initialize_distributed("127.0.0.1:1", 2, 2)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_join_timeout_ends_in_one_line():
  code = ("import sys; from lookahead_drift import sharding; "
          f"sharding.maybe_initialize_distributed('127.0.0.1:{_free_port()}', 2, 1, "
          "timeout_s=2)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=180, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin"})
  assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "no multi-process run joined at 127.0.0.1:" in last and "within 2 s" in last
  assert "Check failure" not in proc.stderr  # JAX's own abort did not happen


def test_train_binary_refuses_process_flags_without_coordinator(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "lookahead_drift.train", "--config=configs/toy2d.py",
       f"--workdir={tmp_path / 'run'}", "--num_processes=2", "--process_id=0"],
      cwd=REPO, capture_output=True, text=True, timeout=180)
  assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-2000:]
  assert "without --coordinator_address" in proc.stderr
  assert not (tmp_path / "run").exists()  # refused before any work
