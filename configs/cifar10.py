"""CIFAR-10 32x32: UNet generator, drift in the feature groups of a trained ConvEncoder.

Needs the original CIFAR-10 archive (or a prepared tfds `cifar10`) and a ConvEncoder trained
on 32x32x3 images with lookahead_drift.train_encoder. Then:

  python -m lookahead_drift.train --config=configs/cifar10.py --workdir=/tmp/cifar10 \\
      --config.data.data_dir=/path/to/cifar-10-python.tar.gz \
      --config.encoder.checkpoint=/path/to/encoder
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 50_000
  config.log_every = 100
  config.ema_decay = 0.999
  config.tensorboard = True

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"
  config.data.data_dir = config_dict.placeholder(str)  # archive or extracted folder
  config.data.source = "files"
  config.data.split = "train"
  config.data.batch_size = 384  # global (the lookahead paper's CIFAR-10 batch)
  config.data.random_flip = True

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.image_shape = (32, 32, 3)
  config.model.noise_channels = 3
  config.model.base_channels = 64
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

  # Exactly the fields of drift.LossConfig.
  config.loss = ml_collections.ConfigDict()
  config.loss.temperatures = (0.02, 0.05, 0.2)
  config.loss.kernel = "laplace"
  config.loss.normalization = "bidirectional"
  config.loss.floor = 1e-6
  config.loss.num_lookahead = 0
  config.loss.step_size = 1.0
  config.loss.term_weights = config_dict.placeholder(tuple)
  config.loss.term_scaling = "none"
  config.loss.feature_normalization = True
  config.loss.drift_normalization = True

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
  config.sample.num_png = 100
  config.sample.batch_size = 500
  return config
