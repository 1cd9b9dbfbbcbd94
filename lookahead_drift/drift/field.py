"""The drifting field and the lookahead chain, one function per equation (docs/drifting.md §2-3).

Lookahead paper (Zhang, Niwa, Kleijn 2026): eqs. 2-4 the mean-shift field, eq. 7 the chain.
Drifting paper (Deng et al. 2026), Algorithm 2: the bidirectional field. Shapes: x [N, D]
generated samples, y_pos [M, D] positives, y_neg [L, D] extra negatives, temps [T]: every
function computes all T temperatures at once. The kernel is k = exp(−cost / τ), cost = ‖x − y‖
("laplace") or ‖x − y‖² ("gaussian"); everything stays in log space so that τ = 0.02 is finite.

    V = fields(x, y_pos, None, temps, spec, self_neg=True)              # eq. 2, [T, N, D]
    terms, _ = lookahead_chain(field_at, x, temps, num_lookahead=2)     # eq. 7, [3, T, N, D]

This is the dense field (it forms the N × (N + L + M) matrices); `streaming.py` computes the
same numbers tile by tile, and `plan.py` picks one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_drift.drift.checks import check_choice

Array = jax.Array

KERNELS = ("laplace", "gaussian")
NORMALIZATIONS = ("mean_shift", "bidirectional")
WEIGHTINGS = ("affinity", "kernel")
CHAINS = ("per_temperature", "summed")
EPS = 1e-12
NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """The field's settings (hashable: a jit static argument); drift_field documents each."""
  kernel: str = "laplace"
  normalization: str = "mean_shift"
  floor: float = 0.0
  weighting: str = "affinity"

  def __post_init__(self):
    check_choice("kernel", self.kernel, KERNELS)
    check_choice("normalization", self.normalization, NORMALIZATIONS)
    check_choice("weighting", self.weighting, WEIGHTINGS)
    if not 0 <= self.floor < 1:
      raise ValueError(f"floor must be in [0, 1), got {self.floor!r}")


# ---------------------------------------------------------------------------------------------
# Distances and the kernel (§1).


def sq_dist(x: Array, y: Array, precision: str = "highest") -> Array:
  """Pairwise ‖x − y‖², [N, L], for inputs already centred near the origin."""
  # "highest" precision: TF32 would lose the small distances to cancellation.
  xy = jnp.matmul(x, y.T, precision=precision)
  return jnp.maximum(jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * xy, 0.0)


def centred(x: Array, targets: Array) -> tuple[Array, Array]:
  """Both sets shifted by the batch mean: distances and fields are translation invariant, and
  small coordinates keep ‖x‖² + ‖y‖² − 2x·y and Σ a y − (Σ a) x free of cancellation."""
  c = jnp.mean(x, axis=0)
  return x - c, targets - c


def dist(d2: Array) -> Array:
  """sqrt with a zero slope at 0 (sqrt's is infinite there)."""
  positive = d2 > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def cost(d2: Array, kernel: str) -> Array:
  """−τ log k: ‖x − y‖ (laplace) or ‖x − y‖² (gaussian)."""
  return dist(d2) if kernel == "laplace" else d2


# ---------------------------------------------------------------------------------------------
# The targets: [negatives; positives], negatives = [x (self_neg, x_i then not its own); y_neg].


class Targets(NamedTuple):
  points: Array           # [L', D], centred like x
  logw: Array             # [L'] log w in the kernel ("kernel" weighting), else 0; −inf: absent
  aff_w: Array | None     # [L'] w on the normalised affinity ("affinity" weighting)
  num_neg: int            # the first num_neg points are negatives


def targets(x: Array, y_pos: Array, y_neg: Array | None, spec: FieldSpec, *, self_neg: bool,
            neg_w: Array | None = None, pos_w: Array | None = None) -> tuple[Array, Targets]:
  """Centred x and its targets. Weights neg_w [L], pos_w [M] enter by spec.weighting (§4):
  "kernel" multiplies k (w = 0 removes a target), "affinity" the normalised, floored
  affinity (the official code's guidance weights: the softmaxes never see w)."""
  negs = ([x] if self_neg else []) + ([] if y_neg is None else [y_neg])
  points = jnp.concatenate(negs + [y_pos])
  logw, aff_w = jnp.zeros((points.shape[0],)), None
  if neg_w is not None or pos_w is not None:
    ones = lambda k: jnp.ones((k,), jnp.float32)
    w = jnp.concatenate([ones(x.shape[0])] * self_neg + (
        [] if y_neg is None else [ones(y_neg.shape[0]) if neg_w is None else neg_w])
        + [ones(y_pos.shape[0]) if pos_w is None else pos_w])
    if spec.weighting == "kernel":
      logw = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), NEG_INF)
    else:
      aff_w = w
  x, points = centred(x, points)
  return x, Targets(points, logw, aff_w, sum(a.shape[0] for a in negs))


def floored(a: Array, logw: Array, floor: float) -> Array:
  """The official floor on the bidirectional affinity, sqrt(floor); absent targets stay 0."""
  if floor <= 0:
    return a
  return jnp.where(logw[None, None, :] > NEG_INF, jnp.maximum(a, math.sqrt(floor)), 0.0)


# ---------------------------------------------------------------------------------------------
# Affinities a_ij [T, N, L_side] per side (negatives, positives) from costs [N, L_side] (inf:
# no target). Each softmax is shifted by the least cost of its row or column, found once for
# all temperatures: −min cost / τ is then the largest logit exactly (for a row, exactly when
# the targets are unweighted; with w <= 1 an upper bound).


def _least(c: Array, axis: int) -> Array:
  low = jnp.min(c, axis=axis, keepdims=True)
  return jnp.where(jnp.isfinite(low), low, 0.0)


def _logits(c: Array, logw: Array | float, inv_t: Array, low: Array) -> Array:
  """[T, ., .] log k + log w, shifted by −low / τ (so at most ~0)."""
  return logw - (c - low)[None] * inv_t


def _total(z: Array, axis: int) -> Array:
  """Σ exp(z) along `axis`, 1 where it is empty (0 / 1 stays 0)."""
  t = jnp.sum(jnp.exp(z), axis=axis, keepdims=True)
  return jnp.where(t > 0, t, 1.0)


def mean_shift_affinities(costs, logws, inv_t) -> list[Array]:
  """Eqs. 3-4: a_ij = k_ij / Σ_j k_ij, a row softmax on each side."""
  out = []
  for c, lw in zip(costs, logws):
    z = _logits(c, lw, inv_t, _least(c, -1))
    out.append(jnp.exp(z) / _total(z, -1))
  return out


def bidirectional_affinities(costs, logws, inv_t, floor: float) -> list[Array]:
  """Algorithm 2: a_ij = sqrt(softmax_j over both sides × softmax_i per column), floored."""
  row_low = jnp.minimum(*(_least(c, -1) for c in costs))
  rows = [_logits(c, lw, inv_t, row_low) for c, lw in zip(costs, logws)]
  row_total = sum(_total(z, -1) for z in rows)
  out = []
  for c, lw, row in zip(costs, logws, rows):
    col = _logits(c, 0.0, inv_t, _least(c, -2))  # log w is constant along a column: no effect
    a = jnp.exp(0.5 * (row + col)) * jax.lax.rsqrt(row_total * _total(col, -2))
    out.append(floored(a, lw, floor))
  return out


def drift_from_affinities(x: Array, a_neg: Array, a_pos: Array, y_neg: Array, y_pos: Array,
                          normalization: str) -> Array:
  """Eq. 2, [T, N, D]: V = V⁺ − V⁻ (mean shift) or S⁻ V⁺ − S⁺ V⁻ with S± = Σ_{pos/neg} a
  (bidirectional), where V± = Σ_j a_ij (y_j − x_i) over that side."""

  def pull(a: Array, y: Array) -> Array:
    return jnp.einsum("tnl,ld->tnd", a, y) - jnp.sum(a, -1, keepdims=True) * x[None]

  if normalization == "mean_shift":
    return pull(a_pos, y_pos) - pull(a_neg, y_neg)
  s_neg, s_pos = (jnp.sum(a, -1, keepdims=True) for a in (a_neg, a_pos))
  return s_neg * pull(a_pos, y_pos) - s_pos * pull(a_neg, y_neg)


def fields(x: Array, y_pos: Array, y_neg: Array | None, temps: Array, spec: FieldSpec, *,
           self_neg: bool, neg_w: Array | None = None, pos_w: Array | None = None,
           d2: Array | None = None, precision: str = "highest") -> Array:
  """The field V_{p,q}(x) at each temperature, [T, N, D] (eqs. 2-4 or Algorithm 2).

  d2: squared distances [N, L'] from the centred x to `targets`, when the caller has them;
  else computed at `precision` (`sq_dist`).
  """
  x, t = targets(x, y_pos, y_neg, spec, self_neg=self_neg, neg_w=neg_w, pos_w=pos_w)
  d2 = sq_dist(x, t.points, precision) if d2 is None else d2
  k = t.num_neg
  valid = jnp.broadcast_to(t.logw > NEG_INF, d2.shape)
  if self_neg:
    valid = valid & ~jnp.eye(*d2.shape, dtype=bool)
  c = jnp.where(valid, cost(d2, spec.kernel), jnp.inf)
  costs, logws = (c[:, :k], c[:, k:]), (t.logw[:k], t.logw[k:])
  inv_t = 1.0 / temps[:, None, None]
  if spec.normalization == "mean_shift":
    a = mean_shift_affinities(costs, logws, inv_t)
  else:
    a = bidirectional_affinities(costs, logws, inv_t, spec.floor)
  if t.aff_w is not None:
    a = [a[0] * t.aff_w[:k], a[1] * t.aff_w[k:]]
  return drift_from_affinities(x, *a, t.points[:k], t.points[k:], spec.normalization)


# ---------------------------------------------------------------------------------------------
# The lookahead chain (§3).


def rms(v: Array, axes: tuple[int, ...]) -> Array:
  """sqrt(E v²) over `axes`, kept for broadcasting: E‖V‖²/D for a field."""
  return jnp.sqrt(jnp.mean(jnp.square(v), axis=axes, keepdims=True) + EPS)


def norm(v: Array) -> Array:
  """The Euclidean norm ‖v‖ over all of v's entries."""
  return jnp.sqrt(jnp.sum(jnp.square(v)))


def _later_terms(step: Callable, carry, v0: Array, num_lookahead: int, tol: float
                 ) -> tuple[Array, Array]:
  """V_1..V_K [K, ...] of the chain `step(carry) -> (carry, V_i)`, and the terms used.

  tol = 0: all K terms (lax.scan). tol > 0, the adaptive chain: a while loop that stops after
  the first term V_i with ‖V_i‖ < tol·‖V_0‖ (V_0 included); the terms after it stay zero.
  """
  if tol == 0:
    return jax.lax.scan(lambda c, _: step(c), carry, None, length=num_lookahead)[1], \
        jnp.int32(num_lookahead + 1)
  bound = tol * norm(v0)

  def body(loop):
    i, carry, terms, _ = loop
    carry, v = step(carry)
    return i + 1, carry, terms.at[i].set(v), norm(v) < bound

  init = (jnp.int32(0), carry, jnp.zeros((num_lookahead,) + v0.shape, v0.dtype),
          norm(v0) < bound)
  i, _, terms, _ = jax.lax.while_loop(lambda l: (l[0] < num_lookahead) & ~l[3], body, init)
  return terms, i + 1


def lookahead_chain(field_at: Callable[[Array, Array], Array], x: Array, temps: Array, *,
                    num_lookahead: int, step_size: Array | float = 1.0,
                    chain: str = "per_temperature", first: Array | None = None,
                    tol: float = 0.0) -> tuple[Array, Array]:
  """Eq. 7, [K+1, T, N, D]: V_i = V_{p,q_i}(x^i), x^{i+1} = x^i + η V_i, x^0 = x; and the
  number of terms each chain used ([T] per temperature, [] summed): K + 1 unless tol > 0.

  field_at(x^i, temps) -> [T, N, D] is the field whose negatives are x^i itself (eq. 8 (b)).
  chain "per_temperature": each temperature pushes its own samples by its own field.
  chain "summed" (a control): one chain for all temperatures, pushed along the normalised sum
    the k = 0 loss regresses onto, at the per-temperature step length:
    η · mean_τ rms(V_τ) · mean_τ V_τ / rms(V_τ).
  first: V_0 = field_at(x, temps), when the caller has it.
  tol > 0 (our extension, §3): each chain stops after its first term with ‖V_i‖ < tol·‖V_0‖
    (norms over that chain's samples and dims) and its later terms are zero; tol = 0 is the
    fixed-length chain, computed as before.
  """
  v0 = field_at(x, temps) if first is None else first               # [T, N, D]
  if num_lookahead == 0:
    return v0[None], jnp.ones(() if chain == "summed" else temps.shape, jnp.int32)
  if chain == "summed":
    def summed_step(carry):
      xi, v = carry
      r = rms(v, (1, 2))                                              # [T, 1, 1]
      xi = xi + step_size * jnp.mean(r) * jnp.mean(v / r, 0)
      v = field_at(xi, temps)
      return (xi, v), v

    rest, used = _later_terms(summed_step, (x, v0), v0, num_lookahead, tol)
  else:
    def one_temperature(v, t):
      def step(xi):
        v = field_at(xi, t[None])[0]
        return xi + step_size * v, v

      return _later_terms(step, x + step_size * v, v, num_lookahead, tol)  # [K, N, D], []

    rest, used = jax.vmap(one_temperature, out_axes=(1, 0))(v0, temps)  # [K, T, N, D], [T]
  return jnp.concatenate([v0[None], rest]), used
