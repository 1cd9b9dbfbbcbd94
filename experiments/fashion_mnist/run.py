"""Fashion-MNIST study at CPU scale: drifting (k=0) vs lookahead drifting (k=1, k=2).

  python experiments/fashion_mnist/run.py --workdir=/tmp/fmnist_study \
      --results=experiments/fashion_mnist/results

Stages, each cached in WORKDIR so that a rerun picks up where it stopped:
  1. the ConvEncoder feature space (`train_encoder`, a label classifier), unless present;
  2. Inception features and statistics of a fixed random subset of --n_ref training images,
     and, as the floor of both metrics at this sample size, FID/KID of --n_gen real test images;
  3. for each method, training with `train.train_and_evaluate` in stages up to each of
     --eval_steps (it resumes from its own checkpoints), and at each stage FID and KID of
     --n_gen EMA samples against the reference subset;
  4. RESULTS/results.json, RESULTS/table.md and one PNG sample grid per method.
--methods picks a subset, so several processes can train different methods side by side;
`--stage=table` only rebuilds the table from the finished evaluations.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
import time
from typing import Any

from absl import app, flags, logging

# Run as a script from the repository root or anywhere else.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from lookahead_drift import _ref_data, fid, inception, sample  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]

# name -> overrides of config.loss; every method shares everything else.
METHODS: dict[str, dict[str, Any]] = {
    "k0": dict(num_lookahead=0),
    "k1": dict(num_lookahead=1),
    "k2": dict(num_lookahead=2),
    "k1_eta0.5": dict(num_lookahead=1, step_size=0.5),
    "k1_unit_rms": dict(num_lookahead=1, term_scaling="unit_rms"),
}

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/fmnist_study", "Encoder, runs, features.")
_RESULTS = flags.DEFINE_string("results", str(REPO / "experiments/fashion_mnist/results"),
                               "Where results.json, table.md and the PNG grids go.")
_STAGE = flags.DEFINE_enum("stage", "all", ["all", "ref", "encoder", "real", "table"],
                           "Run everything, or only one stage.")
_METHODS = flags.DEFINE_list("methods", ["k0", "k1", "k2"], f"Subset of {list(METHODS)}.")
_N_REF = flags.DEFINE_integer("n_ref", 500, "Training images in the FID reference subset.")
_N_GEN = flags.DEFINE_integer("n_gen", 150, "Generated images per FID/KID evaluation.")
_EVAL_STEPS = flags.DEFINE_list("eval_steps", ["100"], "Iteration counts to evaluate "
                                "(e.g. 100,200; the CPU run had time for 100 only).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Generated = positive samples per step.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 20, "Linear warmup steps.")
_EMA = flags.DEFINE_float("ema_decay", 0.95, "EMA decay of the evaluated parameters.")
_CHANNELS = flags.DEFINE_integer("base_channels", 16, "UNet base channels.")
_ATTENTION = flags.DEFINE_bool("attention", False, "UNet attention block.")
_ENCODER_STEPS = flags.DEFINE_integer("encoder_steps", 150, "Encoder classifier steps.")
_ENCODER_WARMUP = flags.DEFINE_integer("encoder_warmup", 15, "Encoder warmup steps.")
_INCEPTION_BATCH = flags.DEFINE_integer("inception_batch", 50, "Inception batch size.")
_REF_WAIT = flags.DEFINE_integer("ref_wait_s", 0, "Wait this long for another process to "
                                 "write the reference features before computing them.")
_SEED = flags.DEFINE_integer("seed", 0, "Training seed (same for every method).")


def encoder_dir() -> str:
  return os.path.join(_WORKDIR.value, "encoder")


def ensure_encoder() -> dict[str, Any]:
  """Trains the feature encoder (classifier on the labels) unless WORKDIR/encoder exists."""
  record_path = os.path.join(encoder_dir(), "config.json")
  if not os.path.isfile(record_path):
    from lookahead_drift import train_encoder  # pylint: disable=g-import-not-at-top
    config = _load_config("configs/encoder_fashion_mnist.py")
    config.num_steps = _ENCODER_STEPS.value
    config.warmup_steps = _ENCODER_WARMUP.value
    config.log_every = 50
    train_encoder.train_and_save(config, _WORKDIR.value)
  with open(record_path, encoding="utf-8") as f:
    return json.load(f)


def _load_config(path: str) -> ml_collections.ConfigDict:
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cfg", REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run_config(method: str) -> ml_collections.ConfigDict:
  """configs/fashion_mnist.py with the CPU-sized overrides and the method's loss settings."""
  config = _load_config("configs/fashion_mnist.py")
  config.seed = _SEED.value
  config.data.batch_size = _BATCH.value
  config.model.base_channels = _CHANNELS.value
  config.model.attention = _ATTENTION.value
  config.optimizer.learning_rate = _LR.value
  config.optimizer.warmup_steps = _WARMUP.value
  config.ema_decay = _EMA.value
  config.encoder.checkpoint = encoder_dir()
  config.tensorboard = False
  config.log_every = 10
  steps = sorted(int(s) for s in _EVAL_STEPS.value)
  config.checkpoint.every = steps[0]
  config.checkpoint.keep = 2
  config.checkpoint.async_save = False
  config.sample.every = 10**9  # PNGs are written by this script.
  config.sample.num_png = 64
  config.sample.batch_size = 250
  for key, value in METHODS[method].items():
    config.loss[key] = value
  return config


def train_command(method: str, steps: int) -> str:
  """The equivalent `lookahead_drift.train` command line (for the README)."""
  c = run_config(method)
  overrides = [f"--config.num_steps={steps}", f"--config.data.batch_size={c.data.batch_size}",
               f"--config.model.base_channels={c.model.base_channels}",
               f"--config.model.attention={c.model.attention}",
               f"--config.optimizer.learning_rate={c.optimizer.learning_rate}",
               f"--config.optimizer.warmup_steps={c.optimizer.warmup_steps}",
               f"--config.ema_decay={c.ema_decay}"]
  overrides += [f"--config.loss.{k}={v}" for k, v in METHODS[method].items()]
  return (f"python -m lookahead_drift.train --config=configs/fashion_mnist.py "
          f"--workdir={_WORKDIR.value}/{method} --config.encoder.checkpoint={encoder_dir()} "
          + " ".join(overrides))


@functools.cache
def extractor() -> inception.FeatureExtractor:
  """One FID Inception per process (loading and compiling it takes minutes on a CPU)."""
  return inception.FeatureExtractor(batch_size=_INCEPTION_BATCH.value)


def reference_features() -> np.ndarray:
  """Inception features of a fixed random subset (seed 0) of n_ref training images."""
  path = os.path.join(_WORKDIR.value, f"ref_features_{_N_REF.value}.npz")
  deadline = time.time() + _REF_WAIT.value
  while not os.path.isfile(path) and time.time() < deadline:
    time.sleep(10)  # `--stage=ref` may be computing it in another process.
  if not os.path.isfile(path):
    images = _ref_data.fashion_mnist("/usr/share/datasets/fashion-mnist", "train")
    index = np.sort(np.random.default_rng(0).choice(len(images), _N_REF.value, replace=False))
    t0 = time.time()
    feats = extractor()(images[index], progress=True)
    logging.info("reference: %d images in %.0f s", len(index), time.time() - t0)
    np.savez(path + ".tmp.npz", features=feats, index=index)
    os.replace(path + ".tmp.npz", path)
  with np.load(path) as data:
    return data["features"]


def evaluate(method: str, config: ml_collections.ConfigDict, state: Any, step: int,
             ref_feats: np.ndarray) -> dict[str, Any]:
  """FID/KID of n_gen EMA samples (fixed noise seed) against the reference subset."""
  out = os.path.join(_WORKDIR.value, method, f"eval_{step}_{_N_GEN.value}.json")
  if os.path.isfile(out):
    with open(out, encoding="utf-8") as f:
      return json.load(f)
  from lookahead_drift import train  # pylint: disable=g-import-not-at-top
  ema = train.host_params(state.ema_params)
  images = sample.to_uint8(sample.generate(config, ema, _N_GEN.value, jax.random.PRNGKey(1234)))
  t0 = time.time()
  feats = extractor()(images)
  seconds = time.time() - t0
  ext = extractor()
  gen_stats = fid.stats_from_features(feats, ext.weights_sha256, ext.resize)
  ref_stats = fid.stats_from_features(ref_feats, ext.weights_sha256, ext.resize)
  kid_mean, kid_std = fid.kid(feats, ref_feats, num_subsets=100,
                              max_subset_size=min(len(feats), len(ref_feats)))
  result = dict(method=method, step=step, n_gen=len(feats), n_ref=len(ref_feats),
                fid=fid.fid_from_stats(gen_stats, ref_stats), kid=kid_mean, kid_std=kid_std,
                inception_seconds=seconds, loss=dict(config.loss.to_dict()),
                command=train_command(method, step))
  png = os.path.join(_RESULTS.value, f"samples_{method}_step{step}.png")
  os.makedirs(_RESULTS.value, exist_ok=True)
  sample.save_samples_png(png, images[:64].astype(np.float32) / 127.5 - 1.0)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  logging.info("%s step %d: FID %.2f KID %.4f", method, step, result["fid"], kid_mean)
  return result


def real_baseline(ref_feats: np.ndarray) -> dict[str, Any]:
  """FID/KID of n_gen real test images (first ones) against the reference: the floor at this N."""
  out = os.path.join(_WORKDIR.value, "real", f"eval_0_{_N_GEN.value}.json")
  if os.path.isfile(out):
    with open(out, encoding="utf-8") as f:
      return json.load(f)
  images = _ref_data.fashion_mnist("/usr/share/datasets/fashion-mnist", "test")[:_N_GEN.value]
  feats = extractor()(images)
  ext = extractor()
  stats = [fid.stats_from_features(f, ext.weights_sha256, ext.resize) for f in (feats, ref_feats)]
  kid_mean, kid_std = fid.kid(feats, ref_feats, num_subsets=100,
                              max_subset_size=min(len(feats), len(ref_feats)))
  result = dict(method="real test images", step=0, n_gen=len(feats), n_ref=len(ref_feats),
                fid=fid.fid_from_stats(*stats), kid=kid_mean, kid_std=kid_std,
                command="experiments/fashion_mnist/run.py --stage=real")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  logging.info("real test images: FID %.2f KID %.4f", result["fid"], kid_mean)
  return result


def run_methods() -> None:
  """Trains every method stage by stage (all methods reach a step before the next one)."""
  # Imported here: it needs `lookahead_drift.encoder`, which the earlier stages do not.
  from lookahead_drift import train  # pylint: disable=g-import-not-at-top
  for step in sorted(int(s) for s in _EVAL_STEPS.value):
    for method in _METHODS.value:
      config = run_config(method)
      config.num_steps = step
      workdir = os.path.join(_WORKDIR.value, method)
      os.makedirs(workdir, exist_ok=True)
      t0 = time.time()
      state = train.train_and_evaluate(config, workdir)
      reached = int(jax.device_get(state.step))
      if reached != step:  # Stopped early (SIGTERM): do not label it as `step`.
        raise SystemExit(f"{method} stopped at step {reached} before {step}; rerun to resume.")
      with open(os.path.join(workdir, "train_seconds.txt"), "a", encoding="utf-8") as f:
        f.write(f"up to step {step}: {time.time() - t0:.0f} s\n")
      evaluate(method, config, state, step, reference_features())
      write_table()


def write_table() -> None:
  """RESULTS/results.json and table.md from every finished evaluation in WORKDIR."""
  rows = []
  for path in sorted(pathlib.Path(_WORKDIR.value).glob("*/eval_*.json")):
    rows.append(json.loads(path.read_text()))
  rows.sort(key=lambda r: (r["n_gen"], r["step"], r["method"]))
  os.makedirs(_RESULTS.value, exist_ok=True)
  pathlib.Path(_RESULTS.value, "results.json").write_text(json.dumps(rows, indent=2) + "\n")
  lines = ["| method | step | FID | KID ×1e3 (± std) | N_gen | N_ref |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    step = r["step"] if r["method"] in METHODS else "-"
    lines.append(f"| {r['method']} | {step} | {r['fid']:.1f} | "
                 f"{1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f} | {r['n_gen']} | "
                 f"{r['n_ref']} |")
  pathlib.Path(_RESULTS.value, "table.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
  del argv
  unknown = sorted(set(_METHODS.value) - set(METHODS))
  if unknown:
    raise ValueError(f"--methods has unknown names {unknown}; known: {list(METHODS)}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  if _STAGE.value == "table":
    write_table()
    return
  if _STAGE.value in ("all", "encoder"):
    record = ensure_encoder()
    logging.info("encoder: %s accuracy %.4f", record.get("eval_split"),
                 record.get("eval_accuracy", float("nan")))
  if _STAGE.value == "ref":
    reference_features()
  if _STAGE.value == "all":
    run_methods()
  if _STAGE.value in ("all", "real"):
    real_baseline(reference_features())
    write_table()


if __name__ == "__main__":
  app.run(main)
