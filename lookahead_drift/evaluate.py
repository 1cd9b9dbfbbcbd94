"""The evaluation binary: a training run's checkpoints -> one-step samples -> FID and KID.

  python -m lookahead_drift.evaluate --workdir=DIR --reference=fashion_mnist_train_stats.npz \
      [--num_samples=50000] [--step=N | --watch] [--config=FILE] [--cfg_scale=1,2,3]

Appends to DIR/eval.jsonl; see `evaluation.evaluate_run`. The run's own config
(DIR/config.json) is used; `--config=FILE` (with `--config.a.b=value` overrides) replaces it.
"""

from absl import flags
from ml_collections import config_flags

from lookahead_drift import cli
from lookahead_drift import evaluation


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  evaluation.evaluate_run(
      f.workdir, reference_path=f.reference, num_samples=f.num_samples, step=f.step,
      watch=f.watch, poll_seconds=f.poll_seconds, inception_weights=f.inception_weights,
      batch_size=f.batch_size, use_ema=f.use_ema, seed=f.seed, config=f.config,
      cfg_scales=f.cfg_scale, on_record=lambda r: print(_line(r), flush=True))


def _line(record: dict) -> str:
  """One evaluation record as the line the binary prints."""
  kid = f", KID {record['kid']:.5f} ± {record['kid_std']:.5f}" if "kid" in record else ""
  scale = f" at α = {record['cfg_scale']:g}" if "cfg_scale" in record else ""
  return (f"step {record['step']}{scale}: FID {record['fid']:.3f}{kid} "
          f"({record['num_samples']} samples)")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file replacing WORKDIR/config.json "
                                  "(default: the run's own config).", lock_config=True)
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
  flags.DEFINE_list("cfg_scale", None, "Conditional runs: guidance scales α to score, e.g. "
                    "1,1.5,2,3 (one eval.jsonl record each; default 1).")
  flags.mark_flags_as_required(["workdir"])
  cli.run_absl(main)
