"""The field implementations (dense, streaming), group chunks and the memory budget of
lookahead_drift.drift, against each other and the float64 reference (tests/reference.py)."""

import dataclasses
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_drift import drift
from reference import assert_close, ref_chain, ref_loss, ref_loss_grad


def test_streaming_matches_dense_and_reference_at_tile_edges():
  rng = np.random.default_rng(40)
  for n, m, l, block in [(7, 5, 0, 4), (8, 8, 3, 4), (9, 13, 5, 16), (5, 11, 2, 1)]:
    x, y = rng.normal(size=(n, 6)).astype(np.float32), rng.normal(1, 1, (m, 6)).astype(np.float32)
    extra = rng.normal(-1, 1, (l, 6)).astype(np.float32) if l else None
    w = np.linspace(0.0, 2.0, l).astype(np.float32) if l else None  # w[0] = 0
    for norm, weighting in itertools.product(drift.NORMALIZATIONS, drift.WEIGHTINGS):
      kw = dict(num_lookahead=1, temperature=0.3, normalization=norm, floor=1e-6,
                extra_negatives=extra, neg_weights=w, weighting=weighting)
      dense = drift.lookahead_drift(x, y, impl="dense", **kw)
      stream = drift.lookahead_drift(x, y, impl="streaming", block_size=block, **kw)
      assert_close(stream, dense, rtol=2e-5)
      assert_close(stream, ref_chain(x, y, k=1, tau=0.3, extra=extra, neg_w=w,
                                     normalization=norm, floor=1e-6, weighting=weighting))


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_group_chunks_match_one_pass(chunk):
  rng = np.random.default_rng(41)
  x, pos = rng.normal(size=(5, 9, 4)), rng.normal(0.5, 1, (5, 7, 4))
  cfg = drift.LossConfig(num_lookahead=1)
  one, m1 = drift.drift_loss(x, pos, config=cfg)
  chunked, m2 = drift.drift_loss(x, pos, config=dataclasses.replace(cfg, group_chunk=chunk))
  np.testing.assert_allclose(chunked, one, rtol=1e-5)
  np.testing.assert_allclose(m2["feature_scale/features"], m1["feature_scale/features"],
                             rtol=1e-6)
  assert_close(one, ref_loss(x, pos, cfg=cfg), rtol=1e-4)


def test_budget_picks_chunks_and_streaming():
  impl = lambda cfg, n, num_targets: drift.plan_of(cfg, n=n, num_targets=num_targets).impl
  groups_per_pass = lambda cfg, groups, n, num_targets: drift.plan_of(
      cfg, n=n, num_targets=num_targets, num_groups=groups).groups_per_pass
  cfg = drift.LossConfig(memory_budget_mb=1.0)  # 1 MiB
  assert impl(cfg, 64, 128) == "dense"
  assert groups_per_pass(cfg, 100, 64, 128) == 2**20 // (4 * 64 * 128 * 11)
  assert groups_per_pass(drift.LossConfig(), 10_000, 64, 128) == 32 * 2**20 // (4 * 64 * 128 * 11)
  assert groups_per_pass(drift.LossConfig(), 4, 1024, 2048) == 4  # few large groups: one pass
  assert impl(drift.LossConfig(), 1024, 2048) == "dense"  # 2 GiB default on CPU
  assert impl(cfg, 1024, 2048) == "streaming"
  assert groups_per_pass(drift.LossConfig(group_chunk=7), 100, 64, 128) == 7
  assert impl(drift.LossConfig(field_impl="dense", memory_budget_mb=1.0), 1024, 2048) == "dense"


def test_dense_flops_are_one_distance_and_one_affinity_product_per_temperature():
  """k = 0: XLA's FLOP count within 10 % of 1 + T products of N x (N + M) x D."""
  g, n, m, d = 1, 128, 128, 512
  cfg = drift.LossConfig()
  x = jnp.zeros((g, n, d))
  y = jnp.zeros((g, m, d))
  compiled = drift.loss._loss.lower({"f": x[None]}, {"f": y[None]}, {}, None, None,
                                    cfg).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  floor = (1 + len(cfg.temperatures)) * 2 * g * n * (n + m) * d
  assert floor <= cost["flops"] <= 1.1 * floor, cost["flops"] / floor


def _dot_precisions(cfg: drift.LossConfig, x, pos) -> list[str]:
  """The precision of every matmul in the lowered loss and gradient, in program order."""
  text = jax.jit(jax.grad(lambda a: drift.drift_loss(a, pos, config=cfg)[0])).lower(x).as_text()
  dots = re.findall(r"stablehlo\.dot_general[^\n]*", text)
  return [re.search(r"precision = \[(\w+), \1\]", dot).group(1) for dot in dots]


@pytest.mark.parametrize("impl", ["dense", "streaming"])
def test_matmul_precision_none_is_todays_and_a_value_sets_every_matmul(impl):
  """None: the distance products at HIGHEST, the einsums at JAX's default, as before the
  option existed (its lowered program was checked equal to the previous commit's); a value:
  every matmul of the loss at it. (On CPU all of them compute float32 alike.)"""
  rng = np.random.default_rng(42)
  x, pos = rng.normal(size=(2, 12, 5)), rng.normal(0.5, 1, (2, 9, 5))
  base = drift.LossConfig(num_lookahead=1, field_impl=impl, block_size=4)
  today = _dot_precisions(base, x, pos)
  assert set(today) == {"HIGHEST", "DEFAULT"}
  for precision in drift.MATMUL_PRECISIONS:
    got = _dot_precisions(dataclasses.replace(base, matmul_precision=precision), x, pos)
    assert got == [precision.upper()] * len(today)
  with pytest.raises(ValueError, match="matmul_precision"):
    drift.LossConfig(matmul_precision="tf32")


@pytest.mark.parametrize("cfg", [
    drift.LossConfig(matmul_precision="highest"),
    drift.LossConfig(matmul_precision="highest", num_lookahead=2, field_impl="streaming",
                     block_size=4, normalization="mean_shift", floor=0.0),
])
def test_matmul_precision_highest_gradient_matches_float64(cfg):
  """The gradient w.r.t. the generated features against the float64 reference's."""
  rng = np.random.default_rng(43)
  x = rng.normal(size=(3, 10, 24)).astype(np.float32)
  pos = (rng.normal(size=(3, 14, 24)) + 0.5).astype(np.float32)
  grad = jax.grad(lambda a: drift.drift_loss(a, pos, config=cfg)[0])(x)
  assert_close(grad, ref_loss_grad(x, pos, cfg=cfg))
