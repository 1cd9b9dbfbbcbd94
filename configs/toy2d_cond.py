"""configs/toy2d.py, class-conditional with guidance: a label per mode (eight_gaussians) or
filled square (checkerboard). Per step all 8 labels, each with batch_size / 8 positives,
as many generated samples and half as many unconditional negatives; α log-uniform on [1, 3].

  python -m lookahead_drift.train --config=configs/toy2d_cond.py --workdir=/tmp/toy_cond
"""

from configs import common
from configs import toy2d


def get_config(arg: str | None = None):
  config = toy2d.get_config(arg)
  per_label = config.data.batch_size // 8
  return common.make_conditional(config, labels_per_step=8, gen_per_label=per_label,
                                 neg_per_label=max(1, per_label // 2), cfg_max=3.0,
                                 no_cfg_fraction=0.1)
