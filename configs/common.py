"""Pieces shared by the configs of every data family."""

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
  return loss


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
