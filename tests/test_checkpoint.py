"""Corrupt or incompatible checkpoints fail loudly and stay untouched; SIGTERM saves and exits."""

import dataclasses
import hashlib
import json
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import restore_train_state, smoke_config, subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

from lookahead_drift import checkpoint, cli, metrics_io, train_loop  # pylint: disable=g-import-not-at-top,wrong-import-position

OVERRIDES = {"num_steps": 3, "sample.every": 1000}


def _digest(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("ckpt") / "run"
  train_loop.run(smoke_config(**OVERRIDES), str(workdir))
  assert (workdir / "checkpoints" / "3").is_dir()
  return workdir


@flax.struct.dataclass
class _State:
  """A small train state with TrainState's fields (and the leaf kinds orbax stores)."""
  step: jax.Array
  params: dict
  ema_params: dict
  opt_state: tuple
  rng: jax.Array


@flax.struct.dataclass
class _Reordered:
  """The same fields in another order (their leaves' positions all change)."""
  rng: jax.Array
  opt_state: tuple
  ema_params: dict
  params: dict
  step: jax.Array


def _saved_small_state(directory: pathlib.Path) -> tuple[_State, pathlib.Path]:
  """A _State saved at step 5 in `directory`, and its integrity record's path."""
  params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
  state = _State(step=jnp.int32(5), params=params,
                 ema_params=jax.tree.map(lambda x: x / 2, params),
                 opt_state=(jnp.int32(1), {"mu": jax.tree.map(jnp.zeros_like, params)}),
                 rng=jax.random.PRNGKey(0))
  manager = checkpoint.create_manager(str(directory), max_to_keep=None, save_every=1,
                                      async_save=False)
  checkpoint.save(manager, 5, state, force=True)
  manager.close()
  return state, directory / "5" / "integrity" / "metadata"


def _reordered(state: _State) -> _Reordered:
  return _Reordered(**{f.name: getattr(state, f.name) for f in dataclasses.fields(_State)})


def test_checksums_follow_leaf_paths_not_field_order(tmp_path):
  state, record_path = _saved_small_state(tmp_path)
  restored = checkpoint.restore(str(tmp_path), _reordered(state))
  assert restored.step == 5 and isinstance(restored.state, _Reordered)
  jax.tree.map(np.testing.assert_array_equal, restored.state.opt_state, state.opt_state)
  raw = checkpoint.restore(str(tmp_path), items=("ema_params", "step"))
  assert sorted(raw.state) == ["ema_params", "step"]
  jax.tree.map(np.testing.assert_array_equal, raw.state["ema_params"], state.ema_params)

  record = json.loads(record_path.read_text())
  record["checksums"]["ema_params/dense/kernel"] ^= 1  # as if that array had changed
  record_path.write_text(json.dumps(record))
  for target, items in ((_reordered(state), None), (state, None), (None, ("ema_params",))):
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=r"fails its checksum \(1 of .*ema_params/dense/kernel"):
      checkpoint.restore(str(tmp_path), target, items=items)
  assert checkpoint.restore(str(tmp_path), items=("step", "params")).step == 5


def test_checksums_by_position_of_older_checkpoints_still_verify(tmp_path):
  state, record_path = _saved_small_state(tmp_path)
  sums, _ = checkpoint.fingerprint(state)
  record = json.loads(record_path.read_text())
  # Older checkpoints listed the checksums in the leaf order of TrainState's fields then,
  # which _State keeps.
  record["checksums"] = [sums[path] for path in checkpoint.leaf_paths(state)]
  record_path.write_text(json.dumps(record))
  assert checkpoint.restore(str(tmp_path), _reordered(state)).step == 5
  assert checkpoint.restore(str(tmp_path), items=("step", "params", "ema_params")).step == 5
  record["checksums"][-1] ^= 1  # the RNG
  record_path.write_text(json.dumps(record))
  with pytest.raises(checkpoint.CorruptCheckpointError, match="fails its checksum.*rng"):
    checkpoint.restore(str(tmp_path), _reordered(state))


@flax.struct.dataclass
class _WithLossState:
  """_State and TrainState's later field loss_state (drift.init_loss_state)."""
  step: jax.Array
  params: dict
  ema_params: dict
  opt_state: tuple
  rng: jax.Array
  loss_state: dict = flax.struct.field(default_factory=dict)


def test_checkpoints_before_loss_state_restore_into_an_empty_one(tmp_path):
  """A checkpoint written before TrainState.loss_state existed restores into a state whose
  loss_state is empty (every config without running norms); one that needs its arrays is
  refused by name. Inference reads its items as before."""
  state, _ = _saved_small_state(tmp_path)
  fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(_State)}
  restored = checkpoint.restore(str(tmp_path), _WithLossState(**fields))
  assert restored.step == 5 and restored.state.loss_state == {}
  jax.tree.map(np.testing.assert_array_equal, restored.state.params, state.params)
  needs = _WithLossState(**fields, loss_state={"term_norms": {"x": jnp.zeros((2, 3))}})
  with pytest.raises(checkpoint.CheckpointError, match="missing.*loss_state/term_norms/x"):
    checkpoint.restore(str(tmp_path), needs)
  assert checkpoint.restore(str(tmp_path), items=("step", "params", "ema_params")).step == 5


def _corrupt_data(step_dir: pathlib.Path) -> None:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage" * (p.stat().st_size // 8 + 1))


def _corrupt_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / "state" / "_METADATA").write_text("{not json")


def _delete_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / "state" / "_METADATA").unlink()


def _corrupt_silently(step_dir: pathlib.Path) -> None:
  """Overwrites bytes inside the largest data file: orbax still reads it, the values change."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  largest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[100:116] = b"\x7f" * 16
  largest.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt, message", [
    (_corrupt_data, "Cannot"), (_corrupt_metadata, "Cannot read checkpoint metadata"),
    (_delete_metadata, "is incomplete"), (_corrupt_silently, "fails its checksum")])
def test_corrupt_checkpoint_names_path_and_is_left_intact(trained, tmp_path, corrupt, message):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  step_dir = workdir / "checkpoints" / "3"
  corrupt(step_dir)
  before = _digest(workdir / "checkpoints")
  with pytest.raises(checkpoint.CorruptCheckpointError, match=f"{step_dir}.*{message}|"
                     f"{message}.*{step_dir}"):
    train_loop.run(smoke_config(**{**OVERRIDES, "num_steps": 6}), str(workdir))
  assert _digest(workdir / "checkpoints") == before


def test_corrupt_latest_checkpoint_falls_back_to_previous_and_is_kept(tmp_path):
  config = smoke_config(**{"num_steps": 9, "sample.every": 1000, "checkpoint.keep": 3})
  full = jax.device_get(train_loop.run(config, str(tmp_path / "full")))
  workdir = tmp_path / "run"
  train_loop.run(smoke_config(**{**OVERRIDES, "num_steps": 6}), str(workdir))
  _corrupt_silently(workdir / "checkpoints" / "6")
  bad = _digest(workdir / "checkpoints" / "6")
  with pytest.raises(checkpoint.CorruptCheckpointError, match="fails its checksum"):
    restore_train_state(config, str(workdir))
  resumed = jax.device_get(train_loop.run(config, str(workdir)))  # from step 3
  assert _digest(workdir / "corrupt_checkpoints" / "6") == bad
  jax.tree.map(np.testing.assert_array_equal, resumed.params, full.params)
  assert _digest(workdir / "checkpoints" / "9")


def test_incompatible_checkpoint_names_path_and_is_left_intact(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  before = _digest(workdir / "checkpoints")
  config = smoke_config(**{**OVERRIDES, "num_steps": 6})
  config.model.hidden = (16, 16)
  with pytest.raises(cli.UserError, match=r"model.hidden: \[32, 32\] -> \[16, 16\]"):
    train_loop.run(config, str(workdir))
  with pytest.raises(checkpoint.CheckpointError,
                     match=f"{workdir / 'checkpoints' / '3'}.*does not match"):
    train_loop.run(config, str(workdir), allow_config_change=True)
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

  state = train_loop.run(smoke_config(num_steps=last_logged + 2, log_every=1),
                                   str(workdir))
  assert int(jax.device_get(state.step)) == last_logged + 2
  steps = [r["step"] for r in metrics_io.read_jsonl(str(metrics))]
  assert steps[-2:] == [last_logged + 1, last_logged + 2]


def _last_logged_step(path: pathlib.Path) -> int:
  """The step of the last complete record (0 if none), tolerating a torn last line."""
  if not path.exists():
    return 0
  steps = [0]
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)["step"])
    except ValueError:
      pass
  return steps[-1]


def test_random_sigkills_end_like_an_uninterrupted_run(tmp_path):
  """SIGKILLs at random steps, mostly during an async save (one per step), then a relaunch:
  the final state and metrics.jsonl equal those of a run that was never stopped."""
  flags = {"num_steps": 60, "log_every": 2, "checkpoint.every": 1, "checkpoint.keep": 2,
           "sample.every": 1000}
  full = jax.device_get(train_loop.run(  # checkpoint cadence changes nothing else
      smoke_config(**{**flags, "checkpoint.every": 1000}), str(tmp_path / "full")))
  # Relaunches reuse compiled programs, so that the test spends its time training.
  env = subprocess_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  workdir = tmp_path / "run"
  metrics = workdir / "metrics.jsonl"
  command = [sys.executable, "-m", "lookahead_drift.train", "--config=configs/toy2d.py:smoke",
             f"--workdir={workdir}", "--config.tensorboard=False"]
  command += [f"--config.{k}={v}" for k, v in flags.items()]
  rng = random.Random(0)
  kills, target = 0, 0
  for _ in range(4):
    target = _last_logged_step(metrics) + rng.randint(3, 12)
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and _last_logged_step(metrics) < target and time.time() < deadline:
      time.sleep(0.005)
    if proc.poll() is None:
      proc.kill()
      kills += 1
    proc.wait()
  assert kills >= 3
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]

  resumed = jax.device_get(restore_train_state(smoke_config(**flags), str(workdir)))
  for name in ("step", "params", "ema_params", "opt_state", "rng"):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, name), getattr(full, name))
  records = [{k: v for k, v in r.items() if k != "steps_per_sec"}
             for r in metrics_io.read_jsonl(str(metrics))]
  expected = [{k: v for k, v in r.items() if k != "steps_per_sec"}
              for r in metrics_io.read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))]
  assert records == expected


def test_every_checkpoint_damaged_names_them_all_and_advises_no_previous_one(tmp_path):
  workdir = tmp_path / "run"
  train_loop.run(smoke_config(**{**OVERRIDES, "num_steps": 6}), str(workdir))
  for step in (3, 6):
    _delete_metadata(workdir / "checkpoints" / str(step))
  before = _digest(workdir / "checkpoints")
  with pytest.raises(checkpoint.CorruptCheckpointError) as error:
    train_loop.run(smoke_config(**{**OVERRIDES, "num_steps": 9}), str(workdir))
  message = str(error.value)
  assert "previous one" not in message, message
  assert "steps 6, 3" in message and "left untouched" in message, message
  assert _digest(workdir / "checkpoints") == before


def test_a_moved_corrupt_checkpoint_is_reported_as_moved_only(tmp_path, caplog):
  workdir = tmp_path / "run"
  train_loop.run(smoke_config(**{**OVERRIDES, "num_steps": 6}), str(workdir))
  _delete_metadata(workdir / "checkpoints" / "6")
  train_loop.run(smoke_config(**{**OVERRIDES, "num_steps": 6}), str(workdir))
  assert f"Moved it to {workdir / 'corrupt_checkpoints' / '6'}" in caplog.text
  assert "left untouched" not in caplog.text and "previous one" not in caplog.text


_FAILING_SAVE = """
import errno, runpy, sys
import orbax.checkpoint as ocp
calls = []
original = ocp.JsonCheckpointHandler._save_fn

def save_fn(self, item, directory):  # the JSON item of the 2nd save: a full disk
  calls.append(directory)
  if len(calls) == 2:
    async def fail():
      raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
    return fail()
  return original(self, item, directory)

ocp.JsonCheckpointHandler._save_fn = save_fn
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_module("lookahead_drift.train", run_name="__main__")
"""


def test_failed_save_stops_at_once_in_one_line_with_exit_5(tmp_path):
  """A save that fails (here an async write raising ENOSPC, as on a full disk) stops the run
  at once: one line naming the checkpoint and the error, exit 5, the previous checkpoint as
  it was, no temporary directory left."""
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-c", _FAILING_SAVE, "--config=configs/toy2d.py:smoke",
       f"--workdir={workdir}", "--config.num_steps=60", "--config.log_every=1",
       "--config.checkpoint.every=3", "--config.sample.every=1000",
       "--config.tensorboard=False"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
  lines = [line for line in proc.stderr.splitlines()
           if line.strip() and not re.match(r"^[IWEF]\d{4} ", line)]
  assert proc.returncode == cli.EXIT_IO_ERROR, proc.stderr[-3000:]
  ckpt = workdir / "checkpoints"
  assert lines == [f"train.py: cannot write checkpoint {ckpt / '6'}: No space left on device "
                   f"[Errno 28]. Stopped; the last good checkpoint is {ckpt / '3'}. Fix the "
                   "cause (e.g. free disk space) and relaunch the same command to continue."
                   ], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert sorted(p.name for p in ckpt.iterdir()) == ["3"]  # no *.orbax-checkpoint-tmp*
  assert metrics_io.read_jsonl(str(workdir / "metrics.jsonl"))[-1]["step"] < 12  # at once
  # The previous checkpoint is whole: a relaunch resumes from it and finishes.
  state = train_loop.run(smoke_config(**{"num_steps": 6, "log_every": 1,
                                         "checkpoint.every": 3, "sample.every": 1000}),
                         str(workdir))
  assert int(jax.device_get(state.step)) == 6
