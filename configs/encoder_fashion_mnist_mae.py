"""Fashion-MNIST ConvEncoder trained as a masked autoencoder (configs/encoder_fashion_mnist.py
with objective "mae"): 4x4 patches, 60% masked, decoded from the last stage only.

python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist_mae.py --workdir=DIR
"""

import importlib.util
import os

import ml_collections


def _base_config() -> ml_collections.ConfigDict:
  """get_config() of the sibling classifier config (loaded by path, as config_flags does)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "encoder_fashion_mnist.py")
  spec = importlib.util.spec_from_file_location("_encoder_fashion_mnist_base", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  config = _base_config()
  config.objective = "mae"
  config.mae = ml_collections.ConfigDict(dict(patch_size=4, mask_ratio=0.6))
  config.data.random_flip = True
  config.learning_rate = 2e-3
  return config
