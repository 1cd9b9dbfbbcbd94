"""Fashion-MNIST study at CPU scale: drifting (k=0) vs lookahead drifting (k=1, k=2).

  python experiments/fashion_mnist/run.py --workdir=/tmp/fmnist_study \
      --results=experiments/fashion_mnist/results

Stages, each cached in WORKDIR so that a rerun picks up where it stopped:
  1. the ConvEncoder feature spaces the chosen methods need (`train_encoder`: "cls", a label
     classifier, and/or "mae", a masked autoencoder), unless present;
  2. Inception features of a fixed random subset of --n_ref training images, and, as the
     floor of both metrics at this sample size, FID/KID of --n_gen real test images;
  3. for each method, training with `train_loop.run` in stages up to each of
     --eval_steps (it resumes from its own checkpoints), and at each stage FID and KID of
     --n_gen EMA samples against the reference subset, plus a PNG grid of 64 of them;
  4. RESULTS/results.json, table.md, curves.png (FID/KID against steps and time) and
     samples.png (the grids by run and step).
--methods picks a subset and --seed a training seed, so several processes can train
different runs side by side; `--stage=table` only rebuilds the table and figure.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from typing import Any

from absl import app, flags, logging
import jax
import ml_collections
import numpy as np

from configs import encoder_fashion_mnist, encoder_fashion_mnist_mae, fashion_mnist
from lookahead_drift import fid_kid, inception, inference, input_pipeline, pictures, sharding

REPO = pathlib.Path(__file__).resolve().parents[2]

# name -> (feature encoder, overrides of config.loss); every method shares everything else.
# "cls": ConvEncoder trained as a label classifier; "mae": the same net as a masked autoencoder.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "k0": ("cls", dict(num_lookahead=0)),
    "k1": ("cls", dict(num_lookahead=1)),
    "k2": ("cls", dict(num_lookahead=2)),
    "k1_eta0.5": ("cls", dict(num_lookahead=1, step_size=0.5)),
    "k1_unit_rms": ("cls", dict(num_lookahead=1, term_scaling="unit_rms")),
    "k2_unit_rms": ("cls", dict(num_lookahead=2, term_scaling="unit_rms")),
    "k1_w0.5": ("cls", dict(num_lookahead=1, term_weights=(1.0, 0.5))),
    "k2_w0.5": ("cls", dict(num_lookahead=2, term_weights=(1.0, 0.5, 0.25))),
    "k0_mae": ("mae", dict(num_lookahead=0)),
    "k1_mae": ("mae", dict(num_lookahead=1)),
}
ENCODER_CONFIGS = {"cls": encoder_fashion_mnist, "mae": encoder_fashion_mnist_mae}


_WORKDIR = flags.DEFINE_string("workdir", "/tmp/fmnist_study", "Encoder, runs, features.")
_RESULTS = flags.DEFINE_string("results", str(REPO / "experiments/fashion_mnist/results"),
                               "Where results.json, table.md and the PNG grids go.")
_STAGE = flags.DEFINE_enum("stage", "all", ["all", "ref", "encoder", "real", "table"],
                           "Run everything, or only one stage.")
_METHODS = flags.DEFINE_list("methods", ["k0", "k1", "k2"], f"Subset of {list(METHODS)}.")
_N_REF = flags.DEFINE_integer("n_ref", 2000, "Training images in the FID reference subset.")
_N_GEN = flags.DEFINE_integer("n_gen", 500, "Generated images per FID/KID evaluation.")
_EVAL_STEPS = flags.DEFINE_list("eval_steps", ["100", "200", "400"],
                                "Iteration counts to evaluate.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Generated = positive samples per step.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 20, "Linear warmup steps.")
_EMA = flags.DEFINE_float("ema_decay", 0.95, "EMA decay of the evaluated parameters.")
_CHANNELS = flags.DEFINE_integer("base_channels", 16, "UNet base channels.")
_ATTENTION = flags.DEFINE_bool("attention", False, "UNet attention block.")
_ENCODER_STEPS = flags.DEFINE_integer("encoder_steps", 1500, "Encoder training steps.")
_ENCODER_WARMUP = flags.DEFINE_integer("encoder_warmup", 100, "Encoder warmup steps.")
_INCEPTION_BATCH = flags.DEFINE_integer("inception_batch", 50, "Inception batch size.")
_REF_WAIT = flags.DEFINE_integer("ref_wait_s", 0, "Wait this long for another process to "
                                 "write the reference features before computing them.")
_SEED = flags.DEFINE_integer("seed", 0, "Training seed (same for every method); runs of a "
                             "seed other than 0 go to WORKDIR/<method>_seed<seed>.")
_DATA_DIR = flags.DEFINE_string("data_dir", "/usr/share/datasets/fashion-mnist",
                                "Folder with the four Fashion-MNIST IDX files.")


def _fashion_mnist(split: str) -> np.ndarray:
  """All uint8 images [N, 28, 28, 1] of a Fashion-MNIST split."""
  return input_pipeline.load_images(dict(name="fashion_mnist", split=split,
                                         data_dir=_DATA_DIR.value))[0]


def encoder_dir(kind: str) -> str:
  return os.path.join(_WORKDIR.value, f"enc_{kind}", "encoder")


def ensure_encoder(kind: str) -> dict[str, Any]:
  """Trains the `kind` feature encoder unless WORKDIR/enc_<kind>/encoder exists."""
  record_path = os.path.join(encoder_dir(kind), "config.json")
  if not os.path.isfile(record_path):
    from lookahead_drift import encoder_training  # pylint: disable=g-import-not-at-top
    config = ENCODER_CONFIGS[kind].get_config()
    config.num_steps = _ENCODER_STEPS.value
    config.data.data_dir = _DATA_DIR.value
    config.warmup_steps = _ENCODER_WARMUP.value
    config.log_every = 100
    encoder_training.train_and_save(config, os.path.dirname(encoder_dir(kind)))
  with open(record_path, encoding="utf-8") as f:
    return json.load(f)


def run_dir(method: str) -> str:
  """WORKDIR/<method> for seed 0, WORKDIR/<method>_seed<s> otherwise."""
  name = method if _SEED.value == 0 else f"{method}_seed{_SEED.value}"
  return os.path.join(_WORKDIR.value, name)


def run_config(method: str) -> ml_collections.ConfigDict:
  """configs/fashion_mnist.py with the CPU-sized overrides and the method's loss settings."""
  config = fashion_mnist.get_config()
  config.seed = _SEED.value
  config.data.batch_size = _BATCH.value
  config.data.data_dir = _DATA_DIR.value
  config.model.base_channels = _CHANNELS.value
  config.model.attention = _ATTENTION.value
  config.optimizer.learning_rate = _LR.value
  config.optimizer.warmup_steps = _WARMUP.value
  config.ema_decay = _EMA.value
  encoder_kind, loss_overrides = METHODS[method]
  config.encoder.checkpoint = encoder_dir(encoder_kind)
  config.tensorboard = False
  config.log_every = 10
  steps = sorted(int(s) for s in _EVAL_STEPS.value)
  config.checkpoint.every = steps[0]
  config.checkpoint.keep = 2
  config.checkpoint.async_save = False
  config.sample.every = 10**9  # PNGs are written by this script.
  config.sample.num_png = 64
  config.sample.batch_size = 250
  for key, value in loss_overrides.items():
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
  overrides += [f"--config.loss.{k}={v}".replace(" ", "") for k, v in METHODS[method][1].items()]
  return (f"python -m lookahead_drift.train --config=configs/fashion_mnist.py "
          f"--workdir={run_dir(method)} --config.encoder.checkpoint={c.encoder.checkpoint} "
          f"--config.seed={c.seed} "
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
    images = _fashion_mnist("train")
    index = np.sort(np.random.default_rng(0).choice(len(images), _N_REF.value, replace=False))
    t0 = time.time()
    feats = extractor()(images[index], progress=True)
    logging.info("reference: %d images in %.0f s", len(index), time.time() - t0)
    np.savez(path + ".tmp.npz", features=feats, index=index)
    os.replace(path + ".tmp.npz", path)
  with np.load(path) as data:
    return data["features"]


def _read_json(path: str) -> dict[str, Any] | None:
  """A finished evaluation, or None when `path` has not been written yet."""
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path: str, result: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)


def _scores(feats: np.ndarray, ref_feats: np.ndarray) -> dict[str, Any]:
  """FID and KID (mean, std over 100 subsets) of Inception features against the reference."""
  ext = extractor()
  gen_stats, ref_stats = (fid_kid.stats_from_features(f, ext.weights_sha256, ext.resize)
                          for f in (feats, ref_feats))
  kid_mean, kid_std = fid_kid.kid(feats, ref_feats, num_subsets=100,
                                  max_subset_size=min(len(feats), len(ref_feats)))
  return dict(n_gen=len(feats), n_ref=len(ref_feats),
              fid=fid_kid.fid_from_stats(gen_stats, ref_stats),
              kid=kid_mean, kid_std=kid_std)


def score_checkpoint(method: str, config: ml_collections.ConfigDict, state: Any, step: int,
                     ref_feats: np.ndarray) -> dict[str, Any]:
  """FID/KID of n_gen EMA samples (fixed noise seed) against the reference subset."""
  out = os.path.join(run_dir(method), f"eval_{step}_{_N_GEN.value}.json")
  if (done := _read_json(out)) is not None:
    return done
  ema = sharding.to_host(state.ema_params)
  images = pictures.to_uint8(inference.generate(config, ema, _N_GEN.value,
                                                jax.random.PRNGKey(1234)))
  t0 = time.time()
  feats = extractor()(images)
  seconds = time.time() - t0
  result = dict(method=method, seed=_SEED.value, step=step, **_scores(feats, ref_feats),
                inception_seconds=seconds, loss=dict(config.loss.to_dict()),
                command=train_command(method, step))
  png = os.path.join(_RESULTS.value,
                     f"samples_{os.path.basename(run_dir(method))}_step{step}.png")
  os.makedirs(_RESULTS.value, exist_ok=True)
  pictures.save_samples_png(png, images[:64].astype(np.float32) / 127.5 - 1.0)
  _write_json(out, result)
  logging.info("%s step %d: FID %.2f KID %.4f", method, step, result["fid"], result["kid"])
  return result


def real_baseline(ref_feats: np.ndarray) -> dict[str, Any]:
  """FID/KID of n_gen real test images (first ones) against the reference: the floor at this N."""
  out = os.path.join(_WORKDIR.value, "real", f"eval_0_{_N_GEN.value}.json")
  if (done := _read_json(out)) is not None:
    return done
  feats = extractor()(_fashion_mnist("test")[:_N_GEN.value])
  result = dict(method="real test images", step=0, **_scores(feats, ref_feats),
                command="experiments/fashion_mnist/run.py --stage=real")
  _write_json(out, result)
  logging.info("real test images: FID %.2f KID %.4f", result["fid"], result["kid"])
  return result


def run_methods() -> None:
  """Trains every method stage by stage (all methods reach a step before the next one)."""
  # Imported here: it needs `lookahead_drift.encoder`, which the earlier stages do not.
  from lookahead_drift import train_loop  # pylint: disable=g-import-not-at-top
  for step in sorted(int(s) for s in _EVAL_STEPS.value):
    for method in _METHODS.value:
      config = run_config(method)
      config.num_steps = step
      workdir = run_dir(method)
      os.makedirs(workdir, exist_ok=True)
      t0 = time.time()
      state = train_loop.run(config, workdir)
      reached = int(jax.device_get(state.step))
      if reached != step:  # Stopped early (SIGTERM): do not label it as `step`.
        raise SystemExit(f"{method} stopped at step {reached} before {step}; rerun to resume.")
      with open(os.path.join(workdir, "train_seconds.txt"), "a", encoding="utf-8") as f:
        f.write(f"up to step {step}: {time.time() - t0:.0f} s\n")
      score_checkpoint(method, config, state, step, reference_features())
      write_table()


def _median_seconds_per_step(workdir: str) -> float | None:
  """Median over the logged windows of 1 / steps_per_sec in WORKDIR/metrics.jsonl.

  The median keeps out the few windows that include compilation or a restart.
  """
  path = pathlib.Path(workdir, "metrics.jsonl")
  if not path.is_file():
    return None
  rates = [json.loads(line).get("steps_per_sec") for line in path.read_text().splitlines()
           if line.strip()]
  rates = [r for r in rates if r]
  return float(np.median(1.0 / np.asarray(rates))) if rates else None


def collect_rows(workdir: str) -> list[dict[str, Any]]:
  """Every finished evaluation in WORKDIR, with its encoder and the run's median s/step."""
  rows = []
  for path in sorted(pathlib.Path(workdir).glob("*/eval_*.json")):
    row = json.loads(path.read_text())
    row.setdefault("seed", 0)
    row["encoder"] = METHODS[row["method"]][0] if row["method"] in METHODS else "-"
    row["seconds_per_step"] = _median_seconds_per_step(str(path.parent))
    rows.append(row)
  rows.sort(key=lambda r: (r["n_gen"], r["step"], r["method"], r["seed"]))
  return rows


def write_results(rows: list[dict[str, Any]], out_dir: str) -> None:
  """OUT/results.json, OUT/table.md and OUT/curves.png (FID and KID against steps)."""
  os.makedirs(out_dir, exist_ok=True)
  pathlib.Path(out_dir, "results.json").write_text(json.dumps(rows, indent=2) + "\n")
  lines = ["| method | encoder | seed | step | FID | KID ×1e3 (± std) | s/step | N_gen | N_ref |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    step, seed = (r["step"], r["seed"]) if r["method"] in METHODS else ("-", "-")
    sec = f"{r['seconds_per_step']:.2f}" if r.get("seconds_per_step") else "-"
    lines.append(f"| {r['method']} | {r['encoder']} | {seed} | {step} | {r['fid']:.1f} | "
                 f"{1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f} | {sec} | "
                 f"{r['n_gen']} | {r['n_ref']} |")
  pathlib.Path(out_dir, "table.md").write_text("\n".join(lines) + "\n")
  _plot_curves(rows, os.path.join(out_dir, "curves.png"))
  _sample_sheet(rows, out_dir)


def _plot_curves(rows: list[dict[str, Any]], path: str) -> None:
  """FID and KID (± subset std) against training steps, and KID against training time."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
  runs = sorted({(r["method"], r["seed"]) for r in rows if r["method"] in METHODS},
                key=lambda run: (list(METHODS).index(run[0]), run[1]))
  for method, seed in runs:
    mine = sorted((r for r in rows if (r["method"], r["seed"]) == (method, seed)),
                  key=lambda r: r["step"])
    steps = np.asarray([r["step"] for r in mine])
    kid, kid_std = (np.asarray([1e3 * r[k] for r in mine]) for k in ("kid", "kid_std"))
    label = method if seed == 0 else f"{method} seed {seed}"
    style = dict(marker="o" if seed == 0 else "s", label=label,  # A method keeps its colour.
                 color=f"C{list(METHODS).index(method) % 10}",
                 linestyle=("-" if seed == 0 else ":") if len(mine) > 1 else "none")
    axes[0].plot(steps, [r["fid"] for r in mine], **style)
    axes[1].errorbar(steps, kid, yerr=kid_std, capsize=3, **style)
    if mine[-1].get("seconds_per_step"):  # Training time at the run's median step time.
      axes[2].errorbar(steps * mine[-1]["seconds_per_step"] / 60, kid, yerr=kid_std,
                       capsize=3, **style)
  for r in rows:
    if r["method"] not in METHODS:  # The real-image floor at this sample size.
      for ax, value in zip(axes, (r["fid"], 1e3 * r["kid"], 1e3 * r["kid"])):
        ax.axhline(value, color="grey", linestyle="--", label=r["method"])
  n = sorted({(r["n_gen"], r["n_ref"]) for r in rows})
  titles = (f"FID, (N_gen, N_ref) = {n}", "KID ± std over reference subsets",
            "KID against training time (steps × median s/step)")
  for ax, name, title in zip(axes, ("FID", "KID ×1e3", "KID ×1e3"), titles):
    ax.set_xlabel("training minutes" if ax is axes[2] else "training step")
    ax.set_ylabel(name)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _sample_sheet(rows: list[dict[str, Any]], out_dir: str) -> None:
  """OUT/samples.png: the sample grids of the seed-0 runs (rows) at every evaluated step."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  runs = [m for m in METHODS if any(r["method"] == m and r["seed"] == 0 for r in rows)]
  steps = sorted({r["step"] for r in rows if r["method"] in runs})
  cells = {(m, t): os.path.join(out_dir, f"samples_{m}_step{t}.png")
           for m in runs for t in steps}
  if not any(os.path.isfile(p) for p in cells.values()):
    return
  fig, axes = plt.subplots(len(runs), len(steps), squeeze=False,
                           figsize=(2.2 * len(steps), 2.3 * len(runs)))
  for i, method in enumerate(runs):
    for j, step in enumerate(steps):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if os.path.isfile(cells[method, step]):
        image = plt.imread(cells[method, step])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
      if i == 0:
        ax.set_title(f"step {step}", fontsize=9)
      if j == 0:
        ax.set_ylabel(method, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "samples.png"), dpi=120)
  plt.close(fig)


def write_table() -> None:
  """RESULTS/{results.json, table.md, curves.png} from every finished evaluation."""
  write_results(collect_rows(_WORKDIR.value), _RESULTS.value)


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
    for kind in sorted({METHODS[m][0] for m in _METHODS.value}):
      record = ensure_encoder(kind)
      logging.info("encoder %s: %s", kind, {k: v for k, v in record.items()
                                             if k.startswith("eval_")})
  if _STAGE.value == "ref":
    reference_features()
  if _STAGE.value == "all":
    run_methods()
  if _STAGE.value in ("all", "real"):
    real_baseline(reference_features())
    write_table()


if __name__ == "__main__":
  app.run(main)
