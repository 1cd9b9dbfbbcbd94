"""Rate and ETA of long loops (train steps, encoder steps, Inception images), one format.

Every loop reports progress the same way: `R unit/s, ETA H:MM:SS` (after `done/total unit` or
the loop's own step counter), with the rate measured since the previous report.
"""

import time


def format_eta(seconds: float) -> str:
  """Seconds as H:MM:SS (negative counts as 0)."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """Counts work done towards `total` (None: open-ended) and reports rate and ETA."""

  def __init__(self, total: int | None, done: int = 0, unit: str = "steps"):
    self.total, self.unit = total, unit
    self.rate = 0.0
    self._done, self._time = done, time.perf_counter()

  def seconds_since_update(self) -> float:
    return time.perf_counter() - self._time

  def update(self, done: int) -> float:
    """Records that `done` units are finished; the rate since the previous update."""
    now = time.perf_counter()
    self.rate = (done - self._done) / max(now - self._time, 1e-9)
    self._done, self._time = done, now
    return self.rate

  def eta_seconds(self) -> float | None:
    """Seconds left at the last rate; None without a total or a rate."""
    if self.total is None or self.rate <= 0:
      return None
    return (self.total - self._done) / self.rate

  def rate_and_eta(self) -> str:
    """`R unit/s, ETA H:MM:SS` (no ETA without a total) as of the last update."""
    eta = self.eta_seconds()
    eta_text = "" if eta is None else f", ETA {format_eta(eta)}"
    return f"{self.rate:.1f} {self.unit}/s{eta_text}"

  def describe(self) -> str:
    """`done/total unit, R unit/s, ETA H:MM:SS` as of the last update."""
    of = f"/{self.total}" if self.total is not None else ""
    return f"{self._done}{of} {self.unit}, {self.rate_and_eta()}"
