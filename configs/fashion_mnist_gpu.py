"""configs/fashion_mnist.py sized for one GPU: a wider UNet, a larger encoder budget, EMA 0.999.

  python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist.py \
      --workdir=ENC --config.num_steps=3000 --config.data.batch_size=256
  python -m lookahead_drift.train --config=configs/fashion_mnist_gpu.py --workdir=RUN \
      --config.encoder.checkpoint=ENC/encoder
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.num_steps = 100_000  # stopped by time (SIGTERM saves); the constant schedule allows it
  config.tensorboard = False
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 500
  config.model.base_channels = 64
  config.checkpoint.every = 500
  config.sample.every = 2000
  return config
