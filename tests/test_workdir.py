"""One run per workdir (lock), and a resume that keeps the config's meaning (or says so)."""

import json
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import smoke_config  # pylint: disable=g-import-not-at-top,wrong-import-position

from lookahead_drift import cli, experiment, train_loop, workdir as workdir_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

OVERRIDES = {"num_steps": 3, "sample.every": 1000}


def test_second_run_on_a_locked_workdir_refuses(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = workdir_lib.acquire_lock(str(workdir))  # as a live run would hold it
  try:
    with pytest.raises(cli.UserError, match=f"in use by another run.*pid {lock_pid(workdir)}"):
      train_loop.run(smoke_config(**OVERRIDES), str(workdir))
  finally:
    workdir_lib.release_lock(lock)
  assert not (workdir / "checkpoints").exists() and not (workdir / "lock").exists()


def lock_pid(workdir: pathlib.Path) -> int:
  return json.loads((workdir / "lock").read_text())["pid"]


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  (workdir / "lock").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "earlier"}))
  train_loop.run(smoke_config(**OVERRIDES), str(workdir))
  assert "Taking over the lock" in caplog.text and f"pid {int(dead.stdout)}" in caplog.text
  assert not (workdir / "lock").exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "x"}))
  with pytest.raises(cli.UserError, match="another host.*delete the lock file"):
    train_loop.run(smoke_config(**OVERRIDES), str(workdir))


@pytest.fixture(name="trained_once", scope="module")
def fixture_trained_once(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("workdir") / "run"
  train_loop.run(smoke_config(**OVERRIDES), str(workdir))
  return workdir


@pytest.fixture(name="trained")
def fixture_trained(trained_once, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(trained_once, tmp_path / "run"))


@pytest.mark.parametrize("key, value", [
    ("seed", 1), ("data.name", "checkerboard"), ("optimizer.learning_rate", 0.1)])
def test_resume_with_a_meaningful_config_change_refuses_with_a_diff(trained, key, value):
  saved = (trained / "config.json").read_text()
  config = smoke_config(**{**OVERRIDES, "num_steps": 6, key: value})
  with pytest.raises(cli.UserError, match=f"{key}: .* -> {value!r}.*--allow_config_change"):
    train_loop.run(config, str(trained))
  assert (trained / "config.json").read_text() == saved


def test_allowed_config_change_is_recorded(trained):
  saved = (trained / "config.json").read_text()
  config = smoke_config(**{**OVERRIDES, "num_steps": 6, "seed": 1})
  train_loop.run(config, str(trained), allow_config_change=True)
  assert json.loads((trained / "config.json").read_text())["seed"] == 1
  history = list((trained / "config_history").iterdir())
  assert [p.read_text() for p in history] == [saved]


def test_harmless_config_change_is_allowed_and_recorded(trained):
  config = smoke_config(**{**OVERRIDES, "num_steps": 6, "log_every": 3,
                           "checkpoint.every": 2})
  state = train_loop.run(config, str(trained))
  assert int(state.step) == 6
  saved = json.loads((trained / "config.json").read_text())
  assert (saved["num_steps"], saved["log_every"], saved["checkpoint"]["every"]) == (6, 3, 2)
  assert len(list((trained / "config_history").iterdir())) == 1


def test_resume_with_another_num_steps_says_the_cosine_schedule_changes(trained, caplog):
  config = smoke_config(**{**OVERRIDES, "num_steps": 6})
  train_loop.run(config, str(trained))
  old, new = (float(experiment.create_optimizer(smoke_config(num_steps=n))[1](3))
              for n in (3, 6))
  assert old != new
  assert (f"the cosine decay is stretched from 3 to 6 steps (learning rate at step 3: "
          f"{old:.3g} -> {new:.3g})") in caplog.text


def test_config_changes_classify_fields():
  changes = workdir_lib.config_changes({"seed": 0, "sample": {"every": 5}, "x": 1},
                                       {"seed": 1, "sample": {"every": 6}})
  assert changes == {"seed": (0, 1), "sample.every": (5, 6), "x": (1, None)}
  assert [k for k in changes if workdir_lib.is_harmless(k)] == ["sample.every"]


@pytest.mark.parametrize("key, value", [("seed", 1), ("loss.num_lookahead", 2)])
def test_resume_without_config_json_checks_the_config_stored_with_the_checkpoint(
    trained, key, value):
  (trained / "config.json").unlink()
  config = smoke_config(**{**OVERRIDES, "num_steps": 6, key: value})
  with pytest.raises(cli.UserError, match=f"{key}: .* -> {value!r}.*stored with checkpoint "
                     f"{trained / 'checkpoints' / '3'}.*--allow_config_change"):
    train_loop.run(config, str(trained))
  assert not (trained / "config.json").exists()


def test_resume_without_config_json_warns_of_a_harmless_change(trained, caplog):
  (trained / "config.json").unlink()
  state = train_loop.run(smoke_config(**{**OVERRIDES, "num_steps": 6}), str(trained))
  assert int(state.step) == 6
  assert "num_steps: 3 -> 6" in caplog.text and "the cosine decay is stretched" in caplog.text
  assert json.loads((trained / "config.json").read_text())["num_steps"] == 6


def test_relaunching_a_finished_run_names_its_newest_samples(trained, capsys):
  assert list((trained / "samples").iterdir())  # the run wrote a PNG at its last step
  train_loop.run(smoke_config(**OVERRIDES), str(trained))  # nothing left to do
  out = capsys.readouterr().out
  assert "None" not in out and f"samples:     {trained / 'samples'}" in out, out
