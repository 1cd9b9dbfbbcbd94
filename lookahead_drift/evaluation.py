"""FID and KID of a training run's checkpoints: restore, generate one-step samples, score.

`evaluate_run(workdir, ...)` restores the latest (or the given) checkpoint with the run's own
config (inference.restore: no optimizer, no encoder), generates `num_samples` images in one step
each, and appends FID (and KID, when the reference is an image set) to WORKDIR/eval.jsonl, and
to TensorBoard where TensorFlow is installed. A step already in eval.jsonl with the same sample
count and reference is not evaluated again, so a killed `watch` picks up where it was; `watch`
keeps evaluating new checkpoints as training writes them, until the run's last step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from lookahead_drift import checkpoint
from lookahead_drift import cli
from lookahead_drift import fid_kid
from lookahead_drift import inception
from lookahead_drift import inference
from lookahead_drift import metrics_io
from lookahead_drift import pictures


@dataclasses.dataclass(frozen=True)
class Reference:
  """Reference statistics, plus features when the reference was an image set (for KID)."""
  path: str
  stats: fid_kid.Stats
  features: np.ndarray | None


def load_reference(path: str, extractor: inception.FeatureExtractor) -> Reference:
  """The reference of an .npz: statistics (checked against the extractor) or image features."""
  kind, value = fid_kid.load_input(path)
  if kind == "stats":
    # Fail now, not after generating 50k samples.
    fid_kid.check_against_images(value, path)
    fid_kid.check_compatible(value, dataclasses.replace(
        value, weights_sha256=extractor.weights_sha256, resize=extractor.resize))
    return Reference(path, value, None)
  feats = extractor(value, progress=True)
  return Reference(path, fid_kid.stats_from_features(feats, extractor.weights_sha256,
                                                     extractor.resize), feats)


def evaluate_checkpoint(workdir: str, step: int | None, *,
                        extractor: inception.FeatureExtractor, reference: Reference,
                        num_samples: int, seed: int = 0, use_ema: bool = True,
                        config: ml_collections.ConfigDict | None = None,
                        cfg_scale: float = 1.0) -> tuple[int, dict[str, float]]:
  """(step, {"fid": ..., "kid": ..., ...}) for checkpoint `step` (None: latest) of WORKDIR.

  Conditional runs sample every class in turn at guidance scale `cfg_scale`."""
  trained = inference.restore(workdir, step=step, config=config)
  labels, alpha = inference.conditions(trained.config, num_samples, cfg_scale=cfg_scale)
  start = time.perf_counter()
  images = pictures.to_uint8(inference.generate(
      trained.config, trained.weights(use_ema), num_samples, jax.random.PRNGKey(seed),
      labels=labels, alpha=alpha))
  gen_seconds = time.perf_counter() - start
  feats = extractor(images, progress=True)
  stats = fid_kid.stats_from_features(feats, extractor.weights_sha256, extractor.resize)
  result = {"fid": fid_kid.fid_from_stats(stats, reference.stats), "num_samples": num_samples,
            "generate_seconds": gen_seconds}
  if labels is not None:
    result["cfg_scale"] = alpha
  if reference.features is not None:
    result["kid"], result["kid_std"] = fid_kid.kid(feats, reference.features)
  return trained.step, result


def _done(path: str, num_samples: int, reference: str) -> set[tuple[int, float]]:
  """(step, guidance scale) pairs already in eval.jsonl for this sample count and reference."""
  if not os.path.exists(path):
    return set()
  return {(r["step"], r.get("cfg_scale", 1.0)) for r in metrics_io.read_jsonl(path)
          if r.get("num_samples") == num_samples and r.get("reference") == reference}


def _checked_settings(workdir: str, config: ml_collections.ConfigDict | None,
                      reference_path: str | None, num_samples: int | None,
                      cfg_scales: list[float] | None
                      ) -> tuple[ml_collections.ConfigDict, str, int, list[float]]:
  """(config, reference path, sample count, guidance scales) of an evaluation, defaults from
  the run's config, each checked before the Inception network (slow to compile) is built."""
  if not os.path.isdir(workdir):
    raise cli.UserError(f"--workdir {workdir} does not exist (start evaluate once training has "
                        "created it).")
  config = inference.run_config(workdir, config)
  eval_config = config.get("eval", ml_collections.ConfigDict())
  reference_path = reference_path or eval_config.get("reference")
  if not reference_path:
    raise cli.UserError("--reference (or config.eval.reference) is required: a statistics "
                        "or images .npz, e.g. from `python -m lookahead_drift.fid --ref ...`.")
  num_samples = num_samples or eval_config.get("num_samples", 50_000)
  if len(config.model.get("image_shape", ())) != 3:
    raise ValueError("evaluate needs an image config (config.model.image_shape [H, W, C]); "
                     "2-D toy runs are measured by experiments/toy2d instead.")
  if num_samples < 2:
    raise ValueError(f"--num_samples must be >= 2, got {num_samples}")
  cfg_scales = [float(a) for a in (cfg_scales or [1.0])]
  for a in cfg_scales:  # fail now on a scale the run was not trained for
    inference.conditions(config, 1, cfg_scale=a)
  if not os.path.isfile(reference_path):
    raise FileNotFoundError(f"no reference file at {reference_path}: make statistics with "
                            "`python -m lookahead_drift.fid --ref NAME --out PATH`")
  return config, reference_path, num_samples, cfg_scales


def _check_step(workdir: str, step: int | None, watch: bool) -> None:
  """A CheckpointError unless WORKDIR has checkpoint `step` (None: any checkpoint) or the
  evaluation will `watch` for checkpoints (the directory is read either way)."""
  steps = inference.checkpoint_steps(workdir)
  if not watch and (not steps or (step is not None and step not in steps)):
    raise checkpoint.CheckpointError(
        f"No checkpoint {'' if step is None else f'for step {step} '}in "
        f"{os.path.join(workdir, 'checkpoints')}; there are {steps}.")


def _watch(workdir: str, evaluate: Callable[[int, float], None], cfg_scales: list[float], *,
           num_samples: int, reference_path: str, last_step: int, poll_seconds: float) -> None:
  """Evaluates each (checkpoint, guidance scale) not yet in eval.jsonl as checkpoints appear,
  until the run's `last_step` is done."""
  out_path = os.path.join(workdir, "eval.jsonl")
  while True:
    done = _done(out_path, num_samples, reference_path)
    todo = [(s, a) for s in inference.checkpoint_steps(workdir) for a in cfg_scales
            if (s, a) not in done]
    for s, a in todo:
      evaluate(s, a)
    if todo and todo[-1][0] >= last_step or all((last_step, a) in done for a in cfg_scales):
      return
    logging.info("Waiting %.0f s for new checkpoints in %s.", poll_seconds, workdir)
    time.sleep(poll_seconds)


def evaluate_run(workdir: str, *, reference_path: str | None = None,
                 num_samples: int | None = None, step: int | None = None, watch: bool = False,
                 poll_seconds: float = 60.0, inception_weights: str | None = None,
                 batch_size: int = 200, use_ema: bool = True, seed: int = 0,
                 config: ml_collections.ConfigDict | None = None,
                 extractor: inception.FeatureExtractor | None = None,
                 cfg_scales: list[float] | None = None,
                 on_record: Callable[[dict], None] | None = None) -> list[dict]:
  """Evaluates one checkpoint (or, with `watch`, each new one); returns the records written,
  and passes each to `on_record` as soon as it is written (the binary prints them).

  The run's config comes from WORKDIR/config.json unless `config` replaces it; the reference
  and sample count default to its config.eval.reference and config.eval.num_samples (50000).
  Conditional runs are scored at each guidance scale of `cfg_scales` (default [1]), one
  record per scale.
  """
  config, reference_path, num_samples, cfg_scales = _checked_settings(
      workdir, config, reference_path, num_samples, cfg_scales)
  _check_step(workdir, step, watch)
  extractor = extractor or inception.FeatureExtractor(inception_weights, batch_size=batch_size)
  reference = load_reference(reference_path, extractor)
  writer = metrics_io.MetricWriter(workdir, tensorboard=config.get("tensorboard", True),
                                   filename="eval.jsonl", tensorboard_subdir="eval")
  records = []

  def run(s: int | None, alpha: float) -> None:
    got_step, result = evaluate_checkpoint(workdir, s, extractor=extractor,
                                           reference=reference, num_samples=num_samples,
                                           seed=seed, use_ema=use_ema, config=config,
                                           cfg_scale=alpha)
    record = {**result, "reference": reference_path}
    writer.write_scalars(got_step, record)
    records.append({"step": got_step, **record})
    if on_record is not None:
      on_record(records[-1])

  try:
    if watch:
      _watch(workdir, run, cfg_scales, num_samples=num_samples, reference_path=reference_path,
             last_step=config.num_steps, poll_seconds=poll_seconds)
    else:
      for alpha in cfg_scales:
        run(step, alpha)
    return records
  finally:
    writer.close()
