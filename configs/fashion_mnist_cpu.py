"""configs/fashion_mnist.py sized for the 2-hour budget on a 2-core CPU (issue 11).

The U-Net dominates the CPU step, so it is 16 channels wide without attention (0.6 s a step
at batch 64 on 2 cores, against 1.3 s for the default 32-wide U-Net with attention;
experiments/fashion_mnist/README.md). Encoder training included:

  python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist.py --workdir=ENC
  python -m lookahead_drift.train --config=configs/fashion_mnist_cpu.py --workdir=RUN \\
      --config.encoder.checkpoint=ENC/encoder
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.num_steps = 5000
  config.data.batch_size = 64
  config.model.update(dict(base_channels=16, attention=False))
  config.optimizer.update(dict(learning_rate=1e-3, warmup_steps=200, schedule="cosine",
                               end_value=1e-4))
  config.checkpoint.every = 500
  config.sample.every = 1000
  return config
