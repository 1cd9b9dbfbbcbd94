"""Every binary reports bad input in one or two lines with exit code 2, and creates nothing."""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_helpers import smoke_config, subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

from lookahead_drift import cli, fid_kid, train_loop  # pylint: disable=g-import-not-at-top,wrong-import-position

TOY = ["--config=configs/toy2d.py:smoke", "--config.tensorboard=False"]
LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # absl log lines (progress, warnings)


def run(args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=180)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


@pytest.fixture(scope="module", name="files")
def fixture_files(tmp_path_factory) -> dict[str, pathlib.Path]:
  root = tmp_path_factory.mktemp("inputs")
  (root / "not_zip.npz").write_text("hello")
  np.save(root / "array.npy", np.zeros((3, 8, 8, 3), np.uint8))
  (root / "a_file").write_text("x")
  (root / "syntax.py").write_text("def get_config(:\n  pass\n")
  (root / "name_error.py").write_text("def get_config():\n  return undefined_name\n")
  np.savez(root / "images.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
  np.savez(root / "stats6.npz", mu=np.zeros(6), sigma=np.eye(6), count=10)
  np.savez(root / "minus_identity.npz", mu=np.zeros(6), sigma=-np.eye(6), count=10)
  return {"root": root, "not_zip": root / "not_zip.npz", "npy": root / "array.npy",
          "file": root / "a_file"}


CASES = {
    "train_missing_config": (["-m", "lookahead_drift.train", "--config=configs/nope.py",
                              "--workdir={root}/w1"], "configs/nope.py", "{root}/w1"),
    "train_bad_kernel": (["-m", "lookahead_drift.train", *TOY, "--workdir={root}/w2",
                          "--config.loss.kernel=cosine"], "kernel must be one of", "{root}/w2"),
    "train_bad_data_name": (["-m", "lookahead_drift.train", *TOY, "--workdir={root}/w3",
                             "--config.data.name=moons"], "data_config.name='moons'",
                            "{root}/w3"),
    "train_unwritable_workdir": (["-m", "lookahead_drift.train", *TOY,
                                  "--workdir={root}/a_file/w4"], "cannot create --workdir",
                                 None),
    "train_hidden_not_ints": (["-m", "lookahead_drift.train", *TOY, "--workdir={root}/w5",
                               "--config.model.hidden=abc"], "model_config.hidden",
                              "{root}/w5"),
    "train_negative_steps": (["-m", "lookahead_drift.train", *TOY, "--workdir={root}/w6",
                              "--config.num_steps=-5"], "config.num_steps=-5", "{root}/w6"),
    "train_empty_temperatures": (["-m", "lookahead_drift.train", *TOY, "--workdir={root}/w12",
                                  "--config.loss.temperatures="],
                                 "config.loss.temperatures=('',): expected a non-empty list",
                                 "{root}/w12"),
    "train_nan_learning_rate": (["-m", "lookahead_drift.train", *TOY, "--workdir={root}/w13",
                                 "--config.optimizer.learning_rate=nan"],
                                "config.optimizer.learning_rate=nan: expected a finite number",
                                "{root}/w13"),
    "train_config_syntax_error": (["-m", "lookahead_drift.train", "--config={root}/syntax.py",
                                   "--workdir={root}/w15"], "--config={root}/syntax.py: the "
                                  "config file failed: SyntaxError: ", "{root}/w15"),
    "train_config_name_error": (["-m", "lookahead_drift.train",
                                 "--config={root}/name_error.py", "--workdir={root}/w16"],
                                "--config={root}/name_error.py: the config file failed: "
                                "NameError: name 'undefined_name' is not defined "
                                "({root}/name_error.py, line 2)", "{root}/w16"),
    "train_config_bad_argument": (["-m", "lookahead_drift.train",
                                   "--config=configs/toy2d.py:bogus", "--workdir={root}/w17"],
                                  "--config=configs/toy2d.py:bogus: the config file failed: "
                                  "ValueError: configs/toy2d.py: unknown argument 'bogus'",
                                  "{root}/w17"),
    "train_misspelled_key": (["-m", "lookahead_drift.train", *TOY, "--workdir={root}/w18",
                              "--config.data.batchsize=3"],
                             "--config.data.batchsize: the config has no field 'batchsize'. "
                             'Did you mean "batch_size" instead of "batchsize"?', "{root}/w18"),
    "train_encoder_missing_config": (["-m", "lookahead_drift.train_encoder",
                                      "--config=configs/nope.py", "--workdir={root}/w7"],
                                     "configs/nope.py", "{root}/w7"),
    "sample_zero_samples": (["-m", "lookahead_drift.sample", *TOY[:1], "--workdir={root}/w8",
                             "--num_samples=0"], "--num_samples=0", "{root}/w8"),
    "sample_out_not_npz": (["-m", "lookahead_drift.sample", "--workdir={root}/w14",
                            "--out={root}/s.txt"], "--out={root}/s.txt: expected a path "
                           "ending in .npz", "{root}/s.txt"),
    "sample_misspelled_workdir": (["-m", "lookahead_drift.sample", *TOY[:1],
                                   "--workdir={root}/w9"], "does not exist", "{root}/w9"),
    "evaluate_misspelled_workdir": (["-m", "lookahead_drift.evaluate",
                                     "--config=configs/fashion_mnist.py",
                                     "--workdir={root}/w10", "--reference={root}/x.npz",
                                     "--watch"], "does not exist", "{root}/w10"),
    "fid_not_zip": (["-m", "lookahead_drift.fid", "{root}/not_zip.npz", "{root}/not_zip.npz"],
                    "{root}/not_zip.npz is not an .npz", None),
    "fid_npy": (["-m", "lookahead_drift.fid", "{root}/array.npy", "{root}/array.npy"],
                "{root}/array.npy is a single .npy array", None),
    "fid_missing": (["-m", "lookahead_drift.fid", "{root}/none.npz", "{root}/array.npy"],
                    "no file at {root}/none.npz", None),
    "fid_stats_dimension": (["-m", "lookahead_drift.fid", "{root}/images.npz",
                             "{root}/stats6.npz"], "{root}/stats6.npz holds 6-dimensional "
                            "statistics, but images give 2048-dimensional", None),
    "fid_stats_not_psd": (["-m", "lookahead_drift.fid", "{root}/minus_identity.npz",
                           "{root}/stats6.npz"], "{root}/minus_identity.npz: sigma is not "
                          "positive semi-definite", None),
    "fid_one_input": (["-m", "lookahead_drift.fid", "{root}/array.npy"], "expected two inputs",
                      None),
    "tool_convert_missing": (["tools/convert_inception.py", "--torchscript={root}/none.pt",
                              "--output={root}/w11.npz"], "no file at {root}/none.pt",
                             "{root}/w11.npz"),
    "tool_benchmark_bad_data": (["tools/benchmark.py", *TOY[:1], "--config.data.name=moons",
                                 "--steps=1"], "data_config.name='moons'", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_short_error_with_exit_2(files, name):
  args, expected, not_created = CASES[name]
  fill = lambda s: s.format(root=files["root"])
  proc = run([fill(a) for a in args])
  lines = error_lines(proc.stderr)
  assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-3000:]
  assert 1 <= len(lines) <= 2 and fill(expected) in lines[0], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  if not_created:
    assert not pathlib.Path(fill(not_created)).exists()


def test_verbose_shows_the_traceback(tmp_path):
  proc = run(["-m", "lookahead_drift.train", *TOY, f"--workdir={tmp_path}/w",
              "--config.num_steps=-5", "--verbose"])
  assert proc.returncode == cli.EXIT_USER_ERROR
  assert "Traceback" in proc.stderr and "config.num_steps=-5" in error_lines(proc.stderr)[-1]


def test_verbose_shows_the_traceback_of_a_config_file_error(files):
  proc = run(["-m", "lookahead_drift.train", f"--config={files['root']}/name_error.py",
              f"--workdir={files['root']}/w19", "--verbose"])
  assert proc.returncode == cli.EXIT_USER_ERROR
  assert "Traceback" in proc.stderr and "return undefined_name" in proc.stderr
  assert "NameError: name 'undefined_name'" in error_lines(proc.stderr)[-2]


def test_corrupt_checkpoint_is_one_line_without_event_loop_noise(tmp_path):
  workdir = tmp_path / "run"
  train_loop.run(smoke_config(num_steps=3, **{"sample.every": 1000}), str(workdir))
  for p in (workdir / "checkpoints" / "3" / "state").rglob("*"):
    if p.is_file() and p.parent.name == "d":
      p.write_bytes(b"\x00garbage" * 100)
  proc = run(["-m", "lookahead_drift.train", *TOY, f"--workdir={workdir}",
              "--config.num_steps=6", "--config.sample.every=1000"])
  lines = error_lines(proc.stderr)
  assert proc.returncode == cli.EXIT_USER_ERROR, proc.stderr[-3000:]
  assert len(lines) <= 2 and str(workdir / "checkpoints" / "3") in lines[0], proc.stderr[-3000:]
  assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr


def test_fid_warns_on_few_samples_and_grey_vs_rgb():
  grey, rgb = np.zeros((2, 8, 8, 1), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)
  warnings = fid_kid.input_warnings(["a.npz", "b.npz"], [("images", grey), ("images", rgb)], [2, 2])
  assert len(warnings) == 3
  assert "a.npz has only 2 samples" in warnings[0] and "1 channel(s)" in warnings[2]
  big = np.zeros((1, 8, 8, 3), np.uint8)
  assert not fid_kid.input_warnings(["a", "b"], [("images", big), ("stats", None)], [5000, 5000])
