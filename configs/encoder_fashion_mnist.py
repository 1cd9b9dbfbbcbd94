"""Trains the ConvEncoder used as the drifting-loss feature space on Fashion-MNIST (CPU-sized).

Objective "classifier" (labels); configs/encoder_fashion_mnist_mae.py is the MAE variant.

python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist.py --workdir=DIR
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.objective = "classifier"  # or "mae" (then config.mae: patch_size, mask_ratio)
  config.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist", split="train",
      batch_size=128, random_flip=True, source="files"))
  config.eval_split = "test"
  config.eval_batch_size = 1000
  config.num_classes = 10
  config.encoder = ml_collections.ConfigDict(dict(widths=(32, 64, 128), blocks_per_stage=1))
  config.num_steps = 1500
  config.learning_rate = 3e-3
  config.warmup_steps = 100
  config.weight_decay = 1e-4
  config.log_every = 100
  return config
