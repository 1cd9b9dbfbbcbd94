"""Fashion-MNIST ConvEncoder trained as a masked autoencoder (configs/encoder_fashion_mnist.py
with objective "mae"): 4x4 patches, 60% masked, decoded from the last stage only.

python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist_mae.py --workdir=DIR
"""

import ml_collections

from configs import encoder_fashion_mnist


def get_config() -> ml_collections.ConfigDict:
  config = encoder_fashion_mnist.get_config()
  config.objective = "mae"
  config.mae = ml_collections.ConfigDict(dict(patch_size=4, mask_ratio=0.6))
  config.learning_rate = 2e-3
  return config
