"""Device mesh, shardings, host-to-global batches and joining a multi-process run.

The one mesh convention of the package: axes ("data", "model"). Batches (training batches,
Inception batches) are split over "data"; parameters are replicated, or (with `shard_params`)
split along their last axis over "model".
"""

import os
import sys
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lookahead_drift import cli

PyTree = Any


def create_mesh(num_model: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
  """A ("data", "model") mesh over `devices` (default: all) with `num_model` model shards."""
  devices = list(jax.devices() if devices is None else devices)
  if num_model < 1 or len(devices) % num_model:
    raise ValueError(
        f"mesh.num_model={num_model} must be >= 1 and divide the device count {len(devices)}.")
  # Auto axes: shardings are given at jit boundaries and XLA propagates them inside.
  return jax.make_mesh((len(devices) // num_model, num_model), ("data", "model"),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data", replicated over "model"."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leaf_sharding(x: Any, mesh: Mesh, shard_params: bool) -> NamedSharding:
  """Shards a leaf's last axis over "model" when asked and divisible, else replicates.

  The rule depends only on the leaf's shape, so params, EMA params and the optimizer's
  moment estimates (same shapes) get the same layout.
  """
  num_model = mesh.shape["model"]
  shape = np.shape(x)
  if shard_params and num_model > 1 and len(shape) >= 2 and shape[-1] % num_model == 0:
    return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), "model"))
  return replicated(mesh)


def tree_shardings(tree: PyTree, mesh: Mesh, shard_params: bool = False) -> PyTree:
  """A sharding for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(lambda x: leaf_sharding(x, mesh, shard_params), tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's share into one batch-sharded global array per key."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "data.batch_size"
                     ) -> None:
  """Each process and each "data" shard must get an equal share of the batch."""
  num_data = mesh.shape["data"]
  if global_batch_size % num_data or global_batch_size % jax.process_count():
    raise ValueError(
        f"{field}={global_batch_size} must be divisible by the number of data "
        f"shards ({num_data}) and of processes ({jax.process_count()}).")


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Host values (identical on every process) -> arrays replicated on all mesh devices."""
  sharding = replicated(mesh)
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def to_host(tree: PyTree) -> PyTree:
  """A numpy copy of (possibly multi-process sharded) arrays on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _exit_with(message: str, code: int) -> None:
  print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr, flush=True)
  os._exit(code)  # pylint: disable=protected-access


def maybe_initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                                 process_id: int | None, timeout_s: int = 300) -> None:
  """Joins a multi-process run when flags or a detectable cluster environment say so.

  Flags alone must be complete: --num_processes or --process_id without a coordinator (and no
  cluster environment) would silently train one separate run per host, so it is a ValueError,
  as is a process_id outside [0, num_processes). Joining logs whom it waits for; a run not
  joined within `timeout_s` seconds ends the process with one line on stderr and exit 2.
  """
  cluster_env = any(int(os.environ.get(k, "1")) > 1
                    for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
  coordinator = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not (coordinator or cluster_env):
    given = [f"--{n}={v}" for n, v in (("num_processes", num_processes),
                                       ("process_id", process_id)) if v is not None]
    if given:
      raise ValueError(f"{' '.join(given)} without --coordinator_address (host:port of process "
                       "0, the same on every process) and no SLURM/Open MPI environment: each "
                       "process would train a separate run.")
    return
  if coordinator and (num_processes is None) != (process_id is None):
    raise ValueError("--num_processes and --process_id go together (or neither, under a "
                     "cluster that sets them).")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is outside [0, --num_processes="
                     f"{num_processes}).")
  where = coordinator or "the coordinator from the cluster environment"
  logging.info("Joining a multi-process run: process %s of %s at %s; waiting up to %d s for "
               "every process.", process_id, num_processes, where, timeout_s)
  # JAX aborts the whole process (a C++ fatal error, ~30 lines) when joining times out, so a
  # watchdog ends it first with one line and the bad-input exit code.
  message = (f"no multi-process run joined at {where} within {timeout_s} s: are all "
             f"{num_processes or 'the'} processes started, with the same --coordinator_address "
             "(process 0's host:port)?")
  watchdog = threading.Timer(timeout_s, _exit_with, (message, cli.EXIT_USER_ERROR))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s + 60)
  finally:
    watchdog.cancel()
  logging.info("Process %d of %d, %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
