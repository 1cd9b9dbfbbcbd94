"""The drift math: drifting fields, the lookahead chain and the training loss, in plain jnp.

Everything is a pure function of arrays, so it can be jit-ed, vmap-ed and sharded; the maths
follows `docs/drifting.md` (section numbers below refer to it).

    V = drift_field(x, y_pos, temperature=0.05)                           # §2, [N, D]
    terms = lookahead_drift(x, y_pos, num_lookahead=2, temperature=0.05)  # §3, [3, N, D]
    loss, metrics = drift_loss({"pixels": x[None]}, {"pixels": y[None]})  # §4

Modules: `field` (the dense field and the chain, one function per equation), `streaming` (the
same field tile by tile), `plan` (dense or streaming, groups per pass, matmul precision:
execution only), `loss` (`LossConfig`, `drift_loss`, `init_loss_state`), `api`
(`drift_field`, `lookahead_drift`).
"""

from lookahead_drift.drift.api import drift_field, lookahead_drift
from lookahead_drift.drift.field import CHAINS, KERNELS, NORMALIZATIONS, WEIGHTINGS, FieldSpec
from lookahead_drift.drift.loss import (TERM_SCALINGS, LossConfig, drift_loss,
                                        init_loss_state, plan_of)
from lookahead_drift.drift.plan import (FIELD_IMPLS, MATMUL_PRECISIONS, Execution, Plan,
                                        make_plan)

__all__ = [
    "CHAINS", "FIELD_IMPLS", "KERNELS", "MATMUL_PRECISIONS", "NORMALIZATIONS", "TERM_SCALINGS",
    "WEIGHTINGS", "Execution", "FieldSpec", "LossConfig", "Plan", "drift_field", "drift_loss",
    "init_loss_state", "lookahead_drift", "make_plan", "plan_of",
]
