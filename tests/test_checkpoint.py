"""Corrupt or incompatible checkpoints fail loudly and stay untouched; SIGTERM saves and exits."""

import hashlib
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_train import smoke_config, subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

from lookahead_drift import checkpoint, cli, metrics_io, train  # pylint: disable=g-import-not-at-top,wrong-import-position

OVERRIDES = {"num_steps": 3, "sample.every": 1000}


def _digest(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("ckpt") / "run"
  train.train_and_evaluate(smoke_config(**OVERRIDES), str(workdir))
  assert (workdir / "checkpoints" / "3").is_dir()
  return workdir


def _corrupt_data(step_dir: pathlib.Path) -> None:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage" * (p.stat().st_size // 8 + 1))


def _corrupt_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / "state" / "_METADATA").write_text("{not json")


@pytest.mark.parametrize("corrupt", [_corrupt_data, _corrupt_metadata])
def test_corrupt_checkpoint_names_path_and_is_left_intact(trained, tmp_path, corrupt):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  step_dir = workdir / "checkpoints" / "3"
  corrupt(step_dir)
  before = _digest(workdir / "checkpoints")
  with pytest.raises(checkpoint.CheckpointError, match=str(step_dir)):
    train.train_and_evaluate(smoke_config(**{**OVERRIDES, "num_steps": 6}), str(workdir))
  assert _digest(workdir / "checkpoints") == before


def test_incompatible_checkpoint_names_path_and_is_left_intact(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  before = _digest(workdir / "checkpoints")
  config = smoke_config(**{**OVERRIDES, "num_steps": 6})
  config.model.hidden = (16, 16)
  with pytest.raises(cli.UserError, match=r"model.hidden: \[32, 32\] -> \[16, 16\]"):
    train.train_and_evaluate(config, str(workdir))
  with pytest.raises(checkpoint.CheckpointError,
                     match=f"{workdir / 'checkpoints' / '3'}.*does not match"):
    train.train_and_evaluate(config, str(workdir), allow_config_change=True)
  assert _digest(workdir / "checkpoints") == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_exits_3_then_relaunch_continues(tmp_path, signum):
  workdir = tmp_path / "run"
  metrics = workdir / "metrics.jsonl"
  proc = subprocess.Popen(
      [sys.executable, "-m", "lookahead_drift.train", "--config=configs/toy2d.py:smoke",
       f"--workdir={workdir}", "--config.num_steps=100000", "--config.log_every=1",
       "--config.checkpoint.every=100000", "--config.sample.every=100000",
       "--config.tensorboard=False"],
      cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == cli.EXIT_PREEMPTED, err[-3000:]
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  last_logged = metrics_io.read_jsonl(str(metrics))[-1]["step"]
  assert saved == [last_logged] and last_logged >= 3
  assert (f"preempted at step {last_logged} of 100000; relaunch the same command to continue"
          in err.splitlines()[-1]) and "Traceback" not in err

  state = train.train_and_evaluate(smoke_config(num_steps=last_logged + 2, log_every=1),
                                   str(workdir))
  assert int(jax.device_get(state.step)) == last_logged + 2
  steps = [r["step"] for r in metrics_io.read_jsonl(str(metrics))]
  assert steps[-2:] == [last_logged + 1, last_logged + 2]
