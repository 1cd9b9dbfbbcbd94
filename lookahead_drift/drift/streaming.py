"""`field.fields` tile by tile, for batches whose N × L matrices do not fit in memory.

Walks over tiles of `block_size` generated samples × `block_size` targets and never holds more
than [T, block, block]. Pass 1 accumulates every row's and column's softmax normaliser online
(a max and a sum, merged as in flash attention); pass 2 the affinity sums S± and Σ a y per
side. Rows and each target side are padded to whole tiles (padded targets weigh 0, padded rows
are masked), so no tile spans both sides. Equal to the dense field to float32 rounding
(tests/test_drift_impl.py; every test of tests/test_drift.py runs on both).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lookahead_drift.drift import field
from lookahead_drift.drift.field import NEG_INF, FieldSpec

Array = jax.Array
_slice = jax.lax.dynamic_slice_in_dim


# ---------------------------------------------------------------------------------------------
# Online log-sum-exp. A normaliser is (m, s) with log Σ exp(a) = m + log s: the two parts stay
# apart, since at τ = 0.02 the logits reach ~1e5, where float32 cannot hold m + log s to the
# precision that makes a softmax sum to 1.


def _normalizer(a: Array, axis: int) -> tuple[Array, Array]:
  """(m, s) along `axis` (kept): m finite, s = 0 if every entry is −inf."""
  m = jax.lax.stop_gradient(jnp.max(a, axis=axis, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return m, jnp.sum(jnp.exp(a - m), axis=axis, keepdims=True)


def _merge(m1: Array, s1: Array, m2: Array, s2: Array) -> tuple[Array, Array]:
  """Two normalisers over disjoint sets as one (empty parts drop)."""
  m1, m2 = jnp.where(s1 > 0, m1, NEG_INF), jnp.where(s2 > 0, m2, NEG_INF)
  m = jnp.maximum(m1, m2)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return m, s1 * jnp.exp(m1 - m) + s2 * jnp.exp(m2 - m)


def _log_normalized(logits: Array, m: Array, s: Array) -> Array:
  """logits − log Σ exp, from a normaliser; −inf stays −inf."""
  return (logits - m) - jnp.log(jnp.where(s > 0, s, 1.0))


# ---------------------------------------------------------------------------------------------
# Tiles.


class _Tiles(NamedTuple):
  x: Array          # [R·bn, D] generated rows, zero-padded
  points: Array     # [B·bt, D] targets, each side padded to whole blocks
  logw: Array       # [B·bt] log weights, −inf on padding
  row_ok: Array     # [R·bn] False on padded rows
  col_id: Array     # [B·bt] each target's index in the unpadded targets, −1 on padding
  is_pos: Array     # [B] whether target block b holds positives
  bn: int
  bt: int


def _pad(a: Array, size: int, value: float) -> Array:
  return jnp.pad(a, [(0, size - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=value)


def _tiled(x: Array, points: Array, logw: Array, num_neg: int, block: int) -> _Tiles:
  """Pads the generated rows and each target side to whole blocks."""
  n = x.shape[0]
  sides = [(points[:num_neg], logw[:num_neg], jnp.arange(num_neg)),
           (points[num_neg:], logw[num_neg:], jnp.arange(num_neg, points.shape[0]))]
  bt = max(1, min(block, max(s[0].shape[0] for s in sides)))
  bn = min(block, n)
  parts, flags = [], []
  for side, (t, lw, idx) in enumerate(sides):
    size = -(-t.shape[0] // bt) * bt
    parts.append((_pad(t, size, 0.0), _pad(lw, size, NEG_INF), _pad(idx, size, -1)))
    flags += [side == 1] * (size // bt)
  tp, lwp, col_id = (jnp.concatenate(p) for p in zip(*parts))
  rows = -(-n // bn) * bn
  return _Tiles(_pad(x, rows, 0.0), tp, lwp, jnp.arange(rows) < n, col_id,
                jnp.asarray(flags, bool), bn, bt)


def _over_tiles(tiles: _Tiles, tile, row_init, col_init=(), col_merge=lambda c, p: ()):
  """Runs tile(r, b, row_acc) -> (row_acc, col_part) over row blocks r and target blocks b.

  The row accumulator of block r is carried across its targets; the column parts of each
  row block are merged into the running column accumulator. Returns (row_accs, col_acc).
  """
  num_rows, num_cols = tiles.x.shape[0] // tiles.bn, tiles.points.shape[0] // tiles.bt

  def over_rows(col_acc, r):
    row_acc, col_parts = jax.lax.scan(lambda acc, b: tile(r, b, acc), row_init,
                                      jnp.arange(num_cols))
    return col_merge(col_acc, col_parts), row_acc

  col_acc, row_accs = jax.lax.scan(over_rows, col_init, jnp.arange(num_rows))
  return row_accs, col_acc


def _tile_logits(tiles: _Tiles, r, b, temps: Array, kernel: str, self_neg: bool,
                 precision: str):
  """Tile (r, b): logits [T, bn, bt] (−inf where masked), its targets and their log w."""
  bn, bt = tiles.bn, tiles.bt
  tb, lw = _slice(tiles.points, b * bt, bt), _slice(tiles.logw, b * bt, bt)
  keep = _slice(tiles.row_ok, r * bn, bn)[:, None]
  if self_neg:  # x_i is not its own negative
    keep = keep & ((r * bn + jnp.arange(bn))[:, None] != _slice(tiles.col_id, b * bt, bt)[None])
  c = field.cost(field.sq_dist(_slice(tiles.x, r * bn, bn), tb, precision), kernel)
  return jnp.where(keep[None], lw[None, None, :] - c[None] / temps[:, None, None], NEG_INF), tb, lw


# ---------------------------------------------------------------------------------------------
# The field.


def _normalizers(tiles: _Tiles, logits_of, num_t: int, normalization: str):
  """Pass 1: row normalisers per side [R, 2, T, bn] (one over both sides, [R, 1, T, bn], when
  bidirectional) and column normalisers [T, B·bt]."""

  def stats_tile(r, b, rows):  # rows: (m, s), [2, T, bn] each
    logits, _, _ = logits_of(r, b)
    side = tiles.is_pos[b]
    i = side.astype(jnp.int32)
    m, s = _merge(rows[0][i], rows[1][i], *(v[..., 0] for v in _normalizer(logits, -1)))
    rows = tuple(jnp.where(side, jnp.stack([old[0], new]), jnp.stack([new, old[1]]))
                 for old, new in zip(rows, (m, s)))
    return rows, tuple(v[:, 0] for v in _normalizer(logits, -2))     # [T, bt] each

  def merge_cols(cols, parts):  # parts: [B, T, bt] each -> [T, B·bt]
    return _merge(*cols, *(p.transpose(1, 0, 2).reshape(num_t, -1) for p in parts))

  empty = lambda *shape: (jnp.zeros(shape), jnp.zeros(shape))       # m = 0, s = 0
  (row_m, row_s), cols = _over_tiles(tiles, stats_tile, empty(2, num_t, tiles.bn),
                                     empty(num_t, tiles.points.shape[0]), merge_cols)
  if normalization == "bidirectional":  # one row softmax over both sides
    row_m, row_s = _merge(row_m[:, :1], row_s[:, :1], row_m[:, 1:], row_s[:, 1:])
  return (row_m, row_s), cols


def _affinity_sums(tiles: _Tiles, logits_of, normalizers, aff_w, spec: FieldSpec, d: int):
  """Pass 2: S± [2, T, R·bn] and Σ_j a_ij y_j [2, T, R·bn, D], per side (neg, pos)."""
  (row_m, row_s), (col_m, col_s) = normalizers
  num_t, bn, bt = col_m.shape[0], tiles.bn, tiles.bt

  def sum_tile(r, b, acc):
    s, ay = acc                                                       # [2,T,bn], [2,T,bn,D]
    logits, tb, lw = logits_of(r, b)
    side = tiles.is_pos[b].astype(jnp.int32)
    if spec.normalization == "mean_shift":
      a = jnp.exp(_log_normalized(logits, row_m[r, side][..., None], row_s[r, side][..., None]))
    else:
      cm, cs = (_slice(v, b * bt, bt, axis=1)[:, None] for v in (col_m, col_s))
      log_a = 0.5 * (_log_normalized(logits, row_m[r, 0][..., None], row_s[r, 0][..., None])
                     + _log_normalized(logits, cm, cs))
      a = field.floored(jnp.exp(log_a), lw, spec.floor)
    if aff_w is not None:
      a = a * _slice(aff_w, b * bt, bt)
    one_hot = (jnp.arange(2) == side)[:, None, None]
    s = s + one_hot * jnp.sum(a, -1)[None]
    ay = ay + one_hot[..., None] * jnp.einsum("tnl,ld->tnd", a, tb)[None]
    return (s, ay), ()

  (s, ay), _ = _over_tiles(tiles, sum_tile,
                           (jnp.zeros((2, num_t, bn)), jnp.zeros((2, num_t, bn, d))))
  # [R, 2, T, bn(, D)] -> [2, T, R·bn(, D)]
  return (s.transpose(1, 2, 0, 3).reshape(2, num_t, -1),
          ay.transpose(1, 2, 0, 3, 4).reshape(2, num_t, -1, d))


def fields(x: Array, y_pos: Array, y_neg: Array | None, temps: Array, spec: FieldSpec, *,
           self_neg: bool, neg_w: Array | None = None, pos_w: Array | None = None,
           block_size: int, precision: str = "highest") -> Array:
  """`field.fields` in tiles of `block_size`, [T, N, D]."""
  x, t = field.targets(x, y_pos, y_neg, spec, self_neg=self_neg, neg_w=neg_w, pos_w=pos_w)
  (n, d), num_t = x.shape, temps.shape[0]
  tiles = _tiled(x, t.points, t.logw, t.num_neg, block_size)
  aff_w = None
  if t.aff_w is not None:  # laid out like the padded targets; padding weighs 0
    aff_w = jnp.where(tiles.col_id >= 0, t.aff_w[jnp.maximum(tiles.col_id, 0)], 0.0)
  logits_of = lambda r, b: _tile_logits(tiles, r, b, temps, spec.kernel, self_neg, precision)
  normalizers = _normalizers(tiles, logits_of, num_t, spec.normalization)
  s, ay = _affinity_sums(tiles, logits_of, normalizers, aff_w, spec, d)
  s, ay = s[..., :n], ay[:, :, :n]
  pull = ay - s[..., None] * x[None, None]                            # Σ a (y − x), per side
  if spec.normalization == "mean_shift":
    return pull[1] - pull[0]
  return s[0][..., None] * pull[1] - s[1][..., None] * pull[0]


def distance_sum(x: Array, points: Array, w: Array, block_size: int,
                 precision: str = "highest") -> Array:
  """Σ_ij w_j ‖x_i − t_j‖ for centred x [N, D] and targets [L, D], tile by tile."""
  tiles = _tiled(x, points, w, points.shape[0], block_size)
  wp = _pad(w, tiles.points.shape[0], 0.0)
  bn, bt = tiles.bn, tiles.bt

  def tile(r, b, acc):
    ok = _slice(tiles.row_ok, r * bn, bn)
    d = field.dist(field.sq_dist(_slice(tiles.x, r * bn, bn), _slice(tiles.points, b * bt, bt),
                                 precision))
    return acc + jnp.sum(d * ok[:, None] * _slice(wp, b * bt, bt)), ()

  sums, _ = _over_tiles(tiles, tile, jnp.float32(0.0))
  return jnp.sum(sums)
