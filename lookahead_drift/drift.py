"""The drift math: drifting fields, the lookahead chain and the training loss, in plain jnp.

Everything here is a pure function of arrays, so it can be jit-ed, vmap-ed and sharded. The
maths follows `docs/drifting.md`; section numbers below refer to it.

    V = drift_field(x, y_pos, temperature=0.05)                       # §2, [N, D]
    terms = lookahead_drift(x, y_pos, num_lookahead=2, temperature=0.05)  # §3, [3, N, D]
    loss, metrics = drift_loss({"pixels": x[None]}, {"pixels": y[None]})  # §4

Two implementations of the field give the same numbers (to float32 rounding):
- "dense" forms the N x (N + L + M) kernel matrices. One distance matrix serves every
  temperature and the feature scale; the temperatures' affinity products are one matmul.
- "streaming" walks over tiles of generated samples and targets (online log-sum-exp, as in
  flash attention) and never holds more than [T, block, block]: for batches whose matrices
  do not fit in memory.
`drift_loss` picks one from `LossConfig.memory_budget_mb` and processes feature groups in
chunks that fit the same budget.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

KERNELS = ("laplace", "gaussian")
NORMALIZATIONS = ("mean_shift", "bidirectional")
TERM_SCALINGS = ("none", "unit_rms")
FIELD_IMPLS = ("auto", "dense", "streaming")
WEIGHTINGS = ("affinity", "kernel")
CHAINS = ("per_temperature", "summed")

_EPS = 1e-12
_NEG_INF = -jnp.inf


# ---------------------------------------------------------------------------------------------
# Argument checks, done once at the public entry points. Traced values (a vmapped temperature)
# cannot be inspected and are left alone.


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
  if not isinstance(value, jax.core.Tracer) and not np.all(np.asarray(value) > 0):
    raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_shape(name: str, arr: Any, shape: tuple[int | None, ...], what: str) -> None:
  """`arr` has len(shape) axes and matches every non-None entry of `shape`."""
  got = jnp.shape(arr)
  if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
    want = ", ".join("*" if s is None else str(s) for s in shape)
    raise ValueError(f"{name} must have shape [{want}] ({what}), got {got}")


@dataclasses.dataclass(frozen=True)
class _FieldSpec:
  """Static settings of one field computation (hashable: a jit static argument)."""
  kernel: str = "laplace"
  normalization: str = "mean_shift"
  floor: float = 0.0
  impl: str = "dense"  # "dense" or "streaming" (resolved, never "auto")
  block_size: int = 1024
  weighting: str = "affinity"  # where target weights enter: see `_fields`
  # Built only by LossConfig.field_spec, from fields LossConfig has checked.


# ---------------------------------------------------------------------------------------------
# Small numerical pieces. Log space throughout, so that temperature 0.02 stays finite.


def _sq_dist(x: Array, y: Array) -> Array:
  """Pairwise ‖x − y‖², [N, L], for inputs already centred near the origin."""
  # HIGHEST precision: TF32 would lose the small distances to cancellation.
  xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * xy, 0.0)


def _centred(x: Array, targets: Array) -> tuple[Array, Array]:
  """Both sets shifted by the batch mean: distances and fields are translation invariant, and
  small coordinates keep ‖x‖² + ‖y‖² − 2x·y and Σ a y − (Σ a) x free of cancellation."""
  c = jnp.mean(x, axis=0)
  return x - c, targets - c


def _dist(d2: Array) -> Array:
  """sqrt with a zero slope at 0 (sqrt's is infinite there)."""
  positive = d2 > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def _cost(d2: Array, kernel: str) -> Array:
  """−log k up to the temperature: ‖x − y‖ (laplace) or ‖x − y‖² (gaussian)."""
  return _dist(d2) if kernel == "laplace" else d2


def _normalizer(a: Array, axis: int) -> tuple[Array, Array]:
  """(m, s) with log Σ exp(a) = m + log s along `axis` (kept): m finite, s = 0 if all −inf.

  The two parts stay apart: at τ = 0.02 the logits reach ~1e5, where float32 cannot hold
  m + log s to the precision that makes a softmax sum to 1.
  """
  m = jax.lax.stop_gradient(jnp.max(a, axis=axis, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return m, jnp.sum(jnp.exp(a - m), axis=axis, keepdims=True)


def _merge(m1: Array, s1: Array, m2: Array, s2: Array) -> tuple[Array, Array]:
  """Two normalizers over disjoint sets as one, as in an online softmax (empty parts drop)."""
  m1, m2 = jnp.where(s1 > 0, m1, _NEG_INF), jnp.where(s2 > 0, m2, _NEG_INF)
  m = jnp.maximum(m1, m2)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return m, s1 * jnp.exp(m1 - m) + s2 * jnp.exp(m2 - m)


def _log_normalized(logits: Array, m: Array, s: Array) -> Array:
  """logits − log Σ exp, from the parts of `_normalizer`; −inf stays −inf."""
  return (logits - m) - jnp.log(jnp.where(s > 0, s, 1.0))


def _log_weights(w: Array) -> Array:
  """log w, −inf for w = 0 (the target drops out): w multiplies the kernel."""
  return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), _NEG_INF)


# ---------------------------------------------------------------------------------------------
# The field (§2). Targets are laid out [negatives; positives] with negatives = [x; y_neg] when
# the batch is its own negative set (x_i then excluded from its own row), and the field is
#   mean_shift:    V_i = Σ_pos a_ij (y_j − x_i) − Σ_neg a_ij (y_j − x_i), a a row softmax per side,
#   bidirectional: V_i = S⁻_i Σ_pos a_ij (y_j − x_i) − S⁺_i Σ_neg a_ij (y_j − x_i),
#                  a = sqrt(row softmax × column softmax), floored, S± = Σ_{pos/neg} a_ij.
# Every function below computes it for T temperatures at once: [T, N, D].


def _self_mask(rows: Array, cols: Array) -> Array:
  """True where target `cols` is generated sample `rows` itself (global indices)."""
  return rows[:, None] == cols[None, :]


def _logits(cost: Array, logw: Array, temps: Array, keep: Array) -> Array:
  """[T, n, l] log-kernel: −cost/τ + log w, −inf where `keep` is False."""
  return jnp.where(keep[None], logw[None, None, :] - cost[None] / temps[:, None, None], _NEG_INF)


def _floored(a: Array, logw: Array, floor: float) -> Array:
  """The official floor on the bidirectional affinity; targets of weight 0 stay out."""
  if floor <= 0:
    return a
  return jnp.where(logw[None, None, :] > _NEG_INF, jnp.maximum(a, math.sqrt(floor)), 0.0)


def _dense_fields(x: Array, targets: Array, logw: Array, temps: Array, d2: Array, *,
                  num_neg: int, self_neg: bool, spec: _FieldSpec,
                  aff_w: Array | None = None) -> Array:
  """Fields [T, N, D] from the full distance matrix d2 [N, L] (shared by all temperatures).

  Softmax shifts come from the smallest cost of each row and column, found once for every
  temperature: −min cost / τ is the largest logit of a column exactly, and of a row exactly
  when the targets are unweighted (with weights w <= 1 an upper bound; weights far below 1 on
  every near target could underflow a row, which the training loss never produces).
  Negatives and positives are kept as two arrays from the start: on CPU, materialising a
  [T, N, L] array (or a slice of one) costs more than the exponentials that could be saved.
  """
  n, num_targets = x.shape[0], targets.shape[0]
  valid = jnp.broadcast_to(logw > _NEG_INF, (n, num_targets))
  if self_neg:
    valid = valid & ~_self_mask(jnp.arange(n), jnp.arange(num_targets))
  cost = jnp.where(valid, _cost(d2, spec.kernel), jnp.inf)         # [N, L], inf: no target
  inv_t = 1.0 / temps[:, None, None]
  sides = [(cost[:, :num_neg], logw[:num_neg], targets[:num_neg]),
           (cost[:, num_neg:], logw[num_neg:], targets[num_neg:])]

  def least(c: Array, axis: int) -> Array:
    low = jnp.min(c, axis=axis, keepdims=True)
    return jnp.where(jnp.isfinite(low), low, 0.0)

  def logit(c: Array, lw: Array | float, low: Array) -> Array:  # [T, ., .], at most ~0
    return lw - (c - low)[None] * inv_t

  def total(z: Array, axis: int) -> Array:
    t = jnp.sum(jnp.exp(z), axis=axis, keepdims=True)
    return jnp.where(t > 0, t, 1.0)

  a = []
  if spec.normalization == "mean_shift":  # a row softmax on each side
    for c, lw, _ in sides:
      z = logit(c, lw, least(c, -1))
      a.append(jnp.exp(z) / total(z, -1))
  else:  # sqrt(row softmax x column softmax): one row over both sides, columns per side
    row_low = jnp.minimum(*(least(c, -1) for c, _, _ in sides))
    row_total = sum(total(logit(c, lw, row_low), -1) for c, lw, _ in sides)
    for c, lw, _ in sides:
      # log w is constant along a column: the column softmax does not see it.
      col = logit(c, 0.0, least(c, -2))
      a.append(_floored(jnp.exp(0.5 * (logit(c, lw, row_low) + col))
                        * jax.lax.rsqrt(row_total * total(col, -2)), lw, spec.floor))
  if aff_w is not None:  # "affinity" weighting: normalised (and floored) affinity × w_j
    a = [a[0] * aff_w[:num_neg], a[1] * aff_w[num_neg:]]
  s = ((1.0, 1.0) if spec.normalization == "mean_shift"
       else tuple(jnp.sum(v, -1, keepdims=True) for v in a))

  def pull(a: Array, t: Array) -> Array:  # Σ_j a_ij (t_j − x_i), every temperature at once
    return jnp.einsum("tnl,ld->tnd", a, t) - jnp.sum(a, -1, keepdims=True) * x[None]

  (a_neg, a_pos), (s_neg, s_pos) = a, s
  return s_neg * pull(a_pos, sides[1][2]) - s_pos * pull(a_neg, sides[0][2])


def _pad(a: Array, size: int, value: float) -> Array:
  return jnp.pad(a, [(0, size - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=value)


def _tiled(x: Array, targets: Array, logw: Array, num_neg: int, block: int):
  """Pads generated rows and each target side to whole blocks (no block spans both sides).

  Returns (xp, tp, lwp, row_ok, col_id, block_is_pos, bn, bt): padded rows are masked by
  row_ok, padded targets by lwp = −inf, col_id is each target's original index (−1 if padding).
  """
  n = x.shape[0]
  sides = [(targets[:num_neg], logw[:num_neg], jnp.arange(num_neg)),
           (targets[num_neg:], logw[num_neg:], jnp.arange(num_neg, targets.shape[0]))]
  bt = max(1, min(block, max(s[0].shape[0] for s in sides)))
  bn = min(block, n)
  parts, flags = [], []
  for side, (t, lw, idx) in enumerate(sides):
    size = -(-t.shape[0] // bt) * bt
    parts.append((_pad(t, size, 0.0), _pad(lw, size, _NEG_INF), _pad(idx, size, -1)))
    flags += [side == 1] * (size // bt)
  tp, lwp, col_id = (jnp.concatenate(p) for p in zip(*parts))
  rows = -(-n // bn) * bn
  xp = _pad(x, rows, 0.0)
  row_ok = jnp.arange(rows) < n
  return xp, tp, lwp, row_ok, col_id, jnp.asarray(flags, bool), bn, bt


def _over_tiles(num_rows: int, num_cols: int, tile, row_init, col_init, col_merge):
  """Runs tile(r, b, row_acc) -> (row_acc, col_part) over row blocks r and target blocks b.

  The row accumulator of block r is carried across its targets; the column parts of each
  row block are merged into the running column accumulator. Returns (row_accs, col_acc).
  """

  def over_rows(col_acc, r):
    row_acc, col_parts = jax.lax.scan(lambda acc, b: tile(r, b, acc), row_init,
                                      jnp.arange(num_cols))
    return col_merge(col_acc, col_parts), row_acc

  col_acc, row_accs = jax.lax.scan(over_rows, col_init, jnp.arange(num_rows))
  return row_accs, col_acc


def _streaming_fields(x: Array, targets: Array, logw: Array, temps: Array, *, num_neg: int,
                      self_neg: bool, spec: _FieldSpec, aff_w: Array | None = None) -> Array:
  """`_dense_fields` tile by tile: two passes, never more than [T, block, block] at once.

  Pass 1: row log-sum-exps per side and column log-sum-exps (online, over all tiles).
  Pass 2: affinities per tile, accumulated into S± [2, T, n] and Σ a y [2, T, n, D].
  """
  n, d = x.shape
  num_t = temps.shape[0]
  xp, tp, lwp, row_ok, col_id, block_is_pos, bn, bt = _tiled(
      x, targets, logw, num_neg, spec.block_size)
  num_rows, num_cols = xp.shape[0] // bn, tp.shape[0] // bt
  if aff_w is not None:  # laid out like the padded targets; padding weighs 0
    aff_w = jnp.where(col_id >= 0, aff_w[jnp.maximum(col_id, 0)], 0.0)

  def tile_logits(r, b):
    xr = jax.lax.dynamic_slice_in_dim(xp, r * bn, bn)
    tb = jax.lax.dynamic_slice_in_dim(tp, b * bt, bt)
    lw = jax.lax.dynamic_slice_in_dim(lwp, b * bt, bt)
    cid = jax.lax.dynamic_slice_in_dim(col_id, b * bt, bt)
    keep = jax.lax.dynamic_slice_in_dim(row_ok, r * bn, bn)[:, None]
    if self_neg:
      keep = keep & ~_self_mask(r * bn + jnp.arange(bn), cid)
    return _logits(_cost(_sq_dist(xr, tb), spec.kernel), lw, temps, keep), tb, lw

  def stats_tile(r, b, rows):  # rows: (m, s) [2, T, bn] each, one per side
    logits, _, _ = tile_logits(r, b)
    side = block_is_pos[b]
    m, s = _merge(rows[0][side.astype(jnp.int32)], rows[1][side.astype(jnp.int32)],
                  *(v[..., 0] for v in _normalizer(logits, -1)))
    rows = tuple(jnp.where(side, jnp.stack([old[0], new]), jnp.stack([new, old[1]]))
                 for old, new in zip(rows, (m, s)))
    return rows, tuple(v[:, 0] for v in _normalizer(logits, -2))     # [T, bt] each

  def merge_cols(cols, parts):  # parts: [num_cols, T, bt] each -> [T, num_cols * bt]
    flat = (p.transpose(1, 0, 2).reshape(num_t, -1) for p in parts)
    return _merge(*cols, *flat)

  empty = lambda *shape: (jnp.zeros(shape), jnp.zeros(shape))       # m = 0, s = 0
  (row_m, row_s), (col_m, col_s) = _over_tiles(
      num_rows, num_cols, stats_tile, empty(2, num_t, bn), empty(num_t, tp.shape[0]),
      merge_cols)                                                     # [R, 2, T, bn], [T, Lp]
  if spec.normalization == "bidirectional":  # one row softmax over both sides
    row_m, row_s = _merge(row_m[:, :1], row_s[:, :1], row_m[:, 1:], row_s[:, 1:])

  def sum_tile(r, b, acc):
    s, ay = acc                                                       # [2,T,bn], [2,T,bn,D]
    logits, tb, lw = tile_logits(r, b)
    side = block_is_pos[b].astype(jnp.int32)
    if spec.normalization == "mean_shift":
      a = jnp.exp(_log_normalized(logits, row_m[r, side][..., None], row_s[r, side][..., None]))
    else:
      cm, cs = (jax.lax.dynamic_slice_in_dim(v, b * bt, bt, axis=1)[:, None] for v in
                (col_m, col_s))
      log_a = 0.5 * (_log_normalized(logits, row_m[r, 0][..., None], row_s[r, 0][..., None])
                     + _log_normalized(logits, cm, cs))
      a = _floored(jnp.exp(log_a), lw, spec.floor)
    if aff_w is not None:
      a = a * jax.lax.dynamic_slice_in_dim(aff_w, b * bt, bt)
    one_hot = (jnp.arange(2) == side)[:, None, None]
    s = s + one_hot * jnp.sum(a, -1)[None]
    ay = ay + one_hot[..., None] * jnp.einsum("tnl,ld->tnd", a, tb)[None]
    return (s, ay), ()

  (s, ay), _ = _over_tiles(
      num_rows, num_cols, sum_tile,
      (jnp.zeros((2, num_t, bn)), jnp.zeros((2, num_t, bn, d))), (), lambda c, p: ())
  # [R, 2, T, bn(, D)] -> [2, T, n(, D)]
  s = s.transpose(1, 2, 0, 3).reshape(2, num_t, -1)[..., :n]
  ay = ay.transpose(1, 2, 0, 3, 4).reshape(2, num_t, -1, d)[:, :, :n]
  pull = ay - s[..., None] * x[None, None]                            # Σ a (y − x), per side
  if spec.normalization == "mean_shift":
    return pull[1] - pull[0]
  return s[0][..., None] * pull[1] - s[1][..., None] * pull[0]


def _fields(x: Array, y_pos: Array, y_neg: Array | None, temps: Array, *, spec: _FieldSpec,
            self_neg: bool, neg_w: Array | None = None, pos_w: Array | None = None,
            d2: Array | None = None) -> Array:
  """Fields at x for each temperature, [T, N, D]; negatives [x (if self_neg); y_neg].

  neg_w [L] / pos_w [M]: target weights, placed by `spec.weighting` (drifting.md §4):
    "kernel":   w_j multiplies the kernel (log w_j joins the logits; w = 0 removes the target);
    "affinity": w_j multiplies the normalised, floored affinity (the official code's guidance
                weights: a weight-0 target keeps its share of the softmaxes).
  d2: the distance matrix from x to these targets, when the caller already has it.
  """
  n, m = x.shape[0], y_pos.shape[0]
  negs = ([x] if self_neg else []) + ([] if y_neg is None else [y_neg])
  num_neg = sum(a.shape[0] for a in negs)
  targets = jnp.concatenate(negs + [y_pos])
  logw, aff_w = jnp.zeros((targets.shape[0],)), None
  if neg_w is not None or pos_w is not None:
    ones = lambda k: jnp.ones((k,), jnp.float32)
    w = jnp.concatenate([ones(n)] * self_neg + (
        [] if y_neg is None else [ones(y_neg.shape[0]) if neg_w is None else neg_w])
        + [ones(m) if pos_w is None else pos_w])
    if spec.weighting == "kernel":
      logw = _log_weights(w)
    else:
      aff_w = w
  x, targets = _centred(x, targets)
  kw = dict(num_neg=num_neg, self_neg=self_neg, spec=spec, aff_w=aff_w)
  if spec.impl == "streaming":
    return _streaming_fields(x, targets, logw, temps, **kw)
  if d2 is None:
    d2 = _sq_dist(x, targets)
  return _dense_fields(x, targets, logw, temps, d2, **kw)


def _chain(x: Array, y_pos: Array, y_neg: Array | None, temps: Array, *, num_lookahead: int,
           step_size: Array | float, spec: _FieldSpec, neg_w: Array | None = None,
           pos_w: Array | None = None, d2: Array | None = None,
           chain: str = "per_temperature") -> Array:
  """[K+1, T, N, D]: V_i = V_{p,q_i}(x^i), x^{i+1} = x^i + η V_i (§3), negatives = x^i.

  chain "per_temperature": each temperature pushes its own samples by its own field.
  chain "summed": one chain for all temperatures, pushed along the normalised sum the k = 0
    loss regresses onto, at the per-temperature step length: η · mean_τ rms(V_τ) ·
    mean_τ V_τ / rms(V_τ). Every term still holds each temperature's field, at the common
    pushed samples.
  Term 0 of every temperature comes from one distance matrix.
  """
  kw = dict(spec=spec, self_neg=True, neg_w=neg_w, pos_w=pos_w)
  first = _fields(x, y_pos, y_neg, temps, d2=d2, **kw)               # [T, N, D]
  if num_lookahead == 0:
    return first[None]
  if chain == "summed":
    def summed_step(carry, _):
      xi, v = carry
      rms = _rms(v, (1, 2))                                           # [T, 1, 1]
      xi = xi + step_size * jnp.mean(rms) * jnp.mean(v / rms, 0)
      v = _fields(xi, y_pos, y_neg, temps, **kw)
      return (xi, v), v

    _, rest = jax.lax.scan(summed_step, (x, first), None, length=num_lookahead)
    return jnp.concatenate([first[None], rest])                      # [K+1, T, N, D]

  def one_temperature(v0, t):
    def step(xi, _):
      v = _fields(xi, y_pos, y_neg, t[None], **kw)[0]
      return xi + step_size * v, v

    _, rest = jax.lax.scan(step, x + step_size * v0, None, length=num_lookahead)
    return rest                                                       # [K, N, D]

  rest = jax.vmap(one_temperature, out_axes=1)(first, temps)         # [K, T, N, D]
  return jnp.concatenate([first[None], rest])


# ---------------------------------------------------------------------------------------------
# Public pure functions.


def _field_spec(kernel, normalization, floor, impl, block_size, weighting, n, num_targets
                ) -> _FieldSpec:
  """The public functions pick their implementation by the loss's rule and default budget."""
  return LossConfig(kernel=kernel, normalization=normalization, floor=floor, field_impl=impl,
                    block_size=block_size, neg_weighting=weighting).field_spec(n, num_targets)


def _check_field_args(x, y_pos, y_neg, temperature, pos_weights, neg_weights) -> None:
  _check_shape("x", x, (None, None), "num_samples, dim")
  _check_shape("y_pos", y_pos, (None, x.shape[1]), "num_positives, dim of x")
  if y_neg is not None:
    _check_shape("y_neg", y_neg, (None, x.shape[1]), "num_negatives, dim of x")
  _check_positive("temperature", temperature)
  if pos_weights is not None:
    _check_shape("pos_weights", pos_weights, (y_pos.shape[0],), "one per positive")
  if neg_weights is not None:
    if y_neg is None:
      raise ValueError("neg_weights given without negatives to weigh")
    _check_shape("neg_weights", neg_weights, (y_neg.shape[0],), "one per negative")


@jax.jit(static_argnames=("self_neg", "spec", "num_lookahead"))
def _chain_jit(x, y_pos, y_neg, temperature, step_size, pos_weights, neg_weights, *,
               self_neg, spec, num_lookahead):
  as_w = lambda w: None if w is None else jnp.asarray(w, jnp.float32)
  kw = dict(spec=spec, neg_w=as_w(neg_weights), pos_w=as_w(pos_weights))
  temps = jnp.reshape(jnp.asarray(temperature, jnp.float32), (1,))
  if not self_neg:  # a single field with explicit negatives only
    return _fields(x, y_pos, y_neg, temps, self_neg=False, **kw)
  return _chain(x, y_pos, y_neg, temps, num_lookahead=num_lookahead, step_size=step_size,
                **kw)[:, 0]


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
  x, y_pos = jnp.asarray(x, jnp.float32), jnp.asarray(y_pos, jnp.float32)
  y_neg = None if y_neg is None else jnp.asarray(y_neg, jnp.float32)
  _check_field_args(x, y_pos, y_neg, temperature, pos_weights, neg_weights)
  num_targets = y_pos.shape[0] + (x.shape[0] if y_neg is None else y_neg.shape[0])
  spec = _field_spec(kernel, normalization, floor, impl, block_size, weighting, x.shape[0],
                     num_targets)
  out = _chain_jit(x, y_pos, y_neg, temperature, 1.0, pos_weights, neg_weights,
                   self_neg=y_neg is None, spec=spec, num_lookahead=0)
  return out[0]


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
  x, y_pos = jnp.asarray(x, jnp.float32), jnp.asarray(y_pos, jnp.float32)
  extra = None if extra_negatives is None else jnp.asarray(extra_negatives, jnp.float32)
  _check_field_args(x, y_pos, extra, temperature, pos_weights, neg_weights)
  num_targets = x.shape[0] + y_pos.shape[0] + (0 if extra is None else extra.shape[0])
  spec = _field_spec(kernel, normalization, floor, impl, block_size, weighting, x.shape[0],
                     num_targets)
  return _chain_jit(x, y_pos, extra, temperature, step_size, pos_weights, neg_weights,
                    self_neg=True, spec=spec, num_lookahead=int(num_lookahead))


# ---------------------------------------------------------------------------------------------
# The training loss (§3-4).


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Settings of `drift_loss`; frozen and hashable, so it can be a static jit argument.

  term_scaling: "none" (the raw sum of eq. 6) or "unit_rms" (each term divided by its RMS per
    dimension before weighting: our extension, not the paper's). term_weights: w_i, one per
    term (default all 1, as in eq. 6). chain: "per_temperature" (each temperature's own chain)
    or "summed" (one chain pushed by the summed, normalised field: a control, §3).
  neg_weighting: where the extra negatives' weights enter, "affinity" (the official code's
    placement: the normalised, floored affinity times w) or "kernel" (k times w), §4.
  field_impl: "dense", "streaming" or "auto" (dense while one group's matrices fit
    `memory_budget_mb`). group_chunk: feature groups per pass (0: as many as fit the budget).
  memory_budget_mb: the most the kernel matrices of one pass may hold (0: 2 GiB on CPU,
    8 GiB on accelerators); one group beyond it streams. On CPU, passes over many groups are
    further cut to 32 MiB (at least 8 groups), which run about twice as fast there.
  """
  temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)
  kernel: str = "laplace"
  normalization: str = "bidirectional"
  floor: float = 1e-6
  num_lookahead: int = 0
  step_size: float = 1.0
  term_weights: tuple[float, ...] | None = None
  term_scaling: str = "none"
  chain: str = "per_temperature"
  neg_weighting: str = "affinity"
  feature_normalization: bool = True
  drift_normalization: bool = True
  field_impl: str = "auto"
  memory_budget_mb: float = 0.0
  group_chunk: int = 0
  block_size: int = 1024

  def __post_init__(self):
    temps = tuple(float(t) for t in np.atleast_1d(self.temperatures))
    object.__setattr__(self, "temperatures", temps)
    if not temps or min(temps) <= 0:
      raise ValueError(f"temperatures must be a non-empty list of values > 0, got {temps}")
    _check_choice("term_scaling", self.term_scaling, TERM_SCALINGS)
    _check_choice("field_impl", self.field_impl, FIELD_IMPLS)
    _check_choice("chain", self.chain, CHAINS)
    _check_choice("kernel", self.kernel, KERNELS)
    _check_choice("normalization", self.normalization, NORMALIZATIONS)
    _check_choice("neg_weighting", self.neg_weighting, WEIGHTINGS)
    if not 0 <= self.floor < 1:
      raise ValueError(f"floor must be in [0, 1), got {self.floor!r}")
    if self.block_size < 1:
      raise ValueError(f"block_size must be >= 1, got {self.block_size!r}")
    if isinstance(self.num_lookahead, bool) or int(self.num_lookahead) != self.num_lookahead \
        or self.num_lookahead < 0:
      raise ValueError(f"num_lookahead must be a non-negative int, got {self.num_lookahead!r}")
    object.__setattr__(self, "num_lookahead", int(self.num_lookahead))
    if self.step_size <= 0:
      raise ValueError(f"step_size must be > 0, got {self.step_size!r}")
    if self.memory_budget_mb < 0 or self.group_chunk < 0:
      raise ValueError("memory_budget_mb and group_chunk must be >= 0, got "
                       f"{self.memory_budget_mb!r}, {self.group_chunk!r}")
    if self.term_weights is not None:
      w = tuple(float(v) for v in self.term_weights)
      if len(w) != self.num_lookahead + 1:
        raise ValueError(f"term_weights needs num_lookahead + 1 = {self.num_lookahead + 1} "
                         f"values, got {len(w)}")
      object.__setattr__(self, "term_weights", w)

  def budget_bytes(self) -> float:
    return (self.memory_budget_mb or (2048 if jax.default_backend() == "cpu" else 8192)) * 2**20

  def _bytes_per_group(self, n: int, num_targets: int, impl: str) -> int:
    """Rough peak of one group's field: a distance matrix plus ~3 [T, n, L] arrays per term."""
    if impl == "streaming":
      n, num_targets = min(n, self.block_size), min(num_targets, self.block_size)
    return 4 * n * num_targets * (2 + 3 * len(self.temperatures))

  def field_spec(self, n: int, num_targets: int) -> _FieldSpec:
    """The field implementation for n generated samples against num_targets targets."""
    impl = self.field_impl
    if impl == "auto":
      fits = self._bytes_per_group(n, num_targets, "dense") <= self.budget_bytes()
      impl = "dense" if fits else "streaming"
    return _FieldSpec(kernel=self.kernel, normalization=self.normalization,
                      floor=self.floor, impl=impl, block_size=self.block_size,
                      weighting=self.neg_weighting)

  def groups_per_pass(self, num_groups: int, n: int, num_targets: int) -> int:
    """How many feature groups one pass processes: group_chunk, or what fits the budget."""
    if self.group_chunk:
      return min(self.group_chunk, num_groups)
    per_group = self._bytes_per_group(n, num_targets, self.field_spec(n, num_targets).impl)
    budget = self.budget_bytes()
    if jax.default_backend() == "cpu":  # cache-sized passes, but never fewer than 8 groups
      budget = min(budget, max(32 * 2**20, 8 * per_group))
    return int(max(1, min(num_groups, budget // per_group)))


def _as_groups(feats: Any, name: str) -> dict[str, Array]:
  """dict name -> [C, G, N, D] (C classes of G groups); [N, D] and [G, N, D] get C = G = 1."""
  if feats is None:
    return {}
  if not isinstance(feats, Mapping):
    feats = {"features": feats}
  out = {}
  for key, f in feats.items():
    f = jnp.asarray(f, jnp.float32)
    f = f.reshape((1,) * (4 - f.ndim) + f.shape) if f.ndim in (2, 3) else f
    _check_shape(f"{name}[{key!r}]", f, (None, None, None, None),
                 "[classes,] groups, samples, dim")
    out[key] = f
  return out


def _rms(v: Array, axes: tuple[int, ...]) -> Array:
  """sqrt(E v²) over `axes`, kept for broadcasting: E‖V‖²/D for a field."""
  return jnp.sqrt(jnp.mean(jnp.square(v), axis=axes, keepdims=True) + _EPS)


def _distance_sum(x: Array, targets: Array, w: Array, spec: _FieldSpec) -> Array:
  """Σ_ij w_j ‖x_i − t_j‖ for one row; tile by tile when streaming."""
  x, targets = _centred(x, targets)
  if spec.impl == "dense":
    return _distance_sum_from_sq(_sq_dist(x, targets), w)
  xp, tp, _, row_ok, _, _, bn, bt = _tiled(x, targets, w, targets.shape[0], spec.block_size)
  wp = _pad(w, tp.shape[0], 0.0)

  def tile(r, b, acc):
    xr = jax.lax.dynamic_slice_in_dim(xp, r * bn, bn)
    ok = jax.lax.dynamic_slice_in_dim(row_ok, r * bn, bn)
    d = _dist(_sq_dist(xr, jax.lax.dynamic_slice_in_dim(tp, b * bt, bt)))
    return acc + jnp.sum(d * ok[:, None] * jax.lax.dynamic_slice_in_dim(wp, b * bt, bt)), ()

  sums, _ = _over_tiles(xp.shape[0] // bn, tp.shape[0] // bt, tile, jnp.float32(0.0), (),
                        lambda c, p: ())
  return jnp.sum(sums)


def _distance_sum_from_sq(d2: Array, w: Array) -> Array:
  """Σ_ij w_j ‖x_i − t_j‖ from squared distances [..., N, L] and weights [..., L]."""
  return jnp.sum(_dist(d2) * w[..., None, :], (-2, -1))


def _group_loss(x: Array, pos: Array, neg: Array | None, neg_w: Array | None,
                sample_w: Array, cfg: LossConfig, num_classes: int
                ) -> tuple[Array, dict[str, Array]]:
  """Loss of one feature map: R rows [R, N, D] (feature groups, or (class, group) pairs), each
  an independent drift problem; all rows share one feature scale and one drift normalisation
  per temperature, as in the official code (§4). neg_w [R, L] and sample_w [R, N] per row."""
  rows, n, d = x.shape
  # Only the generated features carry gradient: targets, scale and the chain are constants.
  xs, pos = jax.lax.stop_gradient(x), jax.lax.stop_gradient(pos)
  neg = None if neg is None else jax.lax.stop_gradient(neg)
  num_l = 0 if neg is None else neg.shape[1]
  num_targets = n + num_l + pos.shape[1]
  spec = cfg.field_spec(n, num_targets)
  chunk = cfg.groups_per_pass(rows, n, num_targets)
  # Target order [x; neg; pos] as in `_fields`. The scale weighs targets by their weights and
  # pools all rows: Σ_rij w_rj d_rij / (N Σ_rj w_rj), the official code's formula.
  ones = lambda *shape: jnp.ones(shape, jnp.float32)
  target_w = jnp.concatenate(
      [ones(rows, n)] + ([] if neg is None else [ones(rows, num_l) if neg_w is None else neg_w])
      + [ones(rows, pos.shape[1])], axis=1)                            # [R, n + L + M]

  def targets_of(xg, pg, ng):
    return jnp.concatenate([xg] + ([] if ng is None else [ng]) + [pg])

  def chain(xg, pg, ng, wg, scale, d2=None):
    # τ acts on distances divided by their mean (scale·√D): with raw features that is
    # τ·√D·scale for the laplace kernel and τ·D·scale² for the gaussian one.
    temps = jnp.asarray(cfg.temperatures, jnp.float32)
    if cfg.feature_normalization:
      temps = temps * (math.sqrt(d) * scale if cfg.kernel == "laplace" else d * scale**2)
    return _chain(xg, pg, ng, temps, num_lookahead=cfg.num_lookahead,
                  step_size=cfg.step_size, spec=spec, neg_w=wg, d2=d2,
                  chain=cfg.chain) / scale                             # [K+1, T, N, D]

  def scale_of(dist_sums):
    if not cfg.feature_normalization:
      return jnp.float32(1.0)
    mean = jnp.sum(dist_sums) / (n * jnp.sum(target_w))
    return jnp.maximum(mean / math.sqrt(d), _EPS)

  groups = (xs, pos, neg, neg_w)
  if chunk >= rows and spec.impl == "dense":
    # One pass: the distance matrices give the scale and every temperature's first term.
    d2 = jax.vmap(lambda xg, pg, ng: _sq_dist(*_centred(xg, targets_of(xg, pg, ng))))(
        xs, pos, neg)                                                  # [R, N, n + L + M]
    scale = scale_of(_distance_sum_from_sq(d2, target_w))
    terms = jax.vmap(lambda xg, pg, ng, wg, dg: chain(xg, pg, ng, wg, scale, dg))(*groups, d2)
  else:
    # Chunks of rows that fit the budget: a first pass for the scale, then the fields.
    dist_sums = jax.lax.map(
        lambda a: _distance_sum(a[0], targets_of(*a[:3]), a[4], spec), groups + (target_w,),
        batch_size=chunk)
    scale = scale_of(dist_sums)
    terms = jax.lax.map(lambda a: chain(*a, scale), groups, batch_size=chunk)
  # terms: [R, K+1, T, N, D], in normalised feature space.
  # Scalings and sums over terms and temperatures as weights of einsums (matmuls): XLA on
  # CPU is slow at reducing a middle axis.
  term_rms = _rms(terms, (0, 3, 4))[0, :, :, 0, 0]                  # [K+1, T]
  w = jnp.asarray(cfg.term_weights or (1.0,) * (cfg.num_lookahead + 1), jnp.float32)
  coef = w[:, None] / term_rms if cfg.term_scaling == "unit_rms" else jnp.broadcast_to(
      w[:, None], term_rms.shape)
  per_temp = jnp.einsum("gktnd,kt->gtnd", terms, coef)
  temp_rms = _rms(per_temp, (0, 2, 3))[0, :, 0, 0]                  # [T]
  temp_w = 1.0 / temp_rms if cfg.drift_normalization else jnp.ones_like(temp_rms)
  xn = x / scale
  target = jax.lax.stop_gradient(xn + jnp.einsum("gtnd,t->gnd", per_temp, temp_w))
  err = jnp.mean(jnp.square(xn - target), axis=-1)                   # [R, N]
  # Σ over feature groups, mean over classes (= the per-class losses' mean).
  loss = jnp.sum(jnp.mean(err * sample_w, axis=1)) / num_classes
  metrics = {"feature_scale": scale}
  for i in range(cfg.num_lookahead + 1):
    metrics[f"drift_rms/term{i}"] = jnp.mean(term_rms[i])
  for j, t in enumerate(cfg.temperatures):
    metrics[f"drift_rms/temp{t:g}"] = temp_rms[j]
  return loss, metrics


def drift_loss(gen_feats: Any, pos_feats: Any, *, config: LossConfig = LossConfig(),
               neg_feats: Any = None, neg_weights: Array | None = None,
               sample_weights: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """The drifting (k = 0) or lookahead (k >= 1) training loss over feature groups.

  gen_feats: dict name -> [G, N, D] (G independent groups of one feature map, sharing D and one
    feature scale), or [C, G, N, D] for class-conditional training (C classes, each with its
    own N generated samples, positives and negatives: C·G independent rows, one shared scale
    and drift normalisation, as in the official code); a bare array is one entry, [N, D] is
    one group. Gradients flow through these only.
  pos_feats: the same names and leading axes, [(C,) G, M, D] (each class's positives).
  neg_feats: optional extra fixed negatives [(C,) G, L, D] (e.g. unconditional real samples for
    guidance), with `neg_weights` [L] or one vector per class [C, L], placed by
    `config.neg_weighting`. sample_weights: optional [N] or [C, N].
  Returns the scalar loss, the mean over classes of Σ over groups of
  mean_i w_i ‖x_i − sg(x_i + V_i)‖² / D, and metrics.
  """
  gen = _as_groups(gen_feats, "gen_feats")
  pos = _as_groups(pos_feats, "pos_feats")
  neg = _as_groups(neg_feats, "neg_feats")
  if not gen:
    raise ValueError("gen_feats is empty")
  if set(pos) != set(gen) or (neg and set(neg) != set(gen)):
    raise ValueError(f"pos_feats/neg_feats must have the groups of gen_feats {sorted(gen)}, got "
                     f"{sorted(pos)} / {sorted(neg)}")
  c, _, n, _ = next(iter(gen.values())).shape
  for key, x in gen.items():
    _check_shape(f"gen_feats[{key!r}]", x, (c, None, n, None), "classes, groups, samples, dim "
                 "(the same classes and samples in every map)")
    _check_shape(f"pos_feats[{key!r}]", pos[key], (c, x.shape[1], None, x.shape[3]),
                 "classes, groups and dim of gen_feats")
    if key in neg:
      _check_shape(f"neg_feats[{key!r}]", neg[key], (c, x.shape[1], None, x.shape[3]),
                   "classes, groups and dim of gen_feats")
  num_l = next(iter(neg.values())).shape[2] if neg else 0
  neg_w = sample_w = None
  if neg_weights is not None:
    if not neg:
      raise ValueError("neg_weights given without neg_feats")
    neg_w = jnp.asarray(neg_weights, jnp.float32)
    if neg_w.shape != (num_l,):
      _check_shape("neg_weights", neg_w, (c, num_l),
                   "one per negative, or one vector per class [classes, negatives]")
    neg_w = jnp.broadcast_to(neg_w, (c, num_l))
  if sample_weights is not None:
    sample_w = jnp.asarray(sample_weights, jnp.float32)
    if sample_w.shape != (n,):
      _check_shape("sample_weights", sample_w, (c, n),
                   "one per generated sample, or [classes, samples]")
    sample_w = jnp.broadcast_to(sample_w, (c, n))
  return _loss(gen, pos, neg, neg_w, sample_w, config)


@jax.jit(static_argnames=("config",))
def _loss(gen, pos, neg, neg_w, sample_w, config):
  total, metrics = jnp.float32(0.0), {}
  for key, x in gen.items():  # feature maps differ in D: a short Python loop, vmap within
    c, g = x.shape[:2]
    # Rows (class, group), class-major; per-class weights repeat over the class's groups.
    flat = lambda a: None if a is None else a.reshape((c * g,) + a.shape[2:])
    per_row = lambda a: None if a is None else jnp.repeat(a, g, axis=0)
    sw = jnp.ones((c * g, x.shape[2])) if sample_w is None else per_row(sample_w)
    loss, m = _group_loss(flat(x), flat(pos[key]), flat(neg.get(key)), per_row(neg_w), sw,
                          config, num_classes=c)
    total = total + loss
    metrics[f"loss/{key}"] = loss
    for name, value in m.items():
      if name == "feature_scale":
        metrics[f"feature_scale/{key}"] = value
      else:  # averaged over feature maps
        metrics[name] = metrics.get(name, 0.0) + value / len(gen)
  metrics["loss"] = total
  return total, metrics
