"""The sample binary: one-step samples of a training run's newest good checkpoint.

  python -m lookahead_drift.sample --workdir=DIR [--num_samples=10000] [--out=DIR/samples.npz]
      [--labels=0,3,7 --cfg_scale=2]     # class-conditional runs

writes `samples` (float, 2-D data) or `images` (uint8 NHWC) to the .npz, and a PNG next to it.
The run's own config (DIR/config.json) is used; `--config=FILE` (with `--config.a.b=value`
overrides) replaces it. Neither the optimizer nor the feature encoder is needed.
"""

from absl import flags
from ml_collections import config_flags

from lookahead_drift import cli
from lookahead_drift import inference


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  inference.write_samples(f.workdir, num_samples=f.num_samples, out=f.out, use_ema=f.use_ema,
                          seed=f.seed, config=f.config, labels=f.labels,
                          cfg_scale=f.cfg_scale)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file replacing WORKDIR/config.json "
                                  "(default: the run's own config).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
  flags.DEFINE_integer("num_samples", 10_000, "How many samples to generate.")
  flags.DEFINE_string("out", None, "Output .npz path (default: WORKDIR/samples.npz).")
  flags.DEFINE_bool("use_ema", True, "Use the EMA parameters (else the raw ones).")
  flags.DEFINE_integer("seed", 0, "Noise seed.")
  flags.DEFINE_list("labels", None, "Conditional runs: the classes to sample, e.g. 0,3,7 "
                    "(the samples are split evenly, one class per PNG row; default: all).")
  flags.DEFINE_float("cfg_scale", 1.0, "Conditional runs: the guidance scale α (1: none; "
                     "else within the trained [cfg_min, cfg_max]).")
  flags.mark_flags_as_required(["workdir"])
  cli.run_absl(main)
