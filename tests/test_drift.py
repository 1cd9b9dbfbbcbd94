"""lookahead_drift.drift against an independent float64 NumPy reference written from drifting.md."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_drift import drift
from reference import (assert_close, ref_chain, ref_dist, ref_field, ref_loss,
                       ref_loss_and_norms)


@pytest.fixture(autouse=True, params=["dense", "streaming"])
def field_impl(request, monkeypatch):
  """Every test runs with the dense field and with the streaming one in tiles of 3 (uneven
  last tiles, tiles smaller than either side), whatever the library would pick."""
  if request.param == "streaming":
    make_plan = drift.plan.make_plan
    monkeypatch.setattr(drift.plan, "make_plan", lambda execution, **kw: make_plan(
        dataclasses.replace(execution, impl="streaming", block_size=3), **kw))
  jax.clear_caches()  # jitted losses are cached per LossConfig, whatever the implementation
  yield request.param
  jax.clear_caches()


def points(seed, n, d, shift=0.0, scale=1.0):
  return np.random.default_rng(seed).normal(shift, scale, size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("normalization", drift.NORMALIZATIONS)
@pytest.mark.parametrize("kernel", drift.KERNELS)
@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_field_matches_reference_self_negatives(normalization, kernel, tau):
  x, y = points(0, 16, 5), points(1, 12, 5, shift=0.7)
  got = drift.drift_field(x, y, temperature=tau, kernel=kernel, normalization=normalization)
  assert_close(got, ref_field(x, y, tau=tau, kernel=kernel, normalization=normalization))


@pytest.mark.parametrize("normalization", drift.NORMALIZATIONS)
def test_field_matches_reference_explicit_negatives(normalization):
  x, y, z = points(0, 10, 4), points(1, 7, 4, 1.0), points(2, 9, 4, -0.5)
  got = drift.drift_field(x, y, z, temperature=0.5, normalization=normalization)
  assert_close(got, ref_field(x, y, z, tau=0.5, normalization=normalization))


def test_bidirectional_floor_matches_reference_and_matters():
  x, y = points(3, 40, 8), points(4, 30, 8, 0.3)
  exact = drift.drift_field(x, y, temperature=1.0, normalization="bidirectional")
  floored = drift.drift_field(x, y, temperature=1.0, normalization="bidirectional", floor=1e-6)
  assert_close(floored, ref_field(x, y, tau=1.0, normalization="bidirectional", floor=1e-6))
  assert np.max(np.abs(np.asarray(floored) - np.asarray(exact))) > 1e-3


@pytest.mark.parametrize("normalization", drift.NORMALIZATIONS)
def test_anti_symmetry_and_zero_at_equality(normalization):
  x, a, b = points(5, 9, 3), points(6, 8, 3, 1.0), points(7, 8, 3, -1.0)
  v_ab = drift.drift_field(x, a, b, temperature=0.7, normalization=normalization)
  v_ba = drift.drift_field(x, b, a, temperature=0.7, normalization=normalization)
  np.testing.assert_allclose(v_ab, -v_ba, atol=1e-6)
  assert np.abs(v_ab).max() > 0.1  # the check above is not vacuous
  v_aa = drift.drift_field(x, a, a, temperature=0.7, normalization=normalization)
  np.testing.assert_allclose(v_aa, 0.0, atol=1e-6)


@pytest.mark.parametrize("weighting", drift.WEIGHTINGS)
@pytest.mark.parametrize("normalization", drift.NORMALIZATIONS)
def test_chain_matches_reference(normalization, weighting):
  x, y, extra = points(8, 12, 3, scale=2.0), points(9, 10, 3, 1.5), points(10, 4, 3, -2.0)
  neg_w = np.array([0.5, 2.0, 1.0, 0.0], np.float32)
  got = drift.lookahead_drift(x, y, num_lookahead=3, temperature=0.8, step_size=0.7,
                              normalization=normalization, extra_negatives=extra,
                              neg_weights=neg_w, floor=1e-6, weighting=weighting)
  want = ref_chain(x, y, k=3, tau=0.8, eta=0.7, extra=extra, neg_w=neg_w,
                   normalization=normalization, floor=1e-6, weighting=weighting)
  assert got.shape == (4, 12, 3)
  assert_close(got, want)
  assert not np.allclose(got[1], got[0], atol=1e-3)  # later terms are new information


def test_k0_is_plain_drifting():
  x, y = points(11, 10, 4), points(12, 6, 4, 1.0)
  chain = drift.lookahead_drift(x, y, num_lookahead=0, temperature=0.3)
  np.testing.assert_allclose(chain[0], drift.drift_field(x, y, temperature=0.3), atol=1e-6)
  loss0, _ = drift.drift_loss(x, y, config=drift.LossConfig(num_lookahead=0))
  loss_default, _ = drift.drift_loss(x, y)
  np.testing.assert_allclose(loss0, loss_default, rtol=1e-6)


@pytest.mark.parametrize("normalization", drift.NORMALIZATIONS)
def test_loss_gradient_is_analytic_in_unscaled_case(normalization):
  x, y = points(13, 12, 6), points(14, 9, 6, 0.5)
  w = np.linspace(0.5, 2.0, 12).astype(np.float32)
  cfg = drift.LossConfig(temperatures=(0.6,), normalization=normalization, floor=0.0,
                         feature_normalization=False, drift_normalization=False)
  grad = jax.grad(lambda x: drift.drift_loss(x, y, config=cfg, sample_weights=w)[0])(x)
  v = ref_field(x, y, tau=0.6, normalization=normalization)
  assert_close(grad, -2.0 / (12 * 6) * w[:, None] * v)


def test_gradient_flows_only_through_generated_features():
  x, y, z = points(15, 8, 3), points(16, 8, 3, 1.0), points(17, 5, 3)
  cfg = drift.LossConfig(num_lookahead=2)
  gy, gz = jax.grad(lambda y, z: drift.drift_loss(x, y, config=cfg, neg_feats=z)[0],
                    argnums=(0, 1))(y, z)
  assert np.all(np.asarray(gy) == 0) and np.all(np.asarray(gz) == 0)


@pytest.mark.parametrize("cfg", [
    drift.LossConfig(),
    drift.LossConfig(num_lookahead=2, normalization="mean_shift", floor=0.0),
    drift.LossConfig(num_lookahead=2, term_scaling="unit_rms", term_weights=(1.0, 0.5, 0.25),
                     step_size=0.5),
    drift.LossConfig(num_lookahead=1, kernel="gaussian", temperatures=(0.1, 0.3)),
    drift.LossConfig(num_lookahead=1, feature_normalization=False, drift_normalization=False,
                     temperatures=(1.0,)),
    drift.LossConfig(neg_weighting="kernel"),
    drift.LossConfig(num_lookahead=2, neg_weighting="kernel", normalization="mean_shift"),
    drift.LossConfig(num_lookahead=2, chain="summed", step_size=0.5),
])
def test_loss_matches_reference(cfg):
  rng = np.random.default_rng(18)
  x = rng.normal(size=(3, 10, 6)).astype(np.float32)
  pos = (rng.normal(size=(3, 14, 6)) + 0.5).astype(np.float32)
  neg = rng.normal(size=(3, 4, 6)).astype(np.float32)
  neg_w, sample_w = np.array([0.5, 1.0, 2.0, 0.3]), rng.uniform(0.5, 1.5, 10)
  loss, metrics = drift.drift_loss({"f": x}, {"f": pos}, config=cfg, neg_feats={"f": neg},
                                   neg_weights=neg_w, sample_weights=sample_w)
  want = ref_loss(x, pos, cfg=cfg, neg=neg, neg_w=neg_w, sample_w=sample_w)
  assert_close(loss, want, rtol=1e-4)
  assert set(metrics) >= {"loss", "feature_scale/f", "drift_rms/term0"}
  assert f"drift_rms/term{cfg.num_lookahead}" in metrics


def _loss_inputs(seed=18):
  """The inputs of test_loss_matches_reference: 3 rows, extra weighted negatives."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, 10, 6)).astype(np.float32)
  pos = (rng.normal(size=(3, 14, 6)) + 0.5).astype(np.float32)
  neg = rng.normal(size=(3, 4, 6)).astype(np.float32)
  return x, pos, neg, np.array([0.5, 1.0, 2.0, 0.3]), rng.uniform(0.5, 1.5, 10)


# The tolerances are at least 1.4 % away from every ratio ‖V_i‖ / ‖V_0‖ of these inputs'
# chains (float64), so float32 stops where float64 does; the terms used differ per chain.
@pytest.mark.parametrize("cfg", [
    drift.LossConfig(num_lookahead=2, term_scaling="norm"),
    drift.LossConfig(num_lookahead=2, term_scaling="norm", term_weights=(1.0, 0.5, 2.0),
                     drift_normalization=False, temperatures=(0.05, 0.2)),
    drift.LossConfig(num_lookahead=3, step_size=0.5, lookahead_tol=0.6),
    drift.LossConfig(num_lookahead=3, step_size=0.5, lookahead_tol=0.6, term_scaling="norm"),
    drift.LossConfig(num_lookahead=3, step_size=0.5, lookahead_tol=0.9, chain="summed"),
])
def test_norm_scaling_and_adaptive_chain_match_reference(cfg):
  x, pos, neg, neg_w, sample_w = _loss_inputs()
  kw = dict(neg_weights=neg_w, sample_weights=sample_w)
  (loss, metrics), grad = jax.value_and_grad(lambda x: drift.drift_loss(
      {"f": x}, {"f": pos}, config=cfg, neg_feats={"f": neg}, **kw), has_aux=True)(x)
  want, _, used = ref_loss_and_norms(x, pos, cfg=cfg, neg=neg, neg_w=neg_w, sample_w=sample_w)
  assert_close(loss, want, rtol=1e-4)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  if cfg.lookahead_tol:
    assert 1 < used < cfg.num_lookahead + 1  # the chains stop, not all at once
    np.testing.assert_allclose(metrics["lookahead/terms_used"], used, rtol=1e-6)
  else:
    assert "lookahead/terms_used" not in metrics


def test_norm_momentum_over_two_steps_matches_reference():
  """The running norms start at the first step's norms and then move by m (float64)."""
  cfg = drift.LossConfig(num_lookahead=2, term_scaling="norm", norm_momentum=0.7)
  state = drift.init_loss_state(cfg, ["f"])
  np.testing.assert_array_equal(state["term_norms"]["f"], np.zeros((3, 3)))
  running = np.zeros((3, 3))
  for seed in (18, 19):
    x, pos, neg, neg_w, sample_w = _loss_inputs(seed)
    loss, _, state = drift.drift_loss({"f": x}, {"f": pos}, config=cfg, neg_feats={"f": neg},
                                      neg_weights=neg_w, sample_weights=sample_w,
                                      loss_state=state)
    want, running, _ = ref_loss_and_norms(x, pos, cfg=cfg, neg=neg, neg_w=neg_w,
                                          sample_w=sample_w, running=running)
    assert_close(loss, want, rtol=1e-4)
    assert_close(state["term_norms"]["f"], running, rtol=1e-4)
  # The second step's norms are smoothed: without the state it is another loss.
  fresh, _ = drift.drift_loss({"f": x}, {"f": pos}, config=cfg, neg_feats={"f": neg},
                              neg_weights=neg_w, sample_weights=sample_w)
  assert abs(float(fresh) - float(loss)) > 1e-4 * float(loss)


@pytest.mark.parametrize("chain", drift.CHAINS)
def test_lookahead_tol_0_is_the_fixed_chain_exactly(chain):
  """tol = 0 is the fixed chain, and so is the adaptive loop whose tolerance never stops it:
  loss and gradient bit for bit."""
  x, pos, neg, neg_w, sample_w = _loss_inputs()

  def loss_and_grad(cfg):
    return jax.value_and_grad(lambda x: drift.drift_loss(
        {"f": x}, {"f": pos}, config=cfg, neg_feats={"f": neg}, neg_weights=neg_w,
        sample_weights=sample_w)[0])(x)

  fixed = loss_and_grad(drift.LossConfig(num_lookahead=2, chain=chain))
  for tol in (0.0, 1e-30):
    got = loss_and_grad(drift.LossConfig(num_lookahead=2, chain=chain, lookahead_tol=tol))
    np.testing.assert_array_equal(got[0], fixed[0])
    np.testing.assert_array_equal(got[1], fixed[1])


def test_loss_state_is_empty_unless_norm_momentum_and_checked():
  x, y = points(37, 8, 3), points(38, 6, 3, 1.0)
  for cfg in (drift.LossConfig(num_lookahead=1), drift.LossConfig(term_scaling="norm")):
    assert drift.init_loss_state(cfg, ["features"]) == {}
    loss, _, state = drift.drift_loss(x, y, config=cfg, loss_state={})
    assert state == {}
    np.testing.assert_array_equal(loss, drift.drift_loss(x, y, config=cfg)[0])
  cfg = drift.LossConfig(term_scaling="norm", norm_momentum=0.5)
  with pytest.raises(ValueError, match="loss_state"):
    drift.drift_loss(x, y, config=cfg, loss_state={})
  with pytest.raises(ValueError, match="loss_state"):
    drift.drift_loss(x, y, config=cfg, loss_state=drift.init_loss_state(cfg, ["other"]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(term_scaling="norm", norm_momentum=1.0), "norm_momentum"),
    (dict(term_scaling="norm", norm_momentum=-0.1), "norm_momentum"),
    (dict(norm_momentum=0.9), "norm_momentum.*term_scaling='norm'"),
    (dict(lookahead_tol=-0.1), "lookahead_tol"),
    (dict(lookahead_tol=float("nan")), "lookahead_tol"),
])
def test_bad_loss_options_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    drift.LossConfig(**kwargs)


@pytest.mark.parametrize("normalization", drift.NORMALIZATIONS)
def test_weight_zero_negative_keeps_row_mass_only_with_affinity_weighting(normalization):
  """"affinity": a weight-0 negative still takes its share of the softmaxes (the official
  placement), so the field differs from the field without it; "kernel": it drops out."""
  x, y, z = points(30, 9, 3), points(31, 7, 3, 0.8), points(32, 3, 3, -0.5)
  w = np.array([1.0, 0.0, 2.0], np.float32)
  kw = dict(temperature=0.6, normalization=normalization, floor=1e-6)
  without = drift.lookahead_drift(x, y, num_lookahead=0, extra_negatives=z[[0, 2]],
                                  neg_weights=w[[0, 2]], weighting="kernel", **kw)
  kernel = drift.lookahead_drift(x, y, num_lookahead=0, extra_negatives=z, neg_weights=w,
                                 weighting="kernel", **kw)
  affinity = drift.lookahead_drift(x, y, num_lookahead=0, extra_negatives=z, neg_weights=w,
                                   **kw)
  np.testing.assert_allclose(kernel, without, atol=1e-6)
  assert np.max(np.abs(np.asarray(affinity) - np.asarray(without))) > 1e-3
  assert_close(affinity[0], ref_chain(x, y, k=0, tau=0.6, extra=z, neg_w=w,
                                      normalization=normalization, floor=1e-6,
                                      weighting="affinity")[0])


def test_summed_chain_k0_is_the_per_temperature_loss():
  x, y = points(33, 10, 5), points(34, 8, 5, 0.5)
  per_t, _ = drift.drift_loss(x, y, config=drift.LossConfig())
  summed, _ = drift.drift_loss(x, y, config=drift.LossConfig(chain="summed"))
  np.testing.assert_allclose(summed, per_t, rtol=1e-6)
  k2 = [drift.drift_loss(x, y, config=drift.LossConfig(num_lookahead=2, chain=c))[0]
        for c in drift.CHAINS]
  assert abs(float(k2[0]) - float(k2[1])) > 1e-4 * abs(float(k2[0]))


@pytest.mark.parametrize("weighting", drift.WEIGHTINGS)
def test_class_conditional_loss_matches_reference(weighting):
  """[C, G, N, D]: C·G rows with their own positives, negatives and per-class weights, one
  shared scale and drift normalisation, mean over classes."""
  rng = np.random.default_rng(35)
  c, g, n, m, l, d = 3, 2, 6, 5, 4, 4
  x = rng.normal(size=(c, g, n, d)).astype(np.float32)
  pos = (rng.normal(size=(c, g, m, d)) + np.arange(c)[:, None, None, None]).astype(np.float32)
  neg = rng.normal(size=(c, g, l, d)).astype(np.float32)
  neg_w = rng.uniform(0.0, 3.0, (c, l)).astype(np.float32)
  sample_w = rng.uniform(0.5, 1.5, (c, n)).astype(np.float32)
  cfg = drift.LossConfig(num_lookahead=1, neg_weighting=weighting)
  loss, _ = drift.drift_loss({"f": x}, {"f": pos}, config=cfg, neg_feats={"f": neg},
                             neg_weights=neg_w, sample_weights=sample_w)
  rows = lambda a: a.reshape((c * g,) + a.shape[2:])
  want = ref_loss(rows(x), rows(pos), cfg=cfg, neg=rows(neg), neg_w=np.repeat(neg_w, g, 0),
                  sample_w=np.repeat(sample_w, g, 0)) / c
  assert_close(loss, want, rtol=1e-4)
  # Positives are per class: pooling them over classes is a different loss.
  pooled = np.broadcast_to(pos.transpose(1, 0, 2, 3).reshape(g, c * m, d), (c, g, c * m, d))
  other, _ = drift.drift_loss({"f": x}, {"f": pooled}, config=cfg, neg_feats={"f": neg},
                              neg_weights=neg_w, sample_weights=sample_w)
  assert abs(float(other) - float(loss)) > 1e-3 * float(loss)


def test_class_conditional_unit_weights_equal_rows_as_groups():
  """Weights 1 and no unconditional negatives: the conditional loss is the loss of the same
  rows as feature groups, per class (mean over classes)."""
  rng = np.random.default_rng(36)
  x, pos = rng.normal(size=(4, 2, 8, 3)), rng.normal(size=(4, 2, 6, 3)) + 0.5
  cond, _ = drift.drift_loss(x, pos, config=drift.LossConfig(num_lookahead=1))
  flat, _ = drift.drift_loss(x.reshape(8, 8, 3), pos.reshape(8, 6, 3),
                             config=drift.LossConfig(num_lookahead=1))
  np.testing.assert_allclose(cond, flat / 4, rtol=1e-5)
  one, _ = drift.drift_loss(x[:1], pos[:1])
  np.testing.assert_allclose(one, drift.drift_loss(x[0], pos[0])[0], rtol=1e-6)


def test_several_feature_maps_sum():
  rng = np.random.default_rng(19)
  gen = {"a": rng.normal(size=(2, 8, 4)), "b": rng.normal(size=(1, 8, 16))}
  pos = {"a": rng.normal(size=(2, 6, 4)) + 1, "b": rng.normal(size=(1, 6, 16)) + 1}
  total, m = drift.drift_loss(gen, pos)
  single = [drift.drift_loss({k: gen[k]}, {k: pos[k]})[0] for k in gen]
  np.testing.assert_allclose(total, sum(single), rtol=1e-5)
  np.testing.assert_allclose(m["loss/a"], single[0], rtol=1e-5)


def test_jit_vmap_agree_and_no_retrace():
  traces = []
  cfg = drift.LossConfig(num_lookahead=1)

  @jax.jit
  def loss_fn(x, y):
    traces.append(1)
    return drift.drift_loss(x, y, config=cfg)[0]

  xs = [points(20 + i, 8, 3) for i in range(3)]
  y = points(30, 8, 3, 1.0)
  for x in xs:
    np.testing.assert_allclose(loss_fn(x, y), drift.drift_loss(x, y, config=cfg)[0], rtol=1e-5)
  assert len(traces) == 1

  batch = np.stack(xs)
  vm = jax.vmap(lambda x: drift.lookahead_drift(x, y, num_lookahead=2, temperature=0.5))(batch)
  for i, x in enumerate(xs):
    np.testing.assert_allclose(vm[i], drift.lookahead_drift(x, y, num_lookahead=2,
                                                            temperature=0.5), atol=1e-5)
  temps = jnp.array([0.2, 0.5])
  vt = jax.vmap(lambda t: drift.drift_field(xs[0], y, temperature=t))(temps)
  np.testing.assert_allclose(vt[1], drift.drift_field(xs[0], y, temperature=0.5), atol=1e-6)


def test_float32_stable_at_small_temperature_in_768_dims():
  rng = np.random.default_rng(21)
  x = (rng.normal(size=(32, 768)) * 3 + 10).astype(np.float32)  # large offset: cancellation
  y = (rng.normal(size=(24, 768)) * 3 + 10.5).astype(np.float32)
  cfg = drift.LossConfig(num_lookahead=2)
  loss, grad = jax.value_and_grad(lambda x: drift.drift_loss(x, y, config=cfg)[0])(x)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  # τ = 0.02 on distances divided by their mean, against float64.
  s = np.mean(ref_dist(x.astype(np.float64), np.concatenate([x, y]).astype(np.float64)))
  for norm in drift.NORMALIZATIONS:
    got = drift.drift_field(x / s, y / s, temperature=0.02, normalization=norm)
    want = ref_field(x / s, y / s, tau=0.02, normalization=norm)
    assert_close(got, want, rtol=2e-3)
  assert_close(loss, ref_loss(x[None], y[None], cfg=cfg), rtol=1e-3)


@pytest.mark.parametrize("normalization", drift.NORMALIZATIONS)
def test_no_nan_far_from_every_target(normalization):
  x = points(22, 6, 4)
  x[0] += 1e4
  y = points(23, 5, 4, 1.0)
  v = np.asarray(drift.drift_field(x, y, temperature=0.05, normalization=normalization))
  assert np.all(np.isfinite(v))
  loss, grad = jax.value_and_grad(lambda x: drift.drift_loss(x, y)[0])(x)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  if normalization == "mean_shift":  # pulled to the nearest positive, pushed from nearest neg.
    near_pos = y[np.argmin(ref_dist(x[:1], y))]
    near_neg = x[1:][np.argmin(ref_dist(x[:1], x[1:]))]
    np.testing.assert_allclose(v[0], near_pos - near_neg, rtol=1e-3, atol=1e-2)


def test_single_sample_without_negatives_is_finite():
  v = drift.drift_field(points(24, 1, 2), points(25, 3, 2), temperature=0.5,
                        normalization="bidirectional")
  assert np.all(np.isfinite(v))


@pytest.mark.parametrize("call, match", [
    (lambda x, y: drift.drift_field(x, y, temperature=0.0), "temperature"),
    (lambda x, y: drift.drift_field(x, y, temperature=-1.0), "temperature"),
    (lambda x, y: drift.drift_field(x, y, temperature=1.0, kernel="cauchy"), "kernel"),
    (lambda x, y: drift.drift_field(x, y, temperature=1.0, normalization="x"), "normalization"),
    (lambda x, y: drift.drift_field(x, y[:, :2], temperature=1.0), "y_pos"),
    (lambda x, y: drift.drift_field(x, y, y[:, :2], temperature=1.0), "y_neg"),
    (lambda x, y: drift.drift_field(x[0], y, temperature=1.0), "x"),
    (lambda x, y: drift.lookahead_drift(x, y, num_lookahead=-1, temperature=1.0),
     "num_lookahead"),
    (lambda x, y: drift.lookahead_drift(x, y, num_lookahead=1.5, temperature=1.0),
     "num_lookahead"),
    (lambda x, y: drift.lookahead_drift(x, y, num_lookahead=1, temperature=0.0),
     "temperature"),
    (lambda x, y: drift.drift_loss(x, y[:, :2]), "pos_feats"),
    (lambda x, y: drift.drift_loss(x, y, sample_weights=np.ones(3)), "sample_weights"),
    (lambda x, y: drift.drift_loss(x, y, neg_feats=y[:2], neg_weights=np.ones((2, 2))),
     "neg_weights"),
    (lambda x, y: drift.LossConfig(neg_weighting="logits"), "weighting"),
    (lambda x, y: drift.LossConfig(chain="joint"), "chain"),
    (lambda x, y: drift.LossConfig(temperatures=(0.1, 0.0)), "temperatures"),
    (lambda x, y: drift.LossConfig(num_lookahead=-2), "num_lookahead"),
    (lambda x, y: drift.LossConfig(kernel="rbf"), "kernel"),
    (lambda x, y: drift.LossConfig(term_scaling="max"), "term_scaling"),
    (lambda x, y: drift.LossConfig(num_lookahead=1, term_weights=(1.0,)), "term_weights"),
])
def test_bad_arguments_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call(points(26, 5, 3), points(27, 4, 3))

