"""Metric and image logging: JSON lines always, TensorBoard event files too.

The JSON lines are strict JSON: a non-finite value (NaN, inf) is written as null.
TensorBoard files are written by `clu.metric_writers` where TensorFlow is installed (clu
imports it at import time, so it is imported lazily), else by tensorboardX, which writes the
same event files without TensorFlow.
"""

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


class TensorBoardXWriter:
  """The part of clu's SummaryWriter used here, over tensorboardX (no TensorFlow needed).

  A scalar is written under its name; each entry of a vector under NAME/i.
  """

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for name, value in scalars.items():
      try:
        values = np.asarray(value, np.float64)  # None (a non-finite value) -> NaN
      except (TypeError, ValueError):
        continue  # not a number: the JSON lines have it
      if values.ndim == 0:
        self._writer.add_scalar(name, float(values), step)
      else:
        for i, v in enumerate(values.ravel()):
          self._writer.add_scalar(f"{name}/{i}", float(v), step)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """`images`: name -> uint8 [N, H, W, C], tiled into one image per name."""
    for name, batch in images.items():
      self._writer.add_images(name, np.asarray(batch), step, dataformats="NHWC")

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _tensorboard_writer(logdir: str) -> Any | None:
  """clu's TensorFlow writer where TensorFlow imports, else tensorboardX's; None if neither."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    return metric_writers.SummaryWriter(logdir)
  except ImportError as clu_error:
    try:
      return TensorBoardXWriter(logdir)
    except ImportError as e:
      logging.info("TensorBoard logging off (needs tensorboardX, or clu with TensorFlow: %s; "
                   "%s).", e, clu_error)
      return None


def to_python(value: Any) -> Any:
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
    values = {k: to_python(v) for k, v in scalars.items()}
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
