"""2-D toy data (eight Gaussians by default), MLP generator, drift on raw coordinates.

  python -m lookahead_drift.train --config=configs/toy2d.py --workdir=/tmp/toy2d
  python -m lookahead_drift.train --config=configs/toy2d.py --workdir=/tmp/toy2d_k1 \
      --config.data.name=checkerboard --config.loss.num_lookahead=1

`--config=configs/toy2d.py:smoke` is a few-step, tiny version for tests and CI.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.base_config()
  config.num_steps = 6000
  config.log_every = 200
  config.ema_decay = 0.99

  config.data.name = "eight_gaussians"  # or "checkerboard", "swiss_roll"
  # global batch (issue 11: 512 for 2000 steps bought less than 256 for 6000)

  config.model.update(dict(
      name="mlp", out_dim=2,
      noise_dim=8,  # issue 11: 2 -> 8 raised recall (eight Gaussians 0.916 -> 0.958)
      hidden=(128, 128, 128, 128),  # issue 11: depth 3 -> 4
      activation="silu"))

  # Mean shift (the lookahead paper's eqs. 2-4): "bidirectional" with floor 1e-6 collapses
  # this 2-D toy to a point (at these temperatures the floored affinities are near uniform,
  # so every sample is pulled to the mean of the positives); with floor 0 it fits about as
  # well as mean shift (experiments/toy2d).
  config.loss = common.loss_config(normalization="mean_shift")

  # Issue 11 (experiments/toy2d/README.md, "What made the toys fit"): learning rate
  # 3e-3 -> 1e-2 was the largest single gain on eight Gaussians (in-3-sigma share
  # 0.71 -> 0.88 with noise_dim 8); cosine decay to end_value, the lr at the last step.
  config.optimizer.update(dict(
      learning_rate=1e-2, schedule="cosine", warmup_steps=100, end_value=1e-3,
      weight_decay=0.0, b2=0.99, grad_clip=1.0))

  config.checkpoint.update(dict(every=500, keep=2))
  config.sample.update(dict(every=500, num_png=2000, batch_size=4096))

  if arg == "smoke":
    config.num_steps = 6
    config.log_every = 2
    config.data.batch_size = 32
    config.model.hidden = (32, 32)
    config.optimizer.warmup_steps = 2
    config.checkpoint.every = 3
    config.sample.every = 6
    config.sample.num_png = 200
  elif arg:
    raise ValueError(f"configs/toy2d.py: unknown argument {arg!r}; expected 'smoke' or none.")
  return config
