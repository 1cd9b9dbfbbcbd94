"""Metric and image logging: JSON lines always, TensorBoard only when TensorFlow imports.

The JSON lines are strict JSON: a non-finite value (NaN, inf) is written as null.
`clu.metric_writers` imports TensorFlow at import time, so it is imported lazily and its
absence only turns TensorBoard off.
"""

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


def _tensorboard_writer(logdir: str) -> Any | None:
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.info("TensorBoard logging off (clu.metric_writers needs TensorFlow: %s).", e)
    return None
  return metric_writers.SummaryWriter(logdir)


def _to_python(value: Any) -> Any:
  """A JSON-able Python value; NaN and infinities become None (null)."""
  value = np.asarray(jax.device_get(value))
  if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
    value = np.where(np.isfinite(value), value, None)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` (and TensorBoard), images to TensorBoard.

  Only process 0 writes; other processes get a writer that does nothing.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True,
               filename: str = "metrics.jsonl", tensorboard_subdir: str = ""):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, filename)
    self._file = None
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(self.path, "a", encoding="utf-8")
      if tensorboard:
        self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard", tensorboard_subdir))

  @property
  def has_tensorboard(self) -> bool:
    return self._tb is not None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.active:
      return
    values = {k: _to_python(v) for k, v in scalars.items()}
    self._file.write(json.dumps({"step": int(step), **values}, allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), {k: float("nan") if v is None else v
                                         for k, v in values.items()})

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """`images`: name -> uint8 [N, H, W, C] (TensorBoard only)."""
    if self.active and self._tb is not None:
      self._tb.write_images(int(step), dict(images))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl file."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _parse(line: str) -> dict[str, Any] | None:
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def truncate_after(path: str, step: int) -> int:
  """Drops the records of `path` past `step` (and torn lines); how many lines were dropped.

  A resumed run calls this with the restored step, so that the records it writes again are
  not repeated. The file is replaced atomically, and only if something is dropped.
  """
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = [line if line.endswith("\n") else line + "\n" for line in lines
          if (r := _parse(line)) is not None and r["step"] <= step]
  if len(kept) != len(lines):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return len(lines) - len(kept)
