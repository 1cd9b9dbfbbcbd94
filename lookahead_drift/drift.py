"""The drift math: drifting fields, the lookahead chain and the training loss, in plain jnp.

Everything here is a pure function of arrays, so it can be jit-ed, vmap-ed and sharded. The
maths follows `docs/drifting.md` (shared with the project); section numbers below refer to it.

    V = drift_field(x, y_pos, temperature=0.05)                       # §2, [N, D]
    terms = lookahead_drift(x, y_pos, num_lookahead=2, temperature=0.05)  # §3, [3, N, D]
    loss, metrics = drift_loss({"pixels": x[None]}, {"pixels": y[None]})  # §4
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

_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Argument checks. Python-level values are checked eagerly; traced values (a temperature that is
# vmapped over, say) cannot be inspected and are left alone.


def _concrete(value: Any) -> np.ndarray | None:
  if isinstance(value, jax.core.Tracer):
    return None
  return np.asarray(value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
  v = _concrete(value)
  if v is not None and not np.all(v > 0):
    raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_points(name: str, arr: Any, dim: int | None) -> None:
  if jnp.ndim(arr) != 2:
    raise ValueError(f"{name} must have shape [num_samples, dim], got shape {jnp.shape(arr)}")
  if dim is not None and arr.shape[1] != dim:
    raise ValueError(
        f"{name} has feature dimension {arr.shape[1]} but x has {dim}: both must match")


def _check_weights(name: str, w: Any, n: int) -> None:
  if w is not None and jnp.shape(w) != (n,):
    raise ValueError(f"{name} must have shape ({n},), got {jnp.shape(w)}")


# ---------------------------------------------------------------------------------------------
# Kernel logits and softmaxes, in log space so that temperature 0.02 stays finite in float32.


def _cost(x: Array, y: Array, kernel: str) -> Array:
  """Pairwise ‖x − y‖ (laplace) or ‖x − y‖² (gaussian), [N, M]."""
  # Centring both sets on the batch mean leaves distances unchanged but keeps the norms small,
  # which limits cancellation in ‖x‖² + ‖y‖² − 2x·y. HIGHEST precision: TF32 would not do.
  c = jax.lax.stop_gradient(jnp.mean(x, axis=0))
  x, y = x - c, y - c
  xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * xy
  d2 = jnp.maximum(d2, 0.0)
  if kernel == "gaussian":
    return d2
  positive = d2 > 0  # sqrt has an infinite slope at 0: keep it out of any gradient.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def _log_softmax(logits: Array, axis: int) -> Array:
  """log-softmax that returns -inf (weight 0) for a slice whose logits are all -inf."""
  m = jnp.max(logits, axis=axis, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  shifted = logits - m
  total = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
  return shifted - jnp.log(jnp.where(total > 0, total, 1.0))


def _log_weights(w: Array | None, n: int) -> Array:
  if w is None:
    return jnp.zeros((n,), jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)


def _field(x: Array, y_pos: Array, y_neg: Array | None, *, self_negatives: bool,
           temperature: Array | float, kernel: str, normalization: str, floor: float,
           pos_weights: Array | None = None, neg_weights: Array | None = None) -> Array:
  """V_{p,q}(x) with negatives [x (self excluded) if self_negatives; y_neg] (§2)."""
  n = x.shape[0]
  negs, neg_logw = [], []
  if self_negatives:
    negs.append(x)
    neg_logw.append(jnp.zeros((n,)))
  if y_neg is not None:
    negs.append(y_neg)
    neg_logw.append(_log_weights(neg_weights, y_neg.shape[0]))
  y_negs = jnp.concatenate(negs, axis=0)
  l = y_negs.shape[0]
  # Target log-weights: log w_j multiplies the kernel; -inf removes a target altogether.
  target_logw = jnp.concatenate(neg_logw + [_log_weights(pos_weights, y_pos.shape[0])])
  logits = (-_cost(x, jnp.concatenate([y_negs, y_pos]), kernel) / temperature
            + target_logw[None, :])
  if self_negatives:  # x_i is not its own negative
    logits = logits.at[:, :n].add(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, 0.0))

  def pull(a: Array, y: Array) -> Array:  # Σ_j a_ij (y_j − x_i)
    return a @ y - jnp.sum(a, axis=1, keepdims=True) * x

  if normalization == "mean_shift":
    a_neg = jnp.exp(_log_softmax(logits[:, :l], axis=1))
    a_pos = jnp.exp(_log_softmax(logits[:, l:], axis=1))
    return pull(a_pos, y_pos) - pull(a_neg, y_negs)

  # bidirectional: geometric mean of a row softmax (over all targets) and a column softmax
  # (over the generated batch).
  a = jnp.exp(0.5 * (_log_softmax(logits, axis=1) + _log_softmax(logits, axis=0)))
  if floor > 0:
    # As in the official code the floor lifts every entry, self pairs included; targets of
    # weight 0 stay out.
    a = jnp.where(target_logw[None, :] > -jnp.inf, jnp.maximum(a, math.sqrt(floor)), 0.0)
  a_neg, a_pos = a[:, :l], a[:, l:]
  s_neg = jnp.sum(a_neg, axis=1, keepdims=True)
  s_pos = jnp.sum(a_pos, axis=1, keepdims=True)
  return s_neg * pull(a_pos, y_pos) - s_pos * pull(a_neg, y_negs)


# Eager calls (notebooks) run compiled; under a caller's jit these are simply inlined.
_field_jit = jax.jit(_field, static_argnames=("self_negatives", "kernel", "normalization",
                                              "floor"))


def _check_field_args(x, y_pos, y_neg, temperature, kernel, normalization, floor,
                      pos_weights, neg_weights) -> None:
  _check_points("x", x, None)
  _check_points("y_pos", y_pos, x.shape[1])
  if y_neg is not None:
    _check_points("y_neg", y_neg, x.shape[1])
  _check_positive("temperature", temperature)
  _check_choice("kernel", kernel, KERNELS)
  _check_choice("normalization", normalization, NORMALIZATIONS)
  if not 0 <= floor < 1:
    raise ValueError(f"floor must be in [0, 1), got {floor!r}")
  _check_weights("pos_weights", pos_weights, y_pos.shape[0])
  if neg_weights is not None and y_neg is None:
    raise ValueError("neg_weights given without negatives to weigh")
  if y_neg is not None:
    _check_weights("neg_weights", neg_weights, y_neg.shape[0])


# ---------------------------------------------------------------------------------------------
# Public pure functions.


def drift_field(x: Array, y_pos: Array, y_neg: Array | None = None, *, temperature: float,
                kernel: str = "laplace", normalization: str = "mean_shift", floor: float = 0.0,
                pos_weights: Array | None = None, neg_weights: Array | None = None) -> Array:
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
    pos_weights, neg_weights: optional per-target weights (multiply the kernel).
  """
  x, y_pos = jnp.asarray(x, jnp.float32), jnp.asarray(y_pos, jnp.float32)
  y_neg = None if y_neg is None else jnp.asarray(y_neg, jnp.float32)
  _check_field_args(x, y_pos, y_neg, temperature, kernel, normalization, floor, pos_weights,
                    neg_weights)
  return _field_jit(x, y_pos, y_neg, self_negatives=y_neg is None, temperature=temperature,
                kernel=kernel, normalization=normalization, floor=floor,
                pos_weights=pos_weights, neg_weights=neg_weights)


def _chain(x: Array, y_pos: Array, extra_negatives: Array | None, *, num_lookahead: int,
           step_size: float, **field_kw) -> Array:
  """[k+1, N, D] terms V_i = V_{p,q_i}(x^i), x^{i+1} = x^i + η V_i (§3), negatives = x^i."""

  def step(xi, _):
    v = _field(xi, y_pos, extra_negatives, self_negatives=True, **field_kw)
    return xi + step_size * v, v

  _, terms = jax.lax.scan(step, x, None, length=num_lookahead + 1)
  return terms


_chain_jit = jax.jit(_chain, static_argnames=("num_lookahead", "kernel", "normalization",
                                              "floor"))


def lookahead_drift(x: Array, y_pos: Array, *, num_lookahead: int, temperature: float,
                    kernel: str = "laplace", normalization: str = "mean_shift",
                    step_size: float = 1.0, floor: float = 0.0,
                    extra_negatives: Array | None = None, neg_weights: Array | None = None,
                    pos_weights: Array | None = None) -> Array:
  """The lookahead chain of drifting.md §3 (lookahead paper eq. 7), [num_lookahead + 1, N, D].

  Term i is the drifting field at x^i, where x^0 = x and x^{i+1} = x^i + step_size · V_i. The
  negatives of every term are the pushed batch x^i itself (self excluded), plus the optional
  `extra_negatives` [L, D] (with `neg_weights`), which stay where they are.
  `num_lookahead=0` is the original drifting model: `[drift_field(x, y_pos)]`.
  """
  if isinstance(num_lookahead, bool) or not isinstance(num_lookahead, (int, np.integer)):
    raise ValueError(f"num_lookahead must be a non-negative int, got {num_lookahead!r}")
  if num_lookahead < 0:
    raise ValueError(f"num_lookahead must be >= 0, got {num_lookahead}")
  x, y_pos = jnp.asarray(x, jnp.float32), jnp.asarray(y_pos, jnp.float32)
  if extra_negatives is not None:
    extra_negatives = jnp.asarray(extra_negatives, jnp.float32)
  _check_field_args(x, y_pos, extra_negatives, temperature, kernel, normalization, floor,
                    pos_weights, neg_weights)
  return _chain_jit(x, y_pos, extra_negatives, num_lookahead=int(num_lookahead),
                step_size=step_size, temperature=temperature, kernel=kernel,
                normalization=normalization, floor=floor, pos_weights=pos_weights,
                neg_weights=neg_weights)


# ---------------------------------------------------------------------------------------------
# The training loss (§3-4).


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Settings of `drift_loss`; frozen and hashable, so it can be a static jit argument.

  term_scaling: how the chain's terms are brought to comparable magnitudes before they are
    weighted and summed: "none" (raw, as in eq. 6) or "unit_rms" (each term divided by its
    RMS per dimension). term_weights: w_i, one per term (default all 1).
  """
  temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)
  kernel: str = "laplace"
  normalization: str = "bidirectional"
  floor: float = 1e-6
  num_lookahead: int = 0
  step_size: float = 1.0
  term_weights: tuple[float, ...] | None = None
  term_scaling: str = "none"
  feature_normalization: bool = True
  drift_normalization: bool = True

  def __post_init__(self):
    temps = tuple(float(t) for t in np.atleast_1d(self.temperatures))
    object.__setattr__(self, "temperatures", temps)
    if not temps or min(temps) <= 0:
      raise ValueError(f"temperatures must be a non-empty list of values > 0, got {temps}")
    _check_choice("kernel", self.kernel, KERNELS)
    _check_choice("normalization", self.normalization, NORMALIZATIONS)
    _check_choice("term_scaling", self.term_scaling, TERM_SCALINGS)
    if not 0 <= self.floor < 1:
      raise ValueError(f"floor must be in [0, 1), got {self.floor!r}")
    if isinstance(self.num_lookahead, bool) or int(self.num_lookahead) != self.num_lookahead \
        or self.num_lookahead < 0:
      raise ValueError(f"num_lookahead must be a non-negative int, got {self.num_lookahead!r}")
    object.__setattr__(self, "num_lookahead", int(self.num_lookahead))
    if self.step_size <= 0:
      raise ValueError(f"step_size must be > 0, got {self.step_size!r}")
    if self.term_weights is not None:
      w = tuple(float(v) for v in self.term_weights)
      if len(w) != self.num_lookahead + 1:
        raise ValueError(f"term_weights needs num_lookahead + 1 = {self.num_lookahead + 1} "
                         f"values, got {len(w)}")
      object.__setattr__(self, "term_weights", w)


def _as_groups(feats: Any, name: str) -> dict[str, Array]:
  """dict name -> [G, N, D]; a bare [N, D] or [G, N, D] array becomes one entry."""
  if feats is None:
    return {}
  if not isinstance(feats, Mapping):
    feats = {"features": feats}
  out = {}
  for key, f in feats.items():
    f = jnp.asarray(f)
    if f.ndim == 2:
      f = f[None]
    if f.ndim != 3:
      raise ValueError(f"{name}[{key!r}] must have shape [groups, samples, dim] or "
                       f"[samples, dim], got {f.shape}")
    out[key] = f.astype(jnp.float32)
  return out


def _rms(v: Array, axes: tuple[int, ...]) -> Array:
  """sqrt(E v²) over `axes`, kept for broadcasting: E‖V‖²/D for a field."""
  return jnp.sqrt(jnp.mean(jnp.square(v), axis=axes, keepdims=True) + _EPS)


def _feature_scale(x: Array, targets: Array, target_w: Array) -> Array:
  """Mean distance from generated features to every target (the batch itself included), / √D."""

  def one_group(xg, tg):
    return jnp.sum(_cost(xg, tg, "laplace") * target_w[None, :]) / (
        xg.shape[0] * jnp.sum(target_w))

  mean_dist = jnp.mean(jax.vmap(one_group)(x, targets))
  return jnp.maximum(mean_dist / math.sqrt(x.shape[-1]), _EPS)


def _group_loss(x: Array, pos: Array, neg: Array | None, neg_w: Array | None,
                sample_w: Array, cfg: LossConfig) -> tuple[Array, dict[str, Array]]:
  """Loss of one feature map: G independent groups [G, N, D] that share one scale (§4)."""
  g, n, d = x.shape
  # Only the generated features carry gradient: targets, scale and the chain are constants.
  xs, pos = jax.lax.stop_gradient(x), jax.lax.stop_gradient(pos)
  neg = None if neg is None else jax.lax.stop_gradient(neg)
  if cfg.feature_normalization:
    parts, weights = [xs, pos], [jnp.ones((n + pos.shape[1],))]
    if neg is not None:
      parts.append(neg)
      weights.append(jnp.ones((neg.shape[1],)) if neg_w is None else neg_w)
    scale = _feature_scale(xs, jnp.concatenate(parts, 1), jnp.concatenate(weights))
    # τ acts on distances divided by their mean: on features divided by `scale` (mean
    # distance √D) that is τ√D for the laplace kernel and τD for the gaussian one.
    temp_factor = math.sqrt(d) if cfg.kernel == "laplace" else float(d)
  else:
    scale, temp_factor = jnp.float32(1.0), 1.0
  xn, posn = x / scale, pos / scale
  negn = None if neg is None else neg / scale
  temps = jnp.asarray(cfg.temperatures, jnp.float32) * temp_factor

  def chain(xg, pg, ng, t):
    return _chain(xg, pg, ng, num_lookahead=cfg.num_lookahead, step_size=cfg.step_size,
                  temperature=t, kernel=cfg.kernel, normalization=cfg.normalization,
                  floor=cfg.floor, neg_weights=neg_w)

  over_groups = jax.vmap(chain, in_axes=(0, 0, None if negn is None else 0, None))
  terms = jax.vmap(over_groups, in_axes=(None, None, None, 0))(
      jax.lax.stop_gradient(xn), posn, negn, temps)  # [T, G, K+1, N, D]
  term_rms = _rms(terms, (1, 3, 4))                    # [T, 1, K+1, 1, 1]
  if cfg.term_scaling == "unit_rms":
    terms = terms / term_rms
  w = jnp.asarray(cfg.term_weights or (1.0,) * (cfg.num_lookahead + 1), jnp.float32)
  per_temp = jnp.einsum("tgknd,k->tgnd", terms, w)
  temp_rms = _rms(per_temp, (1, 2, 3))                 # [T, 1, 1, 1]
  if cfg.drift_normalization:
    per_temp = per_temp / temp_rms
  target = jax.lax.stop_gradient(xn + jnp.sum(per_temp, axis=0))
  err = jnp.mean(jnp.square(xn - target), axis=-1)   # [G, N]
  loss = jnp.sum(jnp.mean(err * sample_w[None, :], axis=1))
  metrics = {"feature_scale": scale}
  for i in range(cfg.num_lookahead + 1):
    metrics[f"drift_rms/term{i}"] = jnp.mean(term_rms[:, 0, i])
  for j, t in enumerate(cfg.temperatures):
    metrics[f"drift_rms/temp{t:g}"] = temp_rms[j, 0, 0, 0]
  return loss, metrics


def drift_loss(gen_feats: Any, pos_feats: Any, *, config: LossConfig = LossConfig(),
               neg_feats: Any = None, neg_weights: Array | None = None,
               sample_weights: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """The drifting (k = 0) or lookahead (k >= 1) training loss over feature groups.

  gen_feats: dict name -> [G, N, D] (G independent groups of one feature map, sharing D and one
    feature scale) or one array [G, N, D] / [N, D]. Gradients flow through these only.
  pos_feats: the same names, [G, M, D]. neg_feats: optional extra fixed negatives, [G, L, D],
    with `neg_weights` [L] (e.g. guidance). sample_weights: optional [N] weights w_i.
  Returns the scalar loss, Σ over groups of mean_i w_i ‖x_i − sg(x_i + V_i)‖² / D, and metrics.
  """
  gen = _as_groups(gen_feats, "gen_feats")
  pos = _as_groups(pos_feats, "pos_feats")
  neg = _as_groups(neg_feats, "neg_feats")
  if not gen:
    raise ValueError("gen_feats is empty")
  if set(pos) != set(gen) or (neg and set(neg) != set(gen)):
    raise ValueError(f"pos_feats/neg_feats must have the groups of gen_feats {sorted(gen)}, got "
                     f"{sorted(pos)} / {sorted(neg)}")
  n = next(iter(gen.values())).shape[1]
  _check_weights("sample_weights", sample_weights, n)
  sample_w = jnp.ones((n,)) if sample_weights is None else jnp.asarray(sample_weights,
                                                                         jnp.float32)
  if neg_weights is not None and not neg:
    raise ValueError("neg_weights given without neg_feats")
  for key, x in gen.items():
    p, ng = pos[key], neg.get(key)
    if x.shape[1] != n:
      raise ValueError(f"gen_feats[{key!r}] has {x.shape[1]} samples, expected {n}")
    if p.shape[0] != x.shape[0] or p.shape[2] != x.shape[2]:
      raise ValueError(f"pos_feats[{key!r}] has shape {p.shape}, incompatible with gen_feats "
                       f"{x.shape}: groups and feature dimension must match")
    if ng is not None:
      if ng.shape[0] != x.shape[0] or ng.shape[2] != x.shape[2]:
        raise ValueError(f"neg_feats[{key!r}] has shape {ng.shape}, incompatible with "
                         f"gen_feats {x.shape}")
      _check_weights("neg_weights", neg_weights, ng.shape[1])
  neg_w = None if neg_weights is None else jnp.asarray(neg_weights, jnp.float32)
  return _loss(gen, pos, neg, neg_w, sample_w, config)


@jax.jit(static_argnames=("config",))
def _loss(gen, pos, neg, neg_w, sample_w, config):
  total, metrics = jnp.float32(0.0), {}
  for key, x in gen.items():  # feature maps differ in D: a short Python loop, vmap within
    loss, m = _group_loss(x, pos[key], neg.get(key), neg_w, sample_w, config)
    total = total + loss
    metrics[f"loss/{key}"] = loss
    for name, value in m.items():
      if name == "feature_scale":
        metrics[f"feature_scale/{key}"] = value
      else:  # averaged over feature maps
        metrics[name] = metrics.get(name, 0.0) + value / len(gen)
  metrics["loss"] = total
  return total, metrics
