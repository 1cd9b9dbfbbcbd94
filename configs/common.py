"""The config every data family starts from, and the loss section built from drift.LossConfig.

`base_config()` holds every field a training config has, at values shared by the families;
configs/toy2d.py and configs/fashion_mnist.py override what differs, and their variants
(configs/fashion_mnist_gpu.py, configs/cifar10.py) override those.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from lookahead_drift import drift
from lookahead_drift import input_pipeline


def loss_config(**overrides) -> ml_collections.ConfigDict:
  """config.loss: every field of drift.LossConfig at its default, then `overrides`."""
  fields = dataclasses.asdict(drift.LossConfig(**overrides))
  loss = ml_collections.ConfigDict({k: v for k, v in fields.items() if v is not None})
  if fields["term_weights"] is None:  # settable from the command line as a tuple
    loss.term_weights = config_dict.placeholder(tuple)
  if fields["matmul_precision"] is None:  # ... and as a string
    loss.matmul_precision = config_dict.placeholder(str)
  return loss


def base_config() -> ml_collections.ConfigDict:
  """Every training field; data, model and the sizes are the families' to set."""
  section = ml_collections.ConfigDict
  return section(dict(
      seed=0, num_steps=1000, log_every=100, ema_decay=0.999, tensorboard=True,
      data=section(dict(name="", batch_size=256)),  # global; the positives per step
      gen_batch_size=0,  # generated samples per step (unconditional; 0: data.batch_size)
      generator_chunks=1,  # > 1: the generator's backward pass in groups (less memory)
      model=section(dict(name="", dtype="float32")),  # "bfloat16": bf16 compute, f32 params
      encoder=section(dict(kind="identity")),
      loss=loss_config(),  # the drifting paper's eq. 6 loss at its defaults
      optimizer=section(dict(learning_rate=2e-4, schedule="constant", warmup_steps=1000,
                             weight_decay=0.01, b1=0.9, b2=0.95, grad_clip=2.0)),
      # num_model: devices along the "model" axis; the rest form "data"
      mesh=section(dict(num_model=1, shard_params=False)),
      checkpoint=section(dict(every=1000, keep=3, async_save=True)),
      sample=section(dict(every=1000, num_png=64, batch_size=500)),  # PNG every `every` steps
  ))


def make_conditional(config: ml_collections.ConfigDict, *, labels_per_step: int,
                     gen_per_label: int, neg_per_label: int, cfg_min: float = 1.0,
                     cfg_max: float = 4.0, cfg_power: float = 1.0,
                     no_cfg_fraction: float = 0.0) -> ml_collections.ConfigDict:
  """Turns `config` class-conditional with guidance (lookahead_drift/guidance.py): the
  generator embeds the label and α; config.data.batch_size stays the positives per step
  (batch_size / labels_per_step per label). Defaults: α log-uniform on [1, 4], as the
  official drifting configs."""
  config.model.num_classes = input_pipeline.NUM_CLASSES[config.data.name]
  config.model.alpha_conditioning = True
  config.conditional = ml_collections.ConfigDict(dict(
      labels_per_step=labels_per_step, gen_per_label=gen_per_label,
      neg_per_label=neg_per_label, cfg_min=cfg_min, cfg_max=cfg_max, cfg_power=cfg_power,
      no_cfg_fraction=no_cfg_fraction))
  return config
