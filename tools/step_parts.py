"""The train step of an unconditional image config cut into its parts, each jitted and timed
apart (`tools/benchmark.py --parts`): where a step's time and XLA temporary memory go.

Parts, as `experiment.train_step` runs them on one fixed batch:
  generator forward+backward   the generator's VJP w.r.t. its parameters (forward included)
  encoder positives            the feature map of the real images (no gradient, as in the step)
  encoder generated fwd+bwd    the encoder's VJP w.r.t. the generated images
  drift loss value+grad        drift_loss and its gradient w.r.t. the generated features
  optimizer + EMA              the optax update and the EMA of the parameters
The parts' sum is reported beside the whole step, timed in the same rounds (interleaved, one
call of each per round), so that the table adds up or shows what fusing across parts saves.
Host input (the next batch from the pipeline) is timed too; the step does not wait for it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lookahead_drift import drift
from lookahead_drift import encoder
from lookahead_drift import experiment
from lookahead_drift import models
from lookahead_drift import sharding

PARTS = ("generator forward+backward", "encoder positives", "encoder generated fwd+bwd",
         "drift loss value+grad", "optimizer + EMA")


def _parts(config: Any, exp: experiment.Experiment, real: jax.Array
           ) -> dict[str, tuple[Callable, tuple]]:
  """name -> (jitted function, its arguments), for PARTS and the whole step."""
  generator, noise_shape = models.create_generator(config.model)
  feature_fn, enc_params = encoder.create_feature_fn(config.encoder)
  loss_config = experiment.create_loss_config(config)
  optimizer, _ = experiment.create_optimizer(config)
  # Copies: the whole step donates exp.state.
  params, opt_state = jax.tree.map(jnp.copy, (exp.state.params, exp.state.opt_state))
  num_gen = int(config.get("gen_batch_size", 0) or 0) or real.shape[0]
  noise = jax.random.normal(jax.random.key(0), (num_gen, *noise_shape), jnp.float32)
  generated = jax.jit(generator.apply)(params, noise)
  embed = lambda x: jax.tree.map(lambda f: f.astype(jnp.float32), feature_fn(enc_params, x))
  gen_feats, pos_feats = jax.jit(embed)(generated), jax.jit(embed)(real)

  def generator_vjp(p, z, ct):
    out, vjp = jax.vjp(lambda p: generator.apply(p, z), p)
    return out, vjp(ct)[0]

  def encoder_vjp(x, ct):
    out, vjp = jax.vjp(embed, x)
    return out, vjp(ct)[0]

  loss = lambda g, p: jax.value_and_grad(
      lambda g: drift.drift_loss(g, p, config=loss_config)[0])(g)

  def update(p, opt_state, grads, ema):  # as train_step: optax, then the EMA at its decay
    updates, opt_state = optimizer.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    decay = config.ema_decay
    return p, opt_state, jax.tree.map(lambda e, q: decay * e + (1.0 - decay) * q, ema, p)

  ones = jax.tree.map(jnp.ones_like, params)
  return {
      PARTS[0]: (jax.jit(generator_vjp), (params, noise, jnp.ones_like(generated))),
      PARTS[1]: (jax.jit(embed), (real,)),
      PARTS[2]: (jax.jit(encoder_vjp), (generated, gen_feats)),
      PARTS[3]: (jax.jit(loss), (gen_feats, pos_feats)),
      PARTS[4]: (jax.jit(update), (params, opt_state, ones, params)),
  }


def profile_parts(config: Any, rounds: int) -> dict[str, Any]:
  """Median seconds and XLA temporary bytes of each part and of the whole step, interleaved
  over `rounds` rounds after one warm-up round; and the host input's median seconds."""
  if config.get("conditional") is not None and config.conditional.get("labels_per_step"):
    raise ValueError("--parts profiles unconditional configs only (the conditional step "
                     "regroups features by label between the parts).")
  if jax.device_count() != 1:
    raise ValueError("--parts profiles one device (the parts are not sharded).")
  exp = experiment.create_experiment(config)
  dataset = experiment.create_dataset(config, 0)
  real = jnp.asarray(next(dataset)["image"])
  parts = _parts(config, exp, real)
  compiled = {name: fn.lower(*args).compile() for name, (fn, args) in parts.items()}
  batch = sharding.global_batch({"image": np.asarray(real)}, exp.mesh)
  compiled["whole step"] = exp.step_fn.lower(exp.state, batch, exp.encoder_params).compile()
  state = exp.state
  times: dict[str, list[float]] = {name: [] for name in compiled}
  times["host input"] = []
  for r in range(rounds + 1 if rounds else 0):  # rounds 0: XLA's memory estimates only
    for name, fn in compiled.items():
      start = time.perf_counter()
      if name == "whole step":
        state, metrics = fn(state, batch, exp.encoder_params)
        jax.block_until_ready((state, metrics))
      else:
        jax.block_until_ready(fn(*parts[name][1]))
      if r:
        times[name].append(time.perf_counter() - start)
    start = time.perf_counter()
    next(dataset)
    if r:
      times["host input"].append(time.perf_counter() - start)
  temp = {name: c.memory_analysis().temp_size_in_bytes for name, c in compiled.items()}
  stat = lambda f, t: float(f(t)) if t else None
  rows = {name: {"median_s": stat(np.median, t), "min_s": stat(np.min, t),
                 "max_s": stat(np.max, t), "temp_bytes": temp.get(name)}
          for name, t in times.items()}
  parts_sum = sum(rows[name]["median_s"] for name in PARTS) if rounds else None
  return {"parts": rows, "parts_sum_s": parts_sum, "rounds": rounds,
          "batch_size": int(real.shape[0])}


def format_parts(result: dict[str, Any]) -> str:
  """The parts as a markdown table, each with its share of the whole step."""
  whole = result["parts"]["whole step"]["median_s"]
  lines = ["| part | median ms (min-max) | share of step | XLA temp MiB |", "|---|---|---|---|"]
  for name, row in result["parts"].items():
    temp = "-" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 2**20:.1f}"
    timed = "- | -" if whole is None else (
        f"{row['median_s'] * 1e3:.4g} ({row['min_s'] * 1e3:.4g}-{row['max_s'] * 1e3:.4g}) | "
        f"{row['median_s'] / whole:.0%}")
    lines.append(f"| {name} | {timed} | {temp} |")
  if whole is not None:
    lines.append(f"| sum of the five parts | {result['parts_sum_s'] * 1e3:.4g} | "
                 f"{result['parts_sum_s'] / whole:.0%} | |")
  return "\n".join(lines)
