"""Class-conditional drifting with classifier-free guidance (drifting.md §4), as the official
drifting code trains: per step a set of labels, each with its own positives, generated
samples and unconditional real negatives weighted by the guidance scale α, which is drawn per
label and fed to the generator so that it can be chosen at sampling time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_drift import input_pipeline


@dataclasses.dataclass(frozen=True)
class Guidance:
  """The conditional-training settings of a config (hashable: a static jit argument).

  Per step: `labels_per_step` distinct classes; per label `pos_per_label` positives,
  `gen_per_label` generated samples and `neg_per_label` unconditional negatives. α is drawn
  per label on [cfg_min, cfg_max] with density ∝ α^(−cfg_power) (1: log-uniform, 0: uniform),
  and set to 1 (no guidance) with probability `no_cfg_fraction`.
  """
  num_classes: int
  labels_per_step: int
  pos_per_label: int
  gen_per_label: int
  neg_per_label: int
  cfg_min: float = 1.0
  cfg_max: float = 4.0
  cfg_power: float = 1.0
  no_cfg_fraction: float = 0.0

  def __post_init__(self):
    if not 1 <= self.labels_per_step <= self.num_classes:
      raise ValueError(f"conditional.labels_per_step={self.labels_per_step}: expected 1.."
                       f"{self.num_classes} (the data set's classes).")
    if self.pos_per_label < 1 or self.gen_per_label < 2 or self.neg_per_label < 0:
      raise ValueError(f"pos_per_label={self.pos_per_label} (>= 1), gen_per_label="
                       f"{self.gen_per_label} (>= 2), neg_per_label={self.neg_per_label} (>= 0)")
    if not 1.0 <= self.cfg_min <= self.cfg_max:
      raise ValueError(f"conditional.cfg_min={self.cfg_min}, cfg_max={self.cfg_max}: expected "
                       "1 <= cfg_min <= cfg_max (α = 1 is no guidance).")
    if self.cfg_max > 1.0 and self.neg_per_label == 0:
      raise ValueError(f"conditional.cfg_max={self.cfg_max} > 1 needs unconditional negatives "
                       "(neg_per_label >= 1): they carry the guidance.")
    if not 0.0 <= self.no_cfg_fraction <= 1.0:
      raise ValueError(f"conditional.no_cfg_fraction={self.no_cfg_fraction}: expected [0, 1].")


def from_config(config: Any) -> Guidance | None:
  """`Guidance` from config.conditional (None: unconditional). The positives per label are
  config.data.batch_size / labels_per_step, so batch_size stays the real samples per step."""
  cond = config.get("conditional")
  if not cond or not cond.get("labels_per_step"):
    return None
  name = config.data.name
  num_classes = input_pipeline.NUM_CLASSES[name]
  model_classes = config.model.get("num_classes", 0)
  if model_classes != num_classes:
    raise ValueError(f"config.model.num_classes={model_classes}: conditional training on "
                     f"{name} needs {num_classes}.")
  if not config.model.get("alpha_conditioning", False):
    raise ValueError("conditional training feeds α to the generator: set "
                     "config.model.alpha_conditioning=True.")
  labels_per_step = int(cond.labels_per_step)
  if config.data.batch_size % labels_per_step:
    raise ValueError(f"config.data.batch_size={config.data.batch_size} (positives per step) "
                     f"must be divisible by conditional.labels_per_step={labels_per_step}.")
  return Guidance(num_classes=num_classes, labels_per_step=labels_per_step,
                  pos_per_label=config.data.batch_size // labels_per_step,
                  gen_per_label=int(cond.gen_per_label), neg_per_label=int(cond.neg_per_label),
                  cfg_min=float(cond.cfg_min), cfg_max=float(cond.cfg_max),
                  cfg_power=float(cond.cfg_power), no_cfg_fraction=float(cond.no_cfg_fraction))


def sample_alpha(rng: jax.Array, n: int, g: Guidance) -> jax.Array:
  """[n] guidance scales: inverse-CDF draws of density ∝ α^(−power) on [cfg_min, cfg_max],
  each replaced by 1 with probability no_cfg_fraction."""
  u_rng, one_rng = jax.random.split(rng)
  u = jax.random.uniform(u_rng, (n,))
  lo, hi, p = g.cfg_min, g.cfg_max, 1.0 - g.cfg_power
  if abs(p) < 1e-6:  # power 1: uniform in log α
    alpha = jnp.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
  else:
    alpha = (lo**p + u * (hi**p - lo**p)) ** (1.0 / p)
  return jnp.where(jax.random.uniform(one_rng, (n,)) < g.no_cfg_fraction, 1.0, alpha)


def negative_weights(alpha: jax.Array, g: Guidance) -> jax.Array:
  """[C, L] weights of each label's unconditional negatives: (α − 1)(N_gen − 1) / L."""
  w = (alpha - 1.0) * (g.gen_per_label - 1) / max(1, g.neg_per_label)
  return jnp.broadcast_to(w[:, None], (alpha.shape[0], g.neg_per_label))


def class_rows(feats: dict[str, jax.Array], num_labels: int) -> dict[str, jax.Array]:
  """Encoder features {name: [G, C·K, D]} of label-major samples -> {name: [C, G, K, D]}."""
  def rows(f):
    g, ck, d = f.shape
    return f.reshape(g, num_labels, ck // num_labels, d).transpose(1, 0, 2, 3)
  return {k: rows(f) for k, f in feats.items()}


def check_labels(labels: Any, num_classes: int) -> np.ndarray:
  """int32 labels, or a ValueError naming the first one outside [0, num_classes)."""
  labels = np.asarray(labels)
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"label {int(bad[0])} is outside [0, {num_classes}) (this model has "
                     f"{num_classes} classes).")
  return labels.astype(np.int32)


def check_alpha(alpha: float, g: Guidance) -> float:
  """α for sampling: 1 (no guidance) or within the trained range [cfg_min, cfg_max]."""
  alpha = float(alpha)
  if alpha != 1.0 and not g.cfg_min <= alpha <= g.cfg_max:
    raise ValueError(f"cfg_scale {alpha:g} is outside the trained range [{g.cfg_min:g}, "
                     f"{g.cfg_max:g}] (or 1, no guidance).")
  return alpha
