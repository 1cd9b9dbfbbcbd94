"""Every module of the package imports, together, in one process."""

import importlib
import pkgutil

import lookahead_drift


def test_all_modules_import_together():
  names = [m.name for m in pkgutil.iter_modules(lookahead_drift.__path__, "lookahead_drift.")]
  assert {"lookahead_drift.drift", "lookahead_drift.train", "lookahead_drift.evaluate"} <= set(names)
  for name in names:  # e.g. two binaries defining --config at import time would clash here
    importlib.import_module(name)
