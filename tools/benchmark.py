"""Times a config's train step and the drift loss alone; reports compile time and memory.

  python tools/benchmark.py --config=configs/toy2d.py [--config.loss.num_lookahead=1] \
      [--steps=50 --warmup=5] [--drift_batch_sizes=64,256 --drift_ks=0,1 --drift_dims=2,64] \
      [--json=/tmp/bench.json]

Train step: the library's own state creation and jitted step (`experiment.create_experiment`),
one fixed batch from the config's input pipeline (host data loading is not timed), sharded
over all devices of the mesh. The step is lowered and compiled explicitly (timed apart from the
first run), then every timed step is synchronised with `jax.block_until_ready`; we report the
median and interquartile range, plus the mean of the same number of steps dispatched back to
back ("pipelined", as in the training loop, which does not wait for each step).

Drift loss: `drift.drift_loss` jitted (value and gradient w.r.t. the generated features, as in
training, or `--drift_mode=forward`) on random features with the config's feature shapes
(`encoder.create_feature_fn`) or `--drift_dims`, on one device, for each batch size and k.

Memory: the peak reported by `device.memory_stats()` where the backend has it (GPU/TPU; "n/a"
on CPU), and XLA's compile-time estimate (`compiled.memory_analysis()`) everywhere.

Utilisation: XLA's FLOP count of the compiled step (`compiled.cost_analysis()`, one device's
program), the TFLOP/s it achieves at the median step time, and the MFU against
`--peak_tflops` or the chip's dense peak for the model's dtype (PEAK_TFLOPS; none on CPU).
`--synthetic_batch` times the step on random images and `--random_encoder=32,64,128` on a
randomly initialised ConvEncoder: the cost of the real ones, without the data or a checkpoint.

Parts: `--parts --notrain_step --nodrift` times the step's parts apart and beside the whole
step (tools/step_parts.py: generator, encoder on positives and on generated samples, loss,
optimizer; host input); `--parts_rounds=0` gives XLA's memory estimate of each, untimed.

Matmul precision: `--compare_shapes=... --compare_precisions=default,high,highest` adds each
implementation at each `loss.matmul_precision` (the official code under
`jax.default_matmul_precision`) and every gradient's error against the float64 reference
(tests/reference.py).

Multi-process: pass --coordinator_address/--num_processes/--process_id; every process prints
its own step time and per-process throughput, process 0 also the global throughput
(global batch / median step time) and writes the JSON.

`--summarize=A.json,B.json` (no --config) prints tables combining saved reports, repeated runs
of one setting in one row.
"""

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from absl import flags
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from lookahead_drift import cli
from lookahead_drift import drift
from lookahead_drift import encoder
from lookahead_drift import experiment
from lookahead_drift import guidance
from lookahead_drift import sharding
import official_code  # tools/official_code.py, beside this script
import step_parts  # tools/step_parts.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed train steps (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed train steps after the first run.")
flags.DEFINE_string("json", None, "Write the results here (process 0).")
flags.DEFINE_bool("train_step", True, "Benchmark the train step.")
flags.DEFINE_bool("drift", True, "Benchmark the drift loss alone.")
flags.DEFINE_bool("parts", False, "Time the step's parts apart (tools/step_parts.py; "
                  "unconditional configs, one device).")
flags.DEFINE_integer("parts_rounds", 10, "Interleaved rounds of --parts (0: XLA's memory "
                     "estimates only, nothing timed).")
flags.DEFINE_list("drift_batch_sizes", ["64", "128", "256", "512"],
                  "Batch sizes N (= number of positives M) of the drift-loss grid.")
flags.DEFINE_list("drift_ks", ["0", "1", "2", "3"], "num_lookahead values of the grid.")
flags.DEFINE_list("drift_dims", [],
                  "Feature dims D of the grid (one group [1, N, D] each); empty: the config's "
                  "feature shapes.")
flags.DEFINE_enum("drift_mode", "grad", ["grad", "forward"],
                  "Time value_and_grad w.r.t. the generated features (as in training) or the "
                  "loss alone.")
flags.DEFINE_integer("drift_steps", 10, "Timed calls per drift-loss grid point.")
flags.DEFINE_integer("drift_warmup", 2, "Untimed calls per grid point after the first.")
flags.DEFINE_list("compare_shapes", [],
                  "Instead of the config's benchmarks: drift loss side by side (k = 0, value "
                  "and gradient, interleaved calls) at these GxNxD shapes (N = M), for this "
                  "library and the implementations named by --compare_official/--compare_before.")
flags.DEFINE_string("compare_official", None,
                    "Folder holding the official drifting code's drift_loss.py (read, not "
                    "shipped: e.g. a checkout of lambertae/drifting).")
flags.DEFINE_string("compare_before", None,
                    "An earlier version of the loss, timed as 'before': the monolithic "
                    "lookahead_drift/drift.py of before the split (`git show REV:lookahead_drift/"
                    "drift.py > /tmp/drift_before.py`) or a copy of the drift package folder "
                    "(`git archive REV lookahead_drift/drift | tar -x -C /tmp/before`, then "
                    "/tmp/before/lookahead_drift/drift).")
flags.DEFINE_integer("compare_steps", 7, "Timed calls per implementation and shape.")
flags.DEFINE_list("compare_precisions", [],
                  "With --compare_shapes: also this library and the official code at each of "
                  "these matmul precisions (loss.matmul_precision), and every gradient against "
                  "the float64 reference (tests/reference.py; slow beyond N x 2N x D ~ 1e9).")
flags.DEFINE_float("peak_tflops", None,
                   "Peak TFLOP/s of one device for the train step's MFU; default: PEAK_TFLOPS "
                   "for the device kind and config.model.dtype (unknown there: no MFU).")
flags.DEFINE_bool("synthetic_batch", False,
                  "Time the train step on uniform random images of config.model.image_shape "
                  "instead of the input pipeline's batch (for machines without the data set; "
                  "the step's cost does not depend on the pixels).")
flags.DEFINE_list("random_encoder", [],
                  "Widths of a randomly initialised ConvEncoder (one block per stage, as "
                  "configs/encoder_fashion_mnist.py trains), written to a temporary folder and "
                  "used as encoder.checkpoint: a trained encoder's cost without one.")
flags.DEFINE_list("summarize", [],
                  "Instead of measuring: print markdown tables combining these JSON reports "
                  "(repeated runs of the same setting side by side, with their median).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")

ConfigDict = ml_collections.ConfigDict

# Dense peak TFLOP/s of one chip by jax `device_kind` and the model's compute dtype, from
# NVIDIA's H100 and H200 datasheets, whose tensor-core figures are quoted with sparsity (halved
# here). float32 is set against the TF32 tensor-core peak: at JAX's default matmul precision
# these GPUs run float32 matmuls and convolutions in TF32.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.5, "float32": 494.5},  # H100 SXM
    "NVIDIA H100 PCIe": {"bfloat16": 756.5, "float32": 378.0},
    "NVIDIA H200": {"bfloat16": 989.5, "float32": 494.5},            # H200 SXM
}


# ----------------------------------------------------------------------------- measurement


def summarize(times: Sequence[float]) -> dict[str, float]:
  """Median, quartiles and range of per-call times in seconds."""
  if not times:
    raise ValueError("summarize() needs at least one time; got none (steps must be >= 1).")
  t = np.asarray(times, np.float64)
  q25, median, q75 = np.percentile(t, [25, 50, 75])
  return {"median_s": float(median), "q25_s": float(q25), "q75_s": float(q75),
          "iqr_s": float(q75 - q25), "min_s": float(t.min()), "max_s": float(t.max()),
          "n": int(t.size)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, dict[str, float]]:
  """Lowers and compiles `jitted` for `args`, timing both phases apart from any run."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  return compiled, {"lower_s": lower_s, "compile_s": compile_s}


def compiled_analysis(compiled: Any) -> dict[str, float | None]:
  """XLA's static estimates for one executable (bytes per device; FLOPs), None if absent."""
  out: dict[str, float | None] = {"temp_bytes": None, "argument_bytes": None,
                                  "output_bytes": None, "generated_code_bytes": None,
                                  "flops": None}
  try:
    mem = compiled.memory_analysis()
  except Exception:  # Not implemented on every backend.  pylint: disable=broad-except
    mem = None
  if mem is not None:
    for key, attr in (("temp_bytes", "temp_size_in_bytes"),
                      ("argument_bytes", "argument_size_in_bytes"),
                      ("output_bytes", "output_size_in_bytes"),
                      ("generated_code_bytes", "generated_code_size_in_bytes")):
      value = getattr(mem, attr, None)
      out[key] = None if value is None else int(value)
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    cost = None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if cost and "flops" in cost:
    out["flops"] = float(cost["flops"])
  return out


def utilisation(flops: float | None, step_s: float, device_kind: str, dtype: str,
                peak_tflops: float | None = None) -> dict[str, Any]:
  """TFLOP/s achieved by one device's program of `flops` per `step_s`, and the MFU against
  `peak_tflops` or PEAK_TFLOPS[device_kind][dtype] (None where neither is known)."""
  achieved = None if flops is None else flops / step_s / 1e12
  if peak_tflops:
    peak, source = float(peak_tflops), "--peak_tflops"
  else:
    peak = PEAK_TFLOPS.get(device_kind, {}).get(dtype)
    source = f"{device_kind} {dtype}, dense (NVIDIA datasheet)" if peak else None
  return {"achieved_tflops": achieved, "peak_tflops": peak, "peak_source": source,
          "mfu": achieved / peak if achieved is not None and peak else None}


def peak_memory() -> dict[str, Any] | None:
  """Peak bytes in use on this process's devices since the process started (never reset
  here), or None where the backend does not report it (CPU)."""
  per_device = []
  for device in jax.local_devices():
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
      return None
    per_device.append({"device": str(device), "peak_bytes_in_use": int(stats["peak_bytes_in_use"]),
                       "bytes_limit": int(stats["bytes_limit"]) if "bytes_limit" in stats
                       else None})
  return {"max_peak_bytes_in_use": max(d["peak_bytes_in_use"] for d in per_device),
          "per_device": per_device}


def _package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def environment() -> dict[str, Any]:
  """What the numbers were measured on."""
  device = jax.devices()[0]
  cpu = platform.processor() or None
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return {"jax_version": jax.__version__, "jaxlib_version": _package_version("jaxlib"),
          "backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count(), "process_index": jax.process_index(),
          "host_cpu": cpu, "host_cpu_count": os.cpu_count(),
          "python": platform.python_version()}


# ----------------------------------------------------------------------------- train step


def synthetic_images(config: ConfigDict, n: int, seed: int = 0) -> np.ndarray:
  """n uniform random images in [-1, 1] of config.model.image_shape (unconditional configs)."""
  if guidance.from_config(config) is not None:
    raise cli.UserError("--synthetic_batch supports unconditional configs only.")
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, *config.model.image_shape)).astype(np.float32)


def write_random_encoder(widths: Sequence[int], image_shape: Sequence[int],
                         directory: str) -> str:
  """A ConvEncoder checkpoint (one block per stage) with random weights, as train_encoder
  writes one; returns its folder, for encoder.checkpoint."""
  module = encoder.ConvEncoder(widths=tuple(widths), blocks_per_stage=1)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.float32))
  return encoder.save_encoder(directory, params, {
      "widths": list(widths), "blocks_per_stage": 1, "image_shape": list(image_shape),
      "note": "random weights (tools/benchmark.py --random_encoder)"})


def benchmark_train_step(config: ConfigDict, steps: int, warmup: int, synthetic: bool = False,
                         peak_tflops: float | None = None) -> dict[str, Any]:
  """Times the library's jitted train step on a fixed global batch (see module docstring)."""
  if steps < 1 or warmup < 0:
    raise ValueError(f"--steps={steps} must be >= 1 and --warmup={warmup} >= 0.")
  start = time.perf_counter()
  exp = experiment.create_experiment(config)
  jax.block_until_ready(exp.state)
  setup_s = time.perf_counter() - start
  global_batch = int(config.data.batch_size)
  local_batch = global_batch // jax.process_count()
  local = ({"image": synthetic_images(config, local_batch, jax.process_index())} if synthetic
           else next(experiment.create_dataset(config, 0)))
  batch = sharding.global_batch({"image": local["image"]}, exp.mesh)

  compiled, compile_times = compile_timed(exp.step_fn, exp.state, batch, exp.encoder_params)
  analysis = compiled_analysis(compiled)
  state = exp.state  # donated by the first call
  (state, metrics), first_run_s = _timed(lambda: compiled(state, batch, exp.encoder_params))
  for _ in range(warmup):
    state, metrics = compiled(state, batch, exp.encoder_params)
  jax.block_until_ready((state, metrics))

  times = []
  for _ in range(steps):
    (state, metrics), seconds = _timed(lambda: compiled(state, batch, exp.encoder_params))
    times.append(seconds)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, exp.encoder_params)
  jax.block_until_ready((state, metrics))
  pipelined_s = (time.perf_counter() - start) / steps

  stats = summarize(times)
  # Every process's median step time, so process 0 can report them all.
  medians = multihost_utils.process_allgather(np.array(stats["median_s"])) \
      if jax.process_count() > 1 else np.array([stats["median_s"]])
  dtype = str(config.model.get("dtype", "float32"))
  return {
      "global_batch_size": global_batch,
      "process_batch_size": local_batch,
      "data": "synthetic" if synthetic else str(config.data.name),
      "model_dtype": dtype,
      "encoder_dtype": str(config.encoder.get("dtype", "float32")),
      "mesh_shape": dict(exp.mesh.shape),
      "setup_s": setup_s,
      **compile_times,
      "first_run_s": first_run_s,
      "warmup_steps": warmup,
      "step_time": stats,
      "pipelined_step_s": pipelined_s,
      "process_images_per_s": local_batch / stats["median_s"],
      "global_images_per_s": global_batch / stats["median_s"],
      "process_median_step_s": [float(m) for m in np.ravel(medians)],
      "final_loss": float(jax.device_get(metrics["loss"])),
      "xla_analysis": analysis,
      "utilisation": utilisation(analysis["flops"], stats["median_s"],
                                 jax.devices()[0].device_kind, dtype, peak_tflops),
      "peak_memory": peak_memory(),
  }


# ----------------------------------------------------------------------------- drift loss


def feature_shapes(config: ConfigDict, batch_size: int, dims: Sequence[int],
                   image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
  """{name: [G, N, D]} of the drift grid: one [1, N, D] group per D in `dims`, or the
  shapes the config's encoder gives for `batch_size` images of `image_shape`."""
  if dims:
    return {f"d{d}": (1, batch_size, int(d)) for d in dims}
  feature_fn, params = encoder.create_feature_fn(config.encoder)
  shapes = jax.eval_shape(feature_fn, params,
                          jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32))
  if not isinstance(shapes, dict):
    shapes = {"x": shapes}
  return {name: tuple(s.shape) for name, s in shapes.items()}


def benchmark_drift_loss(loss_config: drift.LossConfig, shapes: dict[str, tuple[int, ...]],
                         steps: int, warmup: int, mode: str = "grad",
                         seed: int = 0) -> dict[str, Any]:
  """Times jitted `drift.drift_loss` on random generated/positive features of `shapes`."""
  if steps < 1 or warmup < 0:
    raise ValueError(f"--drift_steps={steps} must be >= 1 and --drift_warmup={warmup} >= 0.")
  if mode not in ("grad", "forward"):
    raise ValueError(f"mode={mode!r}: expected 'grad' or 'forward'.")
  rng = jax.random.PRNGKey(seed)
  gen, pos = {}, {}
  for i, (name, shape) in enumerate(sorted(shapes.items())):
    gen_rng, pos_rng = jax.random.split(jax.random.fold_in(rng, i))
    gen[name] = jax.random.normal(gen_rng, shape, jnp.float32)
    pos[name] = jax.random.normal(pos_rng, shape, jnp.float32) + 0.5

  def loss(g, p):
    return drift.drift_loss(g, p, config=loss_config)

  fn = jax.jit(jax.value_and_grad(loss, has_aux=True) if mode == "grad" else loss)
  compiled, compile_times = compile_timed(fn, gen, pos)
  out, first_run_s = _timed(lambda: compiled(gen, pos))
  for _ in range(warmup):
    out = compiled(gen, pos)
  jax.block_until_ready(out)
  times = [_timed(lambda: compiled(gen, pos))[1] for _ in range(steps)]
  loss_value = out[0][0] if mode == "grad" else out[0]
  return {"num_lookahead": loss_config.num_lookahead,
          "shapes": {k: list(v) for k, v in shapes.items()}, "mode": mode,
          **compile_times, "first_run_s": first_run_s, "time": summarize(times),
          "loss": float(loss_value), "xla_analysis": compiled_analysis(compiled)}


def run_drift_grid(config: ConfigDict, batch_sizes: Sequence[int], ks: Sequence[int],
                   dims: Sequence[int], steps: int, warmup: int,
                   mode: str) -> list[dict[str, Any]]:
  """The drift-loss benchmark for every (D, N, k); D is one point if shapes come from config."""
  base = experiment.create_loss_config(config)
  image_shape = () if dims else tuple(
      np.shape(next(experiment.create_dataset(config, 0))["image"])[1:])
  results = []
  for dim_choice in ([[d] for d in dims] if dims else [[]]):
    for n in batch_sizes:
      shapes = feature_shapes(config, n, dim_choice, image_shape)
      for k in ks:
        cfg = dataclasses.replace(base, num_lookahead=int(k))
        result = benchmark_drift_loss(cfg, shapes, steps, warmup, mode)
        result["batch_size"] = int(n)
        result["peak_memory_so_far"] = peak_memory()  # this process's, points run in order
        results.append(result)
  return results


# ----------------------------------------------------------------------------- side by side


def _load(loader: Callable[..., Any], *args: str) -> Any:
  try:
    return loader(*args)
  except FileNotFoundError as e:
    raise cli.UserError(str(e)) from None


def _at_precision(fn: Callable[[Any, Any], Any], precision: str) -> Callable[[Any, Any], Any]:
  """fn traced under jax.default_matmul_precision(precision) (its matmuls that name none)."""

  def traced(g, p):
    with jax.default_matmul_precision(precision):
      return fn(g, p)

  return traced


def drift_loss_variants(loss_config: drift.LossConfig, official_dir: str | None,
                        before_path: str | None, precisions: Sequence[str] = ()
                        ) -> dict[str, Callable[[Any, Any], Any]]:
  """name -> loss(gen [G, N, D], pos [G, M, D]) for k = 0, each called as its code expects;
  for each of `precisions`, also "this@P" (loss.matmul_precision=P) and "official@P"."""
  this = lambda cfg: lambda g, p: drift.drift_loss(g, p, config=cfg)[0]
  variants = {"this": this(loss_config)}
  if before_path:
    before = _load(official_code.load_drift_before, before_path)
    fields = {f.name for f in dataclasses.fields(before.LossConfig)}
    old_cfg = before.LossConfig(**{k: v for k, v in dataclasses.asdict(loss_config).items()
                                   if k in fields})
    variants["before"] = lambda g, p: before.drift_loss(g, p, config=old_cfg)[0]
  official_fn = None
  if official_dir:
    official = _load(official_code.load_drift_loss, official_dir)
    temps = tuple(loss_config.temperatures)
    # As its train.py calls it: rows = groups, weights 1; the loss summed over rows.
    official_fn = lambda g, p: jnp.sum(official.drift_loss(
        gen=g, fixed_pos=p, weight_gen=jnp.ones(g.shape[:2]), weight_pos=jnp.ones(p.shape[:2]),
        R_list=temps)[0])
    variants["official"] = official_fn
  for precision in precisions:
    variants[f"this@{precision}"] = this(dataclasses.replace(loss_config,
                                                             matmul_precision=precision))
    if official_fn is not None:
      variants[f"official@{precision}"] = _at_precision(official_fn, precision)
  return variants


def float64_gradient(loss_config: drift.LossConfig) -> Callable[[Any, Any], np.ndarray]:
  """(gen, pos) -> the loss's gradient w.r.t. gen from tests/reference.py, in float64."""
  reference = official_code.load_module("drift_reference",
                                        os.path.join(ROOT, "tests", "reference.py"))
  return lambda g, p: reference.ref_loss_grad(np.asarray(g), np.asarray(p), cfg=loss_config)


def compare_drift_losses(variants: dict[str, Callable[[Any, Any], Any]],
                         shapes: Sequence[tuple[int, int, int]], steps: int,
                         num_temperatures: int, seed: int = 0,
                         reference: Callable[[Any, Any], np.ndarray] | None = None
                         ) -> list[dict[str, Any]]:
  """Value and gradient w.r.t. the generated features, calls interleaved (A, B, C, B, C, A, ...)
  so that load drifts hit every implementation alike; per shape: time, FLOPs, XLA temp, and
  each gradient's largest difference relative to the official one (else the last variant's)
  and to `reference`'s (float64), if given."""
  results = []
  for g, n, d in shapes:
    kg, kp = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), n * d + g))
    gen = jax.random.normal(kg, (g, n, d), jnp.float32)
    pos = jax.random.normal(kp, (g, n, d), jnp.float32) + 0.5
    compiled, row = {}, {"shape": [g, n, d], "variants": {}}
    for name, fn in variants.items():
      exe, times = compile_timed(jax.jit(jax.value_and_grad(fn)), gen, pos)
      jax.block_until_ready(exe(gen, pos))  # first run
      compiled[name] = exe
      row["variants"][name] = {**times, "xla_analysis": compiled_analysis(exe), "times": []}
    names = list(compiled)
    for i in range(steps):
      for name in names[i % len(names):] + names[:i % len(names)]:
        row["variants"][name]["times"].append(_timed(lambda: compiled[name](gen, pos))[1])
    grads = {name: np.asarray(compiled[name](gen, pos)[1]) for name in names}
    ref_name = "official" if "official" in grads else names[-1]
    against = {ref_name: grads[ref_name]}
    if reference is not None:
      against["float64"] = reference(gen, pos)
    for name, v in row["variants"].items():
      v["time"] = summarize(v.pop("times"))
      for ref_name, ref in against.items():
        v["grad_rel_err_vs_" + ref_name] = float(
            np.max(np.abs(grads[name] - ref)) / max(np.max(np.abs(ref)), 1e-30))
    row["floor_flops"] = (1 + num_temperatures) * 2 * g * n * 2 * n * d
    results.append(row)
    rows_of = format_compare_long if reference is not None else format_compare_table
    print("\n".join(rows_of([row]).splitlines()[2:]), flush=True)  # no header
  return results


def format_compare_table(rows: list[dict[str, Any]]) -> str:
  names = list(rows[0]["variants"])
  head = ["G x N x D"] + [f"{n} ms" for n in names] + [f"{n} / this" for n in names[1:]] + [
      f"{n} FLOPs / floor" for n in names] + [f"{n} XLA temp" for n in names]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    v = r["variants"]
    t = {n: v[n]["time"]["median_s"] for n in names}
    flops = [v[n]["xla_analysis"]["flops"] for n in names]
    cells = (["x".join(map(str, r["shape"]))] + [_ms(t[n]) for n in names]
             + [f"{t[n] / t['this']:.2f}" for n in names[1:]]
             + ["n/a" if f is None else f"{f / r['floor_flops']:.2f}" for f in flops]
             + [_bytes(v[n]["xla_analysis"]["temp_bytes"]) for n in names])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_compare_long(rows: list[dict[str, Any]]) -> str:
  """The side-by-side rows one implementation per line, with the gradients' errors."""
  errs = sorted({k[len("grad_rel_err_vs_"):] for r in rows for v in r["variants"].values()
                 for k in v if k.startswith("grad_rel_err_vs_")}, key=lambda n: n != "float64")
  lines = ["| G x N x D | variant | median ms | / this | FLOPs / floor | XLA temp | "
           + " | ".join(f"grad rel. err. vs {n}" for n in errs) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(errs)]
  for r in rows:
    this_s = r["variants"]["this"]["time"]["median_s"]
    for name, v in r["variants"].items():
      t, flops = v["time"]["median_s"], v["xla_analysis"]["flops"]
      cells = ["x".join(map(str, r["shape"])), name, _ms(t), f"{t / this_s:.2f}",
               "n/a" if flops is None else f"{flops / r['floor_flops']:.2f}",
               _bytes(v["xla_analysis"]["temp_bytes"])]
      cells += [f"{v[f'grad_rel_err_vs_{n}']:.1e}" if f"grad_rel_err_vs_{n}" in v else "n/a"
                for n in errs]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
  return f"{1e3 * seconds:.3g}"


def _bytes(n: float | None) -> str:
  return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


def _flops(n: float | None) -> str:
  return "n/a" if n is None else f"{n / 1e9:.4g} GFLOP"


def _utilisation(u: dict[str, Any] | None) -> str:
  """"achieved / peak / MFU", n/a for what is unknown (no peak on CPU)."""
  if not u or u["achieved_tflops"] is None:
    return "n/a"
  peak = "n/a" if u["peak_tflops"] is None else f"{u['peak_tflops']:.4g}"
  mfu = "n/a" if u["mfu"] is None else f"{100 * u['mfu']:.1f} %"
  return f"{u['achieved_tflops']:.3g} / {peak} / {mfu}"


def format_train_table(r: dict[str, Any]) -> str:
  s = r["step_time"]
  peak = r["peak_memory"]
  rows = [
      ("global / process batch", f"{r['global_batch_size']} / {r['process_batch_size']}"),
      ("mesh (data, model)", f"{r['mesh_shape']}"),
      ("step time median [IQR] (ms)",
       f"{_ms(s['median_s'])} [{_ms(s['q25_s'])}, {_ms(s['q75_s'])}] (n={s['n']})"),
      ("pipelined step (ms)", _ms(r["pipelined_step_s"])),
      ("images/s, this process", f"{r['process_images_per_s']:.4g}"),
      ("images/s, global", f"{r['global_images_per_s']:.4g}"),
      ("lower / compile / first run (s)",
       f"{r['lower_s']:.3f} / {r['compile_s']:.3f} / {r['first_run_s']:.3f}"),
      ("XLA FLOPs per step (one device)", _flops(r["xla_analysis"]["flops"])),
      ("achieved TFLOP/s / peak / MFU", _utilisation(r.get("utilisation"))),
      ("peak device memory", "n/a" if peak is None else _bytes(peak["max_peak_bytes_in_use"])),
      ("XLA temp / argument memory per device",
       f"{_bytes(r['xla_analysis']['temp_bytes'])} / "
       f"{_bytes(r['xla_analysis']['argument_bytes'])}"),
  ]
  return "\n".join(["| train step | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def format_drift_table(results: list[dict[str, Any]]) -> str:
  lines = ["| features [G, N, D] | N | k | median ms [IQR] | compile s | XLA temp |",
           "|---|---|---|---|---|---|"]
  for r in results:
    t = r["time"]
    feats = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in r["shapes"].items())
    lines.append(f"| {feats} | {r['batch_size']} | {r['num_lookahead']} | "
                 f"{_ms(t['median_s'])} [{_ms(t['q25_s'])}, {_ms(t['q75_s'])}] | "
                 f"{r['compile_s']:.3f} | {_bytes(r['xla_analysis']['temp_bytes'])} |")
  return "\n".join(lines)


def _describe(report: dict[str, Any]) -> str:
  overrides = " ".join(f"{k}={v}" for k, v in sorted(report["overrides"].items()))
  env = report["environment"]
  return (f"{report['config']} {overrides}".strip() +
          f" ({env['device_count']} {env['backend']} dev, {env['process_count']} proc)")


def summarize_reports(paths: Sequence[str]) -> str:
  """Markdown tables over JSON reports; repeated runs of one setting become one row."""
  reports = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      reports.append(json.load(f))
  train_rows: dict[str, list[dict[str, Any]]] = {}
  drift_rows: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
  for report in reports:
    if "train_step" in report:
      train_rows.setdefault(_describe(report), []).append(report["train_step"])
    for r in report.get("drift_loss", []):
      feats = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in r["shapes"].items())
      key = (feats, r["batch_size"], r["num_lookahead"], r["mode"])
      drift_rows.setdefault(key, []).append(r)
  join = lambda values: " / ".join(_ms(v) for v in values)
  lines = []
  if train_rows:
    lines += ["| setting | batch | runs | step median per run (ms) | median of runs (ms) | "
              "images/s (median of runs) | fastest step (ms) | compile per run (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, runs in train_rows.items():
      medians = [r["step_time"]["median_s"] for r in runs]
      median = float(np.median(medians))
      compiles = " / ".join(f"{r['compile_s']:.2f}" for r in runs)
      lines.append(f"| {name} | {runs[0]['global_batch_size']} | {len(runs)} | {join(medians)} "
                   f"| {_ms(median)} | {runs[0]['global_batch_size'] / median:.4g} | "
                   f"{_ms(min(r['step_time']['min_s'] for r in runs))} | {compiles} |")
  if drift_rows:
    lines += [""] if lines else []
    lines += ["| features [G, N, D] | N | k | mode | median per run (ms) | "
              "median of runs (ms) | fastest call (ms) | XLA temp |",
              "|---|---|---|---|---|---|---|---|"]
    # Group name first (e.g. "d2" before "d64"), then N and k numerically.
    order = lambda item: (item[0][0].split(":")[0], *item[0][1:])
    for (feats, n, k, mode), runs in sorted(drift_rows.items(), key=order):
      medians = [r["time"]["median_s"] for r in runs]
      lines.append(f"| {feats} | {n} | {k} | {mode} | {join(medians)} | "
                   f"{_ms(float(np.median(medians)))} | "
                   f"{_ms(min(r['time']['min_s'] for r in runs))} | "
                   f"{_bytes(runs[0]['xla_analysis']['temp_bytes'])} |")
  return "\n".join(lines)


def _overrides(argv: Sequence[str]) -> dict[str, str]:
  """The --config.x=value overrides exactly as given on the command line."""
  out, args = {}, list(argv)
  for i, arg in enumerate(args):
    if arg.startswith("--config."):
      key, sep, value = arg[len("--config."):].partition("=")
      out[key] = value if sep else (args[i + 1] if i + 1 < len(args) else "")
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.summarize:
    print(summarize_reports(FLAGS.summarize))
    return
  if FLAGS.config is None:
    raise cli.UserError("--config is required (unless --summarize is given).")
  if FLAGS.compare_shapes:
    shapes = [tuple(int(v) for v in s.split("x")) for s in FLAGS.compare_shapes]
    precisions = FLAGS.compare_precisions
    unknown = sorted(set(precisions) - set(drift.MATMUL_PRECISIONS))
    if unknown:
      raise cli.UserError(f"--compare_precisions: {unknown} not in {drift.MATMUL_PRECISIONS}.")
    loss_config = dataclasses.replace(experiment.create_loss_config(FLAGS.config),
                                      num_lookahead=0)
    rows = compare_drift_losses(
        drift_loss_variants(loss_config, FLAGS.compare_official, FLAGS.compare_before,
                            precisions),
        shapes, FLAGS.compare_steps, len(loss_config.temperatures),
        reference=float64_gradient(loss_config) if precisions else None)
    print(format_compare_long(rows) if precisions else format_compare_table(rows), flush=True)
    if FLAGS.json:
      with open(FLAGS.json, "w", encoding="utf-8") as f:
        json.dump({"config": config_flags.get_config_filename(FLAGS["config"]),
                   "environment": environment(), "overrides": _overrides(sys.argv[1:]),
                   "compare_precisions": precisions, "compare": rows}, f, indent=2)
    return
  sharding.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)
  config = FLAGS.config
  lead = jax.process_index() == 0
  report: dict[str, Any] = {
      "config": config_flags.get_config_filename(FLAGS["config"]),
      "overrides": _overrides(sys.argv[1:]),
      "environment": environment(),
      "flags": {"steps": FLAGS.steps, "warmup": FLAGS.warmup, "drift_mode": FLAGS.drift_mode,
                "drift_steps": FLAGS.drift_steps, "drift_warmup": FLAGS.drift_warmup,
                "synthetic_batch": FLAGS.synthetic_batch,
                "random_encoder": [int(w) for w in FLAGS.random_encoder],
                "peak_tflops": FLAGS.peak_tflops},
  }
  with contextlib.ExitStack() as cleanup:
    if FLAGS.random_encoder:
      if config.encoder.kind != "conv":
        raise cli.UserError("--random_encoder needs encoder.kind='conv'.")
      folder = tempfile.mkdtemp(prefix="random_encoder_")
      cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
      config.encoder.checkpoint = write_random_encoder(
          [int(w) for w in FLAGS.random_encoder], config.model.image_shape, folder)
    _measure(config, report, lead)


def _measure(config: ConfigDict, report: dict[str, Any], lead: bool) -> None:
  """The train step, its parts and the drift grid as the flags say, into `report` (written
  by process 0)."""
  if FLAGS.parts:
    try:
      report["parts"] = step_parts.profile_parts(config, FLAGS.parts_rounds)
    except ValueError as e:
      raise cli.UserError(str(e)) from None
    print(step_parts.format_parts(report["parts"]), flush=True)
  if FLAGS.train_step:
    result = benchmark_train_step(config, FLAGS.steps, FLAGS.warmup, FLAGS.synthetic_batch,
                                  FLAGS.peak_tflops)
    report["train_step"] = result
    print(f"[process {jax.process_index()}/{jax.process_count()}] median step "
          f"{_ms(result['step_time']['median_s'])} ms, "
          f"{result['process_images_per_s']:.4g} images/s on this process "
          f"({result['process_batch_size']} of {result['global_batch_size']} per step)",
          flush=True)
    if lead:
      print(format_train_table(result), flush=True)
      if jax.process_count() > 1:
        print(f"global throughput: {result['global_images_per_s']:.4g} images/s "
              f"(global batch {result['global_batch_size']} / median step time of process 0; "
              f"all processes' medians (s): {result['process_median_step_s']})", flush=True)

  if FLAGS.drift:
    results = run_drift_grid(
        config, [int(n) for n in FLAGS.drift_batch_sizes], [int(k) for k in FLAGS.drift_ks],
        [int(d) for d in FLAGS.drift_dims], FLAGS.drift_steps, FLAGS.drift_warmup,
        FLAGS.drift_mode)
    report["drift_loss"] = results
    if lead:
      print(f"drift loss ({FLAGS.drift_mode}, one device: {jax.local_devices()[0]})", flush=True)
      print(format_drift_table(results), flush=True)

  report["peak_memory_end"] = peak_memory()
  if lead and FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {FLAGS.json}", flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("benchmark_done")


if __name__ == "__main__":
  cli.run_absl(main)
