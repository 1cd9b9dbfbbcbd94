"""Fashion-MNIST 28x28: UNet generator, drift in the feature groups of a trained ConvEncoder.

Train the encoder first (configs/encoder_fashion_mnist.py), then:

  python -m lookahead_drift.train --config=configs/fashion_mnist.py --workdir=/tmp/fmnist \\
      --config.encoder.checkpoint=/tmp/fmnist_encoder/encoder
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.num_steps = 20_000

  config.data.update(dict(
      name="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist", source="files",
      split="train", random_flip=False))  # batch_size 256: global, also the positives per step

  config.model.update(dict(
      name="unet", image_shape=(28, 28, 1), noise_channels=1, base_channels=32,
      channel_mults=(1, 2, 2), num_res_blocks=1, attention=True, output_activation="tanh"))

  config.encoder = ml_collections.ConfigDict(dict(
      kind="conv", checkpoint=config_dict.placeholder(str),  # DIR/encoder from train_encoder
      dtype="float32", patch_sizes=(2, 4), include_locations=True, include_input_rms=True,
      include_raw=False))

  # `python -m lookahead_drift.evaluate`: FID/KID of one-step samples against these statistics
  # (from `python -m lookahead_drift.fid --ref ...`) or this image set.
  config.eval = ml_collections.ConfigDict(dict(
      reference=config_dict.placeholder(str), num_samples=50_000))
  return config
