"""CIFAR-10 32x32: configs/fashion_mnist.py with CIFAR's data, image shape and sizes.

Needs the original CIFAR-10 archive (or a prepared tfds `cifar10`) and a ConvEncoder trained
on 32x32x3 images with lookahead_drift.train_encoder. Then:

  python -m lookahead_drift.train --config=configs/cifar10.py --workdir=/tmp/cifar10 \\
      --config.data.data_dir=/path/to/cifar-10-python.tar.gz \\
      --config.encoder.checkpoint=/path/to/encoder
"""

from ml_collections import config_dict

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.num_steps = 50_000
  config.data.name = "cifar10"
  config.data.data_dir = config_dict.placeholder(str)  # archive or extracted folder
  config.data.batch_size = 384  # global (the lookahead paper's CIFAR-10 batch)
  config.data.random_flip = True
  config.model.image_shape = (32, 32, 3)
  config.model.noise_channels = 3
  config.model.base_channels = 64
  config.sample.num_png = 100
  return config
