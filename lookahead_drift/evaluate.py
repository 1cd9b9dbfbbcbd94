"""The evaluation binary: a training run's checkpoints -> one-step samples -> FID and KID.

  python -m lookahead_drift.evaluate --config=configs/fashion_mnist.py --workdir=DIR \
      --reference=fashion_mnist_train_stats.npz [--num_samples=50000] [--step=N | --watch]

It restores the latest (or the given) checkpoint, generates `num_samples` images in one step
each, and appends FID (and KID, when the reference is an image set) to WORKDIR/eval.jsonl, and
to TensorBoard where TensorFlow is installed. A step already in eval.jsonl with the same
sample count and reference is not evaluated again, so a killed `--watch` picks up where it was.
`--watch` keeps evaluating new checkpoints as training writes them, until the run's last step.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging
from ml_collections import config_flags

from lookahead_drift import checkpoint
from lookahead_drift import cli
from lookahead_drift import fid
from lookahead_drift import inception
from lookahead_drift import metrics_io
from lookahead_drift import sample
from lookahead_drift import train

@dataclasses.dataclass(frozen=True)
class Reference:
  """Reference statistics, plus features when the reference was an image set (for KID)."""
  path: str
  stats: fid.Stats
  features: np.ndarray | None


def load_reference(path: str, extractor: inception.FeatureExtractor) -> Reference:
  kind, value = fid.load_input(path)
  if kind == "stats":
    # Fail now, not after generating 50k samples.
    fid.check_compatible(value, dataclasses.replace(
        value, weights_sha256=extractor.weights_sha256, resize=extractor.resize))
    return Reference(path, value, None)
  feats = extractor(value, progress=True)
  return Reference(path, fid.stats_from_features(feats, extractor.weights_sha256,
                                                 extractor.resize), feats)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None, *,
                        extractor: inception.FeatureExtractor, reference: Reference,
                        num_samples: int, seed: int = 0, use_ema: bool = True
                        ) -> tuple[int, dict[str, float]]:
  """(step, {"fid": ..., "kid": ..., ...}) for checkpoint `step` (None: latest) of WORKDIR."""
  state = train.restore_for_eval(config, workdir, step=step)
  params = state.ema_params if use_ema else state.params
  start = time.perf_counter()
  images = sample.to_uint8(sample.generate(config, train.host_params(params), num_samples,
                                           jax.random.PRNGKey(seed)))
  gen_seconds = time.perf_counter() - start
  feats = extractor(images, progress=True)
  stats = fid.stats_from_features(feats, extractor.weights_sha256, extractor.resize)
  result = {"fid": fid.fid_from_stats(stats, reference.stats), "num_samples": num_samples,
            "generate_seconds": gen_seconds}
  if reference.features is not None:
    result["kid"], result["kid_std"] = fid.kid(feats, reference.features)
  return int(np.asarray(jax.device_get(state.step))), result


def _done_steps(path: str, num_samples: int, reference: str) -> set[int]:
  if not os.path.exists(path):
    return set()
  return {r["step"] for r in metrics_io.read_jsonl(path)
          if r.get("num_samples") == num_samples and r.get("reference") == reference}


def _checkpoint_steps(config: ml_collections.ConfigDict, workdir: str) -> list[int]:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    return []
  manager = checkpoint.create_manager(ckpt_dir, max_to_keep=config.checkpoint.keep,
                                      save_every=config.checkpoint.every, async_save=False)
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, reference_path: str,
             num_samples: int, step: int | None = None, watch: bool = False,
             poll_seconds: float = 60.0, inception_weights: str | None = None,
             batch_size: int = 200, use_ema: bool = True, seed: int = 0,
             extractor: inception.FeatureExtractor | None = None) -> list[dict]:
  """Evaluates one checkpoint (or, with `watch`, each new one); returns the records written."""
  # Cheap checks first: the Inception network takes a while to compile.
  if len(config.model.get("image_shape", ())) != 3:
    raise ValueError("evaluate needs an image config (config.model.image_shape [H, W, C]); "
                     "2-D toy runs are measured by experiments/toy2d instead.")
  if num_samples < 2:
    raise ValueError(f"--num_samples must be >= 2, got {num_samples}")
  if not os.path.isdir(workdir):
    raise cli.UserError(f"--workdir {workdir} does not exist (start evaluate once training has "
                        "created it).")
  if not os.path.isfile(reference_path):
    raise FileNotFoundError(f"no reference file at {reference_path}: make statistics with "
                            "`python -m lookahead_drift.fid --ref NAME --out PATH`")
  steps = _checkpoint_steps(config, workdir)
  if not watch and (not steps or (step is not None and step not in steps)):
    raise checkpoint.CheckpointError(
        f"No checkpoint {'' if step is None else f'for step {step} '}in "
        f"{os.path.join(workdir, 'checkpoints')}; there are {steps}.")
  extractor = extractor or inception.FeatureExtractor(inception_weights, batch_size=batch_size)
  reference = load_reference(reference_path, extractor)
  out_path = os.path.join(workdir, "eval.jsonl")
  writer = metrics_io.MetricWriter(workdir, tensorboard=config.get("tensorboard", True),
                                   filename="eval.jsonl", tensorboard_subdir="eval")
  records = []

  def run(s: int | None) -> None:
    got_step, result = evaluate_checkpoint(config, workdir, s, extractor=extractor,
                                           reference=reference, num_samples=num_samples,
                                           seed=seed, use_ema=use_ema)
    record = {**result, "reference": reference_path}
    writer.write_scalars(got_step, record)
    records.append({"step": got_step, **record})
    kid = f", KID {result['kid']:.5f} ± {result['kid_std']:.5f}" if "kid" in result else ""
    print(f"step {got_step}: FID {result['fid']:.3f}{kid} ({num_samples} samples)", flush=True)

  try:
    if not watch:
      run(step)
      return records
    while True:
      done = _done_steps(out_path, num_samples, reference_path)
      todo = [s for s in _checkpoint_steps(config, workdir) if s not in done]
      for s in todo:
        run(s)
      if todo and todo[-1] >= config.num_steps or config.num_steps in done:
        return records
      logging.info("Waiting %.0f s for new checkpoints in %s.", poll_seconds, workdir)
      time.sleep(poll_seconds)
  finally:
    writer.close()


def _define_flags() -> None:
  """Flags of the binary; defined only when run as a program, so importing stays side-effect free."""
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
  flags.DEFINE_string(
      "reference", None, "Reference: statistics .npz (mu, sigma; from `python -m "
      "lookahead_drift.fid --ref ...`) or uint8 images .npz (key 'images'; also gives KID). "
      "Default: config.eval.reference.")
  flags.DEFINE_integer("num_samples", None, "Samples per evaluation (default "
                       "config.eval.num_samples or 50000).")
  flags.DEFINE_integer("step", None, "Evaluate this checkpoint step (default: latest).")
  flags.DEFINE_bool("watch", False, "Keep evaluating new checkpoints until the last.")
  flags.DEFINE_float("poll_seconds", 60.0, "With --watch: seconds between looks.")
  flags.DEFINE_string("inception_weights", None, "Converted Inception weights (default "
                      "$LOOKAHEAD_DRIFT_INCEPTION or the cache path).")
  flags.DEFINE_integer("batch_size", 200, "Inception batch size.")
  flags.DEFINE_bool("use_ema", True, "Sample with the EMA parameters.")
  flags.DEFINE_integer("seed", 0, "Noise seed (the same for every checkpoint).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  config = f.config
  eval_config = config.get("eval", ml_collections.ConfigDict())
  reference = f.reference or eval_config.get("reference")
  if not reference:
    raise cli.UserError("--reference (or config.eval.reference) is required: a statistics "
                         "or images .npz, e.g. from `python -m lookahead_drift.fid --ref ...`.")
  num_samples = f.num_samples or eval_config.get("num_samples", 50_000)
  evaluate(config, f.workdir, reference_path=reference, num_samples=num_samples,
           step=f.step, watch=f.watch, poll_seconds=f.poll_seconds,
           inception_weights=f.inception_weights, batch_size=f.batch_size,
           use_ema=f.use_ema, seed=f.seed)


if __name__ == "__main__":
  _define_flags()
  cli.run_absl(main)
