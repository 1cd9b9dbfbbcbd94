"""The one progress helper: windowed rate, ETA and its format."""

from lookahead_drift import progress


def test_format_eta():
  assert progress.format_eta(3725.9) == "1:02:05"
  assert progress.format_eta(-4) == "0:00:00"


def test_rate_is_since_the_previous_update_and_eta_uses_it(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
  meter = progress.Progress(total=1000, done=100, unit="steps")
  assert meter.eta_seconds() is None  # no rate yet
  now[0] = 110.0
  assert meter.update(200) == 10.0  # 100 steps in 10 s
  assert meter.eta_seconds() == 80.0
  assert meter.describe() == "200/1000 steps, 10.0 steps/s, ETA 0:01:20"
  now[0] = 112.0
  assert meter.update(300) == 50.0  # only the last window counts
  assert meter.rate_and_eta() == "50.0 steps/s, ETA 0:00:14"
  open_ended = progress.Progress(total=None, unit="images")
  now[0] = 113.0
  open_ended.update(5)
  assert open_ended.describe() == "5 images, 5.0 images/s"
