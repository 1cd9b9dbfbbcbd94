"""The training loss over feature groups (docs/drifting.md §3-4; lookahead paper eq. 6).

For each feature map: features divided by one shared scale s (the mean distance per √D), a
lookahead chain per row and temperature, the terms summed with weights w_i, each temperature's
sum divided by its RMS, and the loss ‖x − sg(x + Σ_τ V_τ)‖² / D. Execution (dense or streaming,
groups per pass) comes from `plan.py` and never changes the numbers.

    loss, metrics = drift_loss({"pixels": x[None]}, {"pixels": y[None]}, config=LossConfig())

With term_scaling="norm" and norm_momentum > 0 the loss keeps running term norms across steps:

    state = init_loss_state(config, ["pixels"])
    loss, metrics, state = drift_loss(gen, pos, config=config, loss_state=state)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_drift.drift import field
from lookahead_drift.drift import plan as plan_lib
from lookahead_drift.drift import streaming
from lookahead_drift.drift.checks import check_choice, check_shape
from lookahead_drift.drift.field import CHAINS, EPS, FieldSpec

Array = jax.Array

TERM_SCALINGS = ("none", "unit_rms", "norm")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Settings of `drift_loss`; frozen and hashable, so it can be a static jit argument.

  The maths: temperatures, kernel, normalization and floor (see `drift_field`); num_lookahead
  k and step_size η (eq. 7); term_weights w_i, one per term (default all 1, as in eq. 6);
  term_scaling "none" (the raw sum of eq. 6), "unit_rms" (each term divided by its RMS per
  dimension before weighting: our extension, not the paper's) or "norm" (the authors' scaling
  (review reply): each term divided by its Euclidean norm, per feature map, term and
  temperature, over rows, samples and dims); norm_momentum m in [0, 1): "norm" divides by a
  running norm m·running + (1 − m)·current kept in the loss state (0: this step's norms);
  lookahead_tol >= 0: the adaptive chain, which stops once ‖V_i‖ < tol·‖V_0‖ (k = num_lookahead
  at most; 0: the fixed chain, our extension); chain "per_temperature" (each
  temperature's own chain) or "summed" (one chain pushed by the summed, normalised field: a
  control, §3); neg_weighting, where the extra negatives' weights enter: "affinity" (the
  official code's placement) or "kernel" (k times w), §4; feature_normalization and
  drift_normalization (§4).
  Execution, read only by `plan_of` (see `plan.Execution`): field_impl ("auto", "dense",
  "streaming"), memory_budget_mb, group_chunk, block_size, matmul_precision (None: the
  distance products at "highest", the other matmuls at JAX's default; "default", "high" or
  "highest": all of them, for accelerators, where the lower ones trade accuracy for speed).
  """
  temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)
  kernel: str = "laplace"
  normalization: str = "bidirectional"
  floor: float = 1e-6
  num_lookahead: int = 0
  step_size: float = 1.0
  term_weights: tuple[float, ...] | None = None
  term_scaling: str = "none"
  norm_momentum: float = 0.0
  lookahead_tol: float = 0.0
  chain: str = "per_temperature"
  neg_weighting: str = "affinity"
  feature_normalization: bool = True
  drift_normalization: bool = True
  field_impl: str = "auto"
  memory_budget_mb: float = 0.0
  group_chunk: int = 0
  block_size: int = 1024
  matmul_precision: str | None = None

  def __post_init__(self):
    temps = tuple(float(t) for t in np.atleast_1d(self.temperatures))
    object.__setattr__(self, "temperatures", temps)
    if not temps or min(temps) <= 0:
      raise ValueError(f"temperatures must be a non-empty list of values > 0, got {temps}")
    check_choice("term_scaling", self.term_scaling, TERM_SCALINGS)
    check_choice("chain", self.chain, CHAINS)
    _ = self.field_spec, self.execution  # their own checks
    if isinstance(self.num_lookahead, bool) or int(self.num_lookahead) != self.num_lookahead \
        or self.num_lookahead < 0:
      raise ValueError(f"num_lookahead must be a non-negative int, got {self.num_lookahead!r}")
    object.__setattr__(self, "num_lookahead", int(self.num_lookahead))
    if self.step_size <= 0:
      raise ValueError(f"step_size must be > 0, got {self.step_size!r}")
    if not 0 <= self.norm_momentum < 1:
      raise ValueError(f"norm_momentum must be in [0, 1), got {self.norm_momentum!r}")
    if self.norm_momentum and self.term_scaling != "norm":
      raise ValueError(f"norm_momentum={self.norm_momentum!r} needs term_scaling='norm', got "
                       f"term_scaling={self.term_scaling!r}")
    if not self.lookahead_tol >= 0:
      raise ValueError(f"lookahead_tol must be >= 0, got {self.lookahead_tol!r}")
    if self.term_weights is not None:
      w = tuple(float(v) for v in self.term_weights)
      if len(w) != self.num_lookahead + 1:
        raise ValueError(f"term_weights needs num_lookahead + 1 = {self.num_lookahead + 1} "
                         f"values, got {len(w)}")
      object.__setattr__(self, "term_weights", w)

  @property
  def stateful(self) -> bool:
    """Whether the loss keeps state across steps (running term norms)."""
    return self.term_scaling == "norm" and self.norm_momentum > 0

  @property
  def field_spec(self) -> FieldSpec:
    return FieldSpec(kernel=self.kernel, normalization=self.normalization, floor=self.floor,
                     weighting=self.neg_weighting)

  @property
  def execution(self) -> plan_lib.Execution:
    return plan_lib.Execution(impl=self.field_impl, memory_budget_mb=self.memory_budget_mb,
                              group_chunk=self.group_chunk, block_size=self.block_size,
                              matmul_precision=self.matmul_precision)


def plan_of(config: LossConfig, *, n: int, num_targets: int, num_groups: int = 1
            ) -> plan_lib.Plan:
  """How a feature map of num_groups groups (n samples, num_targets targets each) runs."""
  return plan_lib.make_plan(config.execution, n=n, num_targets=num_targets,
                            num_temps=len(config.temperatures), num_groups=num_groups)


# ---------------------------------------------------------------------------------------------
# The maths of §3-4.


def feature_scale(dist_sums: Array, target_w: Array, n: int, d: int) -> Array:
  """s = Σ_rij w_rj ‖x_ri − t_rj‖ / (N Σ_rj w_rj) / √D, pooled over all rows (the official
  code's formula); dist_sums [R] holds each row's Σ_ij w_j ‖x_i − t_j‖."""
  mean = jnp.sum(dist_sums) / (n * jnp.sum(target_w))
  return jnp.maximum(mean / math.sqrt(d), EPS)


def weighted_distance_sum(d2: Array, w: Array) -> Array:
  """Σ_ij w_j ‖x_i − t_j‖ from squared distances [..., N, L] and weights [..., L]."""
  return jnp.sum(field.dist(d2) * w[..., None, :], (-2, -1))


def temperatures(config: LossConfig, scale: Array, d: int) -> Array:
  """[T]: τ acts on distances divided by their mean (s·√D); on raw features that is τ·√D·s
  (laplace) or τ·D·s² (gaussian)."""
  temps = jnp.asarray(config.temperatures, jnp.float32)
  if not config.feature_normalization:
    return temps
  return temps * (math.sqrt(d) * scale if config.kernel == "laplace" else d * scale**2)


def running_norms(running: Array | None, current: Array, momentum: float) -> Array:
  """m·running + (1 − m)·current per entry. An entry still 0 (not seen yet) takes current (no
  zero bias); a term that is 0 this step (every chain stopped before it) keeps its running norm."""
  if running is None:
    return current
  smoothed = momentum * running + (1.0 - momentum) * current
  return jnp.where(running > 0, jnp.where(current > 0, smoothed, running), current)


def regression_loss(x: Array, terms: Array, scale: Array, sample_w: Array, config: LossConfig,
                    num_classes: int, running: Array | None = None
                    ) -> tuple[Array, dict[str, Array], Array | None]:
  """Eq. 6 per temperature, each sum divided by its RMS (drift normalisation), then
  Σ_rows mean_i w_i ‖x_i − sg(x_i + Σ_τ V_τ)‖² / D / num_classes, on x / s.

  x [R, N, D] (with gradient), terms [R, K+1, T, N, D] in normalised feature space.
  term_scaling "norm": terms divided by their norms [K+1, T] (`running_norms` of `running`),
  which are returned (None for the other scalings).
  """
  # Sums over terms and temperatures as einsums (matmuls): XLA on CPU reduces a middle axis
  # slowly.
  term_rms = field.rms(terms, (0, 3, 4))[0, :, :, 0, 0]              # [K+1, T]
  w = jnp.asarray(config.term_weights or (1.0,) * (config.num_lookahead + 1), jnp.float32)
  norms = None
  if config.term_scaling == "norm":
    current = jnp.sqrt(jnp.sum(jnp.square(terms), axis=(0, 3, 4)))  # [K+1, T]
    norms = running_norms(running, current, config.norm_momentum)
    coef = w[:, None] / jnp.maximum(norms, EPS)
  elif config.term_scaling == "unit_rms":
    coef = w[:, None] / term_rms
  else:
    coef = jnp.broadcast_to(w[:, None], term_rms.shape)
  per_temp = jnp.einsum("gktnd,kt->gtnd", terms, coef)
  temp_rms = field.rms(per_temp, (0, 2, 3))[0, :, 0, 0]             # [T]
  temp_w = 1.0 / temp_rms if config.drift_normalization else jnp.ones_like(temp_rms)
  xn = x / scale
  target = jax.lax.stop_gradient(xn + jnp.einsum("gtnd,t->gnd", per_temp, temp_w))
  err = jnp.mean(jnp.square(xn - target), axis=-1)                   # [R, N]
  # Σ over feature groups, mean over classes (= the per-class losses' mean).
  loss = jnp.sum(jnp.mean(err * sample_w, axis=1)) / num_classes
  metrics = {"feature_scale": scale}
  for i in range(config.num_lookahead + 1):
    metrics[f"drift_rms/term{i}"] = jnp.mean(term_rms[i])
  for j, t in enumerate(config.temperatures):
    metrics[f"drift_rms/temp{t:g}"] = temp_rms[j]
  return loss, metrics, norms


# ---------------------------------------------------------------------------------------------
# One feature map, as the plan says.


def _targets(x: Array, pos: Array, neg: Array | None) -> Array:
  """[x; neg; pos]: the order of `field.targets`, so one distance matrix serves both."""
  return jnp.concatenate([x] + ([] if neg is None else [neg]) + [pos])


def _distance_sum(x: Array, targets: Array, w: Array, plan: plan_lib.Plan) -> Array:
  x, targets = field.centred(x, targets)
  if plan.impl == "streaming":
    return streaming.distance_sum(x, targets, w, plan.block_size, plan.distance_precision)
  return weighted_distance_sum(field.sq_dist(x, targets, plan.distance_precision), w)


def _terms(xs, pos, neg, neg_w, target_w, config: LossConfig, plan: plan_lib.Plan):
  """Every row's chain [R, K+1, T, N, D] on normalised features, the terms each chain used
  ([R, T], or [R] for the summed chain) and the shared scale s.

  Dense with every row in one pass: one distance matrix per row gives both s and each
  temperature's first term. Otherwise passes of `plan.groups_per_pass` rows (lax.map): one for
  s (distances only), then the chains.
  """
  rows, n, d = xs.shape
  spec, fields_fn = config.field_spec, plan_lib.fields_for(plan)
  scale_of = lambda sums: (feature_scale(sums, target_w, n, d) if config.feature_normalization
                           else jnp.float32(1.0))

  def chain(xg, pg, ng, wg, scale, d2=None):
    temps, kw = temperatures(config, scale, d), dict(self_neg=True, neg_w=wg)
    first = None if d2 is None else field.fields(xg, pg, ng, temps, spec, d2=d2, **kw)
    terms, used = field.lookahead_chain(
        lambda xi, t: fields_fn(xi, pg, ng, t, spec, **kw), xg, temps, first=first,
        num_lookahead=config.num_lookahead, step_size=config.step_size,
        chain=config.chain, tol=config.lookahead_tol)
    return terms / scale, used                                         # [K+1, T, N, D]

  groups = (xs, pos, neg, neg_w)
  if plan.impl == "dense" and plan.groups_per_pass >= rows:
    d2 = jax.vmap(lambda xg, pg, ng: field.sq_dist(*field.centred(xg, _targets(xg, pg, ng)),
                                                   plan.distance_precision))(
        xs, pos, neg)                                                  # [R, N, n + L + M]
    scale = scale_of(weighted_distance_sum(d2, target_w))
    terms, used = jax.vmap(lambda xg, pg, ng, wg, dg: chain(xg, pg, ng, wg, scale, dg))(
        *groups, d2)
  else:
    scale = scale_of(jax.lax.map(
        lambda a: _distance_sum(a[0], _targets(*a[:3]), a[4], plan), groups + (target_w,),
        batch_size=plan.groups_per_pass))
    terms, used = jax.lax.map(lambda a: chain(*a, scale), groups,
                              batch_size=plan.groups_per_pass)
  return terms, used, scale


def _map_loss(x: Array, pos: Array, neg: Array | None, neg_w: Array | None, sample_w: Array,
              config: LossConfig, num_classes: int, running: Array | None
              ) -> tuple[Array, dict[str, Array], Array | None]:
  """Loss of one feature map: R rows [R, N, D] (feature groups, or (class, group) pairs), each
  an independent drift problem sharing the scale and the drift normalisation (§4). neg_w
  [R, L] and sample_w [R, N] per row; running: this map's running term norms, or None."""
  rows, n, _ = x.shape
  # Only the generated features carry gradient: targets, scale and the chain are constants.
  xs, pos = jax.lax.stop_gradient(x), jax.lax.stop_gradient(pos)
  neg = None if neg is None else jax.lax.stop_gradient(neg)
  # Target weights in the order [x; neg; pos]; the scale weighs targets by them.
  ones = lambda k: jnp.ones((rows, k), jnp.float32)
  target_w = jnp.concatenate(
      [ones(n)] + ([] if neg is None else [ones(neg.shape[1]) if neg_w is None else neg_w])
      + [ones(pos.shape[1])], axis=1)                                  # [R, n + L + M]
  plan = plan_of(config, n=n, num_targets=target_w.shape[1], num_groups=rows)
  with plan_lib.matmul_scope(plan):
    terms, used, scale = _terms(xs, pos, neg, neg_w, target_w, config, plan)
    loss, metrics, norms = regression_loss(x, terms, scale, sample_w, config, num_classes,
                                           running)
  if config.lookahead_tol > 0:
    metrics["lookahead/terms_used"] = jnp.mean(used.astype(jnp.float32))
  return loss, metrics, norms


# ---------------------------------------------------------------------------------------------
# The public loss.


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
    check_shape(f"{name}[{key!r}]", f, (None, None, None, None),
                "[classes,] groups, samples, dim")
    out[key] = f
  return out


def _per_class(name: str, w: Any, c: int, k: int, what: str) -> Array | None:
  """Weights [k] or [c, k] as [c, k]; None stays None."""
  if w is None:
    return None
  w = jnp.asarray(w, jnp.float32)
  if w.shape != (k,):
    check_shape(name, w, (c, k), what)
  return jnp.broadcast_to(w, (c, k))


def init_loss_state(config: LossConfig, names: Any) -> dict[str, Any]:
  """The loss's state before the first step: {"term_norms": {name: zeros [K+1, T]}} (0: not
  seen yet) for each feature map name when `config.stateful`, else {} (no arrays)."""
  if not config.stateful:
    return {}
  shape = (config.num_lookahead + 1, len(config.temperatures))
  return {"term_norms": {name: jnp.zeros(shape, jnp.float32) for name in names}}


def drift_loss(gen_feats: Any, pos_feats: Any, *, config: LossConfig = LossConfig(),
               neg_feats: Any = None, neg_weights: Array | None = None,
               sample_weights: Array | None = None, loss_state: dict[str, Any] | None = None
               ) -> tuple[Array, dict[str, Array]] | tuple[Array, dict[str, Array], dict]:
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
  loss_state: the state across steps (`init_loss_state`, or the previous call's); with it the
    call returns (loss, metrics, new loss_state). Only term_scaling="norm" with
    norm_momentum > 0 reads it; without it such a loss uses this step's norms.
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
    check_shape(f"gen_feats[{key!r}]", x, (c, None, n, None), "classes, groups, samples, dim "
                "(the same classes and samples in every map)")
    for name, feats in (("pos_feats", pos), ("neg_feats", neg)):
      if key in feats:
        check_shape(f"{name}[{key!r}]", feats[key], (c, x.shape[1], None, x.shape[3]),
                    "classes, groups and dim of gen_feats")
  if neg_weights is not None and not neg:
    raise ValueError("neg_weights given without neg_feats")
  num_l = next(iter(neg.values())).shape[2] if neg else 0
  neg_w = _per_class("neg_weights", neg_weights, c, num_l,
                     "one per negative, or one vector per class [classes, negatives]")
  sample_w = _per_class("sample_weights", sample_weights, c, n,
                        "one per generated sample, or [classes, samples]")
  if loss_state is None:
    return _loss(gen, pos, neg, neg_w, sample_w, config)[:2]
  want = jax.tree.structure(init_loss_state(config, gen))
  if jax.tree.structure(loss_state) != want:
    raise ValueError(f"loss_state must have the structure of init_loss_state(config, "
                     f"{sorted(gen)}) ({want}), got {jax.tree.structure(loss_state)}")
  return _loss(gen, pos, neg, neg_w, sample_w, config, loss_state)


@jax.jit(static_argnames=("config",))
def _loss(gen, pos, neg, neg_w, sample_w, config, loss_state=None):
  total, metrics, norms = jnp.float32(0.0), {}, {}
  running = (loss_state or {}).get("term_norms", {})
  for key, x in gen.items():  # feature maps differ in D: a short Python loop, vmap within
    c, g = x.shape[:2]
    # Rows (class, group), class-major; per-class weights repeat over the class's groups.
    flat = lambda a: None if a is None else a.reshape((c * g,) + a.shape[2:])
    per_row = lambda a: None if a is None else jnp.repeat(a, g, axis=0)
    sw = jnp.ones((c * g, x.shape[2])) if sample_w is None else per_row(sample_w)
    loss, m, norms[key] = _map_loss(flat(x), flat(pos[key]), flat(neg.get(key)),
                                    per_row(neg_w), sw, config, c, running.get(key))
    total = total + loss
    metrics[f"loss/{key}"] = loss
    for name, value in m.items():
      if name == "feature_scale":
        metrics[f"feature_scale/{key}"] = value
      else:  # averaged over feature maps
        metrics[name] = metrics.get(name, 0.0) + value / len(gen)
  metrics["loss"] = total
  return total, metrics, {"term_norms": norms} if running else {}
