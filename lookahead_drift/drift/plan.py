"""How the fields are computed: dense or streaming, groups per pass, matmul precision.

Plain data that the maths never sees: `Execution` holds the settings (from `LossConfig` or a
public function's arguments), `make_plan` turns them and the shapes into a `Plan`,
`fields_for` hands the chosen field function to the maths, and `matmul_scope` sets the
precision of the matmuls that name none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax

from lookahead_drift.drift import field
from lookahead_drift.drift import streaming
from lookahead_drift.drift.checks import check_choice

FIELD_IMPLS = ("auto", "dense", "streaming")
MATMUL_PRECISIONS = ("default", "high", "highest")  # jax.lax.Precision's names
CPU_PASS_BYTES = 32 * 2**20  # on CPU, cache-sized passes run about twice as fast ...
CPU_MIN_GROUPS = 8           # ... but never fewer groups than this in one pass


@dataclasses.dataclass(frozen=True)
class Execution:
  """The settings. impl: "dense", "streaming" or "auto" (dense while one group's matrices fit
  the budget). memory_budget_mb: what one pass may hold (0: 2 GiB on CPU, 8 GiB elsewhere).
  group_chunk: groups per pass (0: as many as fit). block_size: streaming tiles.
  matmul_precision: None (the distance products at "highest", every other matmul at JAX's
  default) or one of MATMUL_PRECISIONS for all of them (on CPU every one computes float32)."""
  impl: str = "auto"
  memory_budget_mb: float = 0.0
  group_chunk: int = 0
  block_size: int = 1024
  matmul_precision: str | None = None

  def __post_init__(self):
    check_choice("field_impl", self.impl, FIELD_IMPLS)
    if self.matmul_precision is not None:
      check_choice("matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
    if self.block_size < 1:
      raise ValueError(f"block_size must be >= 1, got {self.block_size!r}")
    if self.memory_budget_mb < 0 or self.group_chunk < 0:
      raise ValueError("memory_budget_mb and group_chunk must be >= 0, got "
                       f"{self.memory_budget_mb!r}, {self.group_chunk!r}")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one feature map's loss does (hashable: a jit static argument)."""
  impl: str = "dense"        # "dense" or "streaming", never "auto"
  block_size: int = 1024     # streaming tiles: block_size samples × block_size targets
  groups_per_pass: int = 1   # feature groups (rows) per pass
  matmul_precision: str | None = None  # as Execution's

  @property
  def distance_precision(self) -> str:
    """Of ‖x‖² + ‖y‖² − 2x·y: "highest" unless set (TF32 loses small distances there)."""
    return self.matmul_precision or "highest"


def budget_bytes(execution: Execution, backend: str) -> float:
  return (execution.memory_budget_mb or (2048 if backend == "cpu" else 8192)) * 2**20


def bytes_per_group(n: int, num_targets: int, num_temps: int, plan: Plan) -> int:
  """Rough peak of one group's field: a distance matrix plus ~3 [T, n, L] arrays per term."""
  if plan.impl == "streaming":
    n, num_targets = min(n, plan.block_size), min(num_targets, plan.block_size)
  return 4 * n * num_targets * (2 + 3 * num_temps)


def make_plan(execution: Execution, *, n: int, num_targets: int, num_temps: int,
              num_groups: int = 1, backend: str | None = None) -> Plan:
  """The plan for num_groups groups of n generated samples against num_targets targets."""
  backend = backend or jax.default_backend()
  budget = budget_bytes(execution, backend)
  plan = Plan(impl="dense", block_size=execution.block_size,
              matmul_precision=execution.matmul_precision)
  impl = execution.impl
  if impl == "auto":
    fits = bytes_per_group(n, num_targets, num_temps, plan) <= budget
    impl = "dense" if fits else "streaming"
  plan = dataclasses.replace(plan, impl=impl)
  if execution.group_chunk:
    return dataclasses.replace(plan, groups_per_pass=min(execution.group_chunk, num_groups))
  per_group = bytes_per_group(n, num_targets, num_temps, plan)
  if backend == "cpu":
    budget = min(budget, max(CPU_PASS_BYTES, CPU_MIN_GROUPS * per_group))
  return dataclasses.replace(plan, groups_per_pass=int(max(1, min(num_groups,
                                                                   budget // per_group))))


def fields_for(plan: Plan):
  """The field function (`field.fields`' arguments) that the plan picks."""
  if plan.impl == "streaming":
    return functools.partial(streaming.fields, block_size=plan.block_size,
                             precision=plan.distance_precision)
  return functools.partial(field.fields, precision=plan.distance_precision)


def matmul_scope(plan: Plan) -> contextlib.AbstractContextManager:
  """While tracing in it, matmuls without a precision of their own take the plan's."""
  if plan.matmul_precision is None:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(plan.matmul_precision)
