"""Pieces shared by the configs of every data family."""

import dataclasses

import ml_collections
from ml_collections import config_dict

from lookahead_drift import drift


def loss_config(**overrides) -> ml_collections.ConfigDict:
  """config.loss: every field of drift.LossConfig at its default, then `overrides`."""
  fields = dataclasses.asdict(drift.LossConfig(**overrides))
  loss = ml_collections.ConfigDict({k: v for k, v in fields.items() if v is not None})
  if fields["term_weights"] is None:  # settable from the command line as a tuple
    loss.term_weights = config_dict.placeholder(tuple)
  return loss
