"""The float64 reference of the drift maths, written from docs/drifting.md: explicit
differences, explicit kernels, explicit loops. Shares no code with the library (which uses
centred matmul distances, log-softmaxes and lax.scan); tests compare the library against it."""

import numpy as np



def ref_dist(x, y):
  return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))


def ref_logk(x, y, tau, kernel):
  d = ref_dist(x, y)
  return -(d if kernel == "laplace" else d**2) / tau


def ref_field(x, pos, neg=None, *, tau, kernel="laplace", normalization="mean_shift",
              floor=0.0, self_neg=None, neg_w=None, weighting="kernel"):
  """V(x) per drifting.md §2. Negatives: `neg` if self_neg is False, else [x (no self); neg].

  neg_w weighs the explicit negatives: "kernel" multiplies k by w (drifting.md §4, the weighted
  empirical distribution); "affinity" multiplies the normalised, floored affinity by w (the
  official code's placement: the softmaxes never see w).
  """
  x, pos = np.asarray(x, np.float64), np.asarray(pos, np.float64)
  n = len(x)
  if self_neg is None:
    self_neg = neg is None
  negs, mask = [], []
  if self_neg:
    negs.append(x)
    mask.append(~np.eye(n, dtype=bool))
  if neg is not None:
    neg = np.asarray(neg, np.float64)
    negs.append(neg)
    mask.append(np.ones((n, len(neg)), bool))
  ynegs = np.concatenate(negs)
  keep = np.concatenate(mask, axis=1)
  wneg = np.ones(len(ynegs))
  if neg_w is not None:
    wneg[len(ynegs) - len(neg_w):] = neg_w
  kernel_w = wneg if weighting == "kernel" else np.ones(len(ynegs))
  after_w = np.concatenate([np.ones(len(ynegs)) if weighting == "kernel" else wneg,
                            np.ones(len(pos))])
  kn = np.exp(ref_logk(x, ynegs, tau, kernel)) * keep * kernel_w[None]
  kp = np.exp(ref_logk(x, pos, tau, kernel))
  v = np.zeros_like(x)
  if normalization == "mean_shift":
    for i in range(n):
      vp = (kp[i][:, None] * (pos - x[i])).sum(0) / kp[i].sum()
      an = kn[i] / kn[i].sum() * after_w[:len(ynegs)]
      v[i] = vp - (an[:, None] * (ynegs - x[i])).sum(0)
    return v
  targets = np.concatenate([ynegs, pos])
  k = np.concatenate([kn, kp], axis=1)
  colsum = k.sum(0, keepdims=True)
  row = k / k.sum(1, keepdims=True)
  col = k / np.where(colsum > 0, colsum, 1.0)  # a target of weight 0: empty column
  a = np.sqrt(np.maximum(row * col, floor))
  a[:, np.concatenate([kernel_w, np.ones(len(pos))]) == 0] = 0.0  # ... that the floor leaves out
  a = a * after_w[None]
  ln = len(ynegs)
  for i in range(n):
    s_neg, s_pos = a[i, :ln].sum(), a[i, ln:].sum()
    pull_pos = (a[i, ln:, None] * (pos - x[i])).sum(0)
    pull_neg = (a[i, :ln, None] * (targets[:ln] - x[i])).sum(0)
    v[i] = s_neg * pull_pos - s_pos * pull_neg
  return v


def _stopped(terms, tol):
  """The adaptive chain (tol > 0): after the first term with ‖V_i‖ < tol ‖V_0‖, zeros."""
  if tol > 0:
    for i, v in enumerate(terms):
      if np.sqrt((v**2).sum()) < tol * np.sqrt((terms[0]**2).sum()):
        return terms[:i + 1] + [np.zeros_like(v)] * (len(terms) - i - 1)
  return terms


def ref_chain(x, pos, *, k, tau, eta=1.0, extra=None, neg_w=None, tol=0.0, **kw):
  xi, terms = np.asarray(x, np.float64), []
  for _ in range(k + 1):
    v = ref_field(xi, pos, extra, tau=tau, self_neg=True, neg_w=neg_w, **kw)
    terms.append(v)
    xi = xi + eta * v
  return np.stack(_stopped(terms, tol))


def ref_summed_chain(x, pos, *, k, taus, eta, extra=None, neg_w=None, tol=0.0, **kw):
  """One chain for all temperatures, pushed by η mean_τ rms(V_τ) · mean_τ V_τ / rms(V_τ)."""
  xi, terms = np.asarray(x, np.float64), []
  for _ in range(k + 1):
    v = np.stack([ref_field(xi, pos, extra, tau=t, self_neg=True, neg_w=neg_w, **kw)
                  for t in taus])
    terms.append(v)
    rms = [np.sqrt((vt**2).mean()) for vt in v]
    xi = xi + eta * np.mean(rms) * np.mean([vt / r for vt, r in zip(v, rms)], axis=0)
  return np.stack(_stopped(terms, tol))


def ref_running_norm(running, current, m):
  """The authors' scaling's norm of one term: m·running + (1 − m)·current, the current one
  on the first step (running 0), the running one for a term that is all zero this step."""
  if running == 0:
    return current
  if current == 0:
    return running
  return m * running + (1 - m) * current


def ref_loss(x, pos, **kw):
  return ref_loss_and_norms(x, pos, **kw)[0]


def ref_loss_and_norms(x, pos, **kw):
  """The loss (`ref_drift`'s arguments), the norms [K+1, T] (or None) and the terms used."""
  total, _, sample_w, norms, used = ref_drift(x, pos, **kw)
  # target = x + V, so ‖x − target‖² = ‖V‖²; summed over groups, mean over samples and dims.
  return sum((sample_w[gi] * (total[gi] ** 2).mean(-1)).mean()
             for gi in range(len(total))), norms, used


def ref_loss_grad(x, pos, **kw):
  """d loss / d x, [R, N, D]: the scale s and the target are constants, so the gradient of
  mean_i w_i ‖x_i / s − target_i‖² / D is −2 w_i V_i / (N D s), V the normalised drift."""
  total, s, sample_w, _, _ = ref_drift(x, pos, **kw)
  _, n, d = total.shape
  return -2.0 * sample_w[..., None] * total / (n * d * s)


def ref_drift(x, pos, *, cfg, neg=None, neg_w=None, sample_w=None, running=None):
  """drifting.md §3-4 for one feature map of R rows [R, N, D], step by step in float64.

  neg_w: [L] for every row or [R, L] per row; sample_w: [N] or [R, N]. All rows share the
  scale Σ_rij w_rj d_rij / (N Σ_rj w_rj) and each temperature's drift normalisation.
  term_scaling "norm": each term over all rows divided by its norm, smoothed with `running`
  [K+1, T] (None: this call's norms). Returns the drift Σ_τ V_τ [R, N, D] in normalised
  features, the scale s, sample_w [R, N], those norms [K+1, T] (or None) and the mean number
  of terms a chain used (its terms that are not all zero).
  """
  x, pos = np.asarray(x, np.float64), np.asarray(pos, np.float64)
  g, n, d = x.shape
  sample_w = np.broadcast_to(np.ones(n) if sample_w is None else sample_w, (g, n))
  row_w = [None] * g if neg_w is None else np.broadcast_to(neg_w, (g, neg.shape[1]))
  if cfg.feature_normalization:
    num, den = 0.0, 0.0
    for gi in range(g):
      targets = [x[gi], pos[gi]] + ([neg[gi]] if neg is not None else [])
      tw = [np.ones(n), np.ones(pos.shape[1])] + (
          [np.ones(neg.shape[1]) if neg_w is None else row_w[gi]] if neg is not None else [])
      t, tw = np.concatenate(targets), np.concatenate(tw)
      num += (ref_dist(x[gi], t) * tw).sum()
      den += n * tw.sum()
    s = num / den / np.sqrt(d)
    tfac = np.sqrt(d) if cfg.kernel == "laplace" else d
  else:
    s, tfac = 1.0, 1.0
  xn, pn = x / s, pos / s
  nn = None if neg is None else np.asarray(neg, np.float64) / s
  weights = cfg.term_weights or (1.0,) * (cfg.num_lookahead + 1)
  kw = dict(kernel=cfg.kernel, normalization=cfg.normalization, floor=cfg.floor,
            weighting=cfg.neg_weighting)
  taus = [tau * tfac for tau in cfg.temperatures]
  kw["tol"] = cfg.lookahead_tol
  if cfg.chain == "summed":
    chains = np.stack([ref_summed_chain(xn[gi], pn[gi], k=cfg.num_lookahead, taus=taus,
                                        eta=cfg.step_size, extra=None if nn is None else nn[gi],
                                        neg_w=row_w[gi], **kw) for gi in range(g)], axis=2)
  else:  # [K+1, T, G, N, D]
    chains = np.stack([np.stack([
        ref_chain(xn[gi], pn[gi], k=cfg.num_lookahead, tau=tau, eta=cfg.step_size,
                  extra=None if nn is None else nn[gi], neg_w=row_w[gi], **kw)
        for gi in range(g)], axis=1) for tau in taus], axis=1)
  used = np.mean((np.abs(chains).sum(axis=(-2, -1)) > 0).sum(0))
  total = np.zeros_like(xn)
  norms = np.zeros((cfg.num_lookahead + 1, len(taus))) if cfg.term_scaling == "norm" else None
  for ti in range(len(taus)):
    terms = chains[:, ti]  # [K+1, G, N, D]
    if cfg.term_scaling == "unit_rms":
      terms = terms / np.sqrt((terms**2).mean(axis=(1, 2, 3), keepdims=True))
    if cfg.term_scaling == "norm":
      for ki in range(len(terms)):
        current = np.sqrt((terms[ki]**2).sum())
        norms[ki, ti] = current if running is None else ref_running_norm(
            running[ki, ti], current, cfg.norm_momentum)
      terms = np.stack([t / max(nrm, 1e-30) for t, nrm in zip(terms, norms[:, ti])])
    field = sum(w * t for w, t in zip(weights, terms))
    if cfg.drift_normalization:
      field = field / np.sqrt((field**2).mean())
    total += field
  return total, s, sample_w, norms, used


def assert_close(actual, expected, rtol=2e-4):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
  assert err < rtol, f"relative error {err:.3g} >= {rtol}"
