"""The public field functions: `drift_field` (§2) and `lookahead_drift` (§3), one temperature.

Each checks its arguments, picks a plan from `impl` and `block_size`, and makes one jitted call
into `field.py` (or `streaming.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_drift.drift import field
from lookahead_drift.drift import plan as plan_lib
from lookahead_drift.drift.checks import check_positive, check_shape
from lookahead_drift.drift.field import FieldSpec

Array = jax.Array


def _check_field_args(x, y_pos, y_neg, temperature, pos_weights, neg_weights) -> None:
  check_shape("x", x, (None, None), "num_samples, dim")
  check_shape("y_pos", y_pos, (None, x.shape[1]), "num_positives, dim of x")
  if y_neg is not None:
    check_shape("y_neg", y_neg, (None, x.shape[1]), "num_negatives, dim of x")
  check_positive("temperature", temperature)
  if pos_weights is not None:
    check_shape("pos_weights", pos_weights, (y_pos.shape[0],), "one per positive")
  if neg_weights is not None:
    if y_neg is None:
      raise ValueError("neg_weights given without negatives to weigh")
    check_shape("neg_weights", neg_weights, (y_neg.shape[0],), "one per negative")


def _prepared(x, y_pos, y_neg, temperature, pos_weights, neg_weights, *, self_neg, impl,
              block_size):
  """The arrays as float32, checked, and the plan for them."""
  x, y_pos = jnp.asarray(x, jnp.float32), jnp.asarray(y_pos, jnp.float32)
  y_neg = None if y_neg is None else jnp.asarray(y_neg, jnp.float32)
  _check_field_args(x, y_pos, y_neg, temperature, pos_weights, neg_weights)
  num_targets = y_pos.shape[0] + x.shape[0] * self_neg + (0 if y_neg is None else y_neg.shape[0])
  plan = plan_lib.make_plan(plan_lib.Execution(impl=impl, block_size=block_size),
                            n=x.shape[0], num_targets=num_targets, num_temps=1)
  return x, y_pos, y_neg, plan


@jax.jit(static_argnames=("self_neg", "spec", "plan", "num_lookahead"))
def _chain_jit(x, y_pos, y_neg, temperature, step_size, pos_weights, neg_weights, *,
               self_neg, spec, plan, num_lookahead):
  as_w = lambda w: None if w is None else jnp.asarray(w, jnp.float32)
  kw = dict(self_neg=self_neg, neg_w=as_w(neg_weights), pos_w=as_w(pos_weights))
  temps = jnp.reshape(jnp.asarray(temperature, jnp.float32), (1,))
  fields_fn = plan_lib.fields_for(plan)
  field_at = lambda xi, t: fields_fn(xi, y_pos, y_neg, t, spec, **kw)
  terms, _ = field.lookahead_chain(field_at, x, temps, num_lookahead=num_lookahead,
                                  step_size=step_size)
  return terms[:, 0]


def drift_field(x: Array, y_pos: Array, y_neg: Array | None = None, *, temperature: float,
                kernel: str = "laplace", normalization: str = "mean_shift", floor: float = 0.0,
                pos_weights: Array | None = None, neg_weights: Array | None = None,
                weighting: str = "affinity", impl: str = "auto", block_size: int = 1024
                ) -> Array:
  """The drifting field V_{p,q}(x) of drifting.md §2, [N, D].

  Args:
    x: generated samples [N, D].
    y_pos: positive samples [M, D] (attract).
    y_neg: negative samples [L, D] (repel). None: the batch `x` itself, each sample excluded
      from its own negatives.
    temperature: kernel temperature τ > 0.
    kernel: "laplace" exp(−‖x−y‖/τ) or "gaussian" exp(−‖x−y‖²/τ).
    normalization: "mean_shift" (lookahead paper eqs. 2-4) or "bidirectional" (drifting paper).
    floor: lower bound on the product of the two softmaxes in "bidirectional" (the official
      code uses 1e-6); 0 is the exact field.
    pos_weights, neg_weights: optional per-target weights, placed by `weighting`: "affinity"
      (multiply the normalised affinity, as the official code) or "kernel" (multiply k).
    impl: "dense", "streaming" (tiles of `block_size`; never forms N x L) or "auto".
  """
  spec = FieldSpec(kernel=kernel, normalization=normalization, floor=floor, weighting=weighting)
  x, y_pos, y_neg, plan = _prepared(x, y_pos, y_neg, temperature, pos_weights, neg_weights,
                                    self_neg=y_neg is None, impl=impl, block_size=block_size)
  return _chain_jit(x, y_pos, y_neg, temperature, 1.0, pos_weights, neg_weights,
                    self_neg=y_neg is None, spec=spec, plan=plan, num_lookahead=0)[0]


def lookahead_drift(x: Array, y_pos: Array, *, num_lookahead: int, temperature: float,
                    kernel: str = "laplace", normalization: str = "mean_shift",
                    step_size: float = 1.0, floor: float = 0.0,
                    extra_negatives: Array | None = None, neg_weights: Array | None = None,
                    pos_weights: Array | None = None, weighting: str = "affinity",
                    impl: str = "auto", block_size: int = 1024) -> Array:
  """The lookahead chain of drifting.md §3 (lookahead paper eq. 7), [num_lookahead + 1, N, D].

  Term i is the drifting field at x^i, where x^0 = x and x^{i+1} = x^i + step_size · V_i. The
  negatives of every term are the pushed batch x^i itself (self excluded), plus the optional
  `extra_negatives` [L, D] (with `neg_weights`, placed by `weighting` as in `drift_field`),
  which stay where they are.
  `num_lookahead=0` is the original drifting model: `[drift_field(x, y_pos)]`.
  """
  if isinstance(num_lookahead, bool) or not isinstance(num_lookahead, (int, np.integer)) \
      or num_lookahead < 0:
    raise ValueError(f"num_lookahead must be a non-negative int, got {num_lookahead!r}")
  spec = FieldSpec(kernel=kernel, normalization=normalization, floor=floor, weighting=weighting)
  x, y_pos, extra, plan = _prepared(x, y_pos, extra_negatives, temperature, pos_weights,
                                    neg_weights, self_neg=True, impl=impl, block_size=block_size)
  return _chain_jit(x, y_pos, extra, temperature, step_size, pos_weights, neg_weights,
                    self_neg=True, spec=spec, plan=plan, num_lookahead=int(num_lookahead))
