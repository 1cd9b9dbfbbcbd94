"""configs/fashion_mnist.py sized for a 2-core CPU: the recipe of issue 21.

The U-Net dominates the CPU step, so it is 16 channels wide without attention. The recipe
study (experiments/fashion_mnist/recipe/README.md) kept the cosine schedule and all three
temperatures, and drifts in the features of the stronger encoder (91.3 % test accuracy):

  python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist_strong.py \\
      --workdir=ENC
  python -m lookahead_drift.train --config=configs/fashion_mnist_cpu.py --workdir=RUN \\
      --config.encoder.checkpoint=ENC/encoder

3,000 steps took 96 min on one core of this project's CPU (the encoder 55 min more).
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.num_steps = 3000
  config.data.batch_size = 64
  config.model.update(dict(base_channels=16, attention=False))
  config.optimizer.update(dict(learning_rate=1e-3, warmup_steps=200, schedule="cosine",
                               end_value=1e-4))
  config.checkpoint.every = 250
  config.sample.every = 1000
  return config
