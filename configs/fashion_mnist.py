"""Fashion-MNIST 28x28: UNet generator, drift in the feature groups of a trained ConvEncoder.

Train the encoder first (configs/encoder_fashion_mnist.py), then:

  python -m lookahead_drift.train --config=configs/fashion_mnist.py --workdir=/tmp/fmnist \\
      --config.encoder.checkpoint=/tmp/fmnist_encoder/encoder
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 20_000
  config.log_every = 100
  config.ema_decay = 0.999
  config.tensorboard = True

  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"
  config.data.data_dir = "/usr/share/datasets/fashion-mnist"
  config.data.source = "files"
  config.data.split = "train"
  config.data.batch_size = 256  # global; also the number of positives per step
  config.data.random_flip = False

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.image_shape = (28, 28, 1)
  config.model.noise_channels = 1
  config.model.base_channels = 32
  config.model.channel_mults = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attention = True
  config.model.output_activation = "tanh"
  config.model.dtype = "float32"  # "bfloat16": bf16 compute, f32 params

  config.encoder = ml_collections.ConfigDict()
  config.encoder.kind = "conv"
  config.encoder.checkpoint = config_dict.placeholder(str)  # DIR/encoder from train_encoder
  config.encoder.dtype = "float32"
  config.encoder.patch_sizes = (2, 4)
  config.encoder.include_locations = True
  config.encoder.include_input_rms = True
  config.encoder.include_raw = False

  # Every field of drift.LossConfig: the eq. 6 loss of the drifting paper's defaults
  # (bidirectional, floor 1e-6, temperatures 0.02/0.05/0.2).
  config.loss = common.loss_config()

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 2e-4
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 1000
  config.optimizer.weight_decay = 0.01
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.grad_clip = 2.0

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_model = 1
  config.mesh.shard_params = False

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 1000
  config.checkpoint.keep = 3
  config.checkpoint.async_save = True

  config.sample = ml_collections.ConfigDict()
  config.sample.every = 1000
  config.sample.num_png = 64
  config.sample.batch_size = 500

  # `python -m lookahead_drift.evaluate`: FID/KID of one-step samples against these statistics
  # (from `python -m lookahead_drift.fid --ref ...`) or this image set.
  config.eval = ml_collections.ConfigDict()
  config.eval.reference = config_dict.placeholder(str)
  config.eval.num_samples = 50_000
  return config
