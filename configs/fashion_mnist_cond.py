"""configs/fashion_mnist.py, class-conditional with classifier-free guidance (issue 14).

Per step every class: 32 positives, 16 generated samples and 16 unconditional negatives
per class, α log-uniform on [1, 4] (a tenth at α = 1). Sample any class at any α:

  python -m lookahead_drift.train --config=configs/fashion_mnist_cond.py --workdir=RUN \\
      --config.encoder.checkpoint=ENC/encoder
  python -m lookahead_drift.sample --workdir=RUN --labels=0,3,7 --cfg_scale=2
"""

from configs import common
from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.data.batch_size = 320  # positives per step: 32 for each of the 10 classes
  return common.make_conditional(config, labels_per_step=10, gen_per_label=16,
                                 neg_per_label=16, no_cfg_fraction=0.1)
