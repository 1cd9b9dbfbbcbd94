"""The train_encoder binary: trains a ConvEncoder and saves it as a drifting-loss feature space.

  python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist.py --workdir=DIR
  python -m lookahead_drift.train_encoder --config=configs/encoder_fashion_mnist_mae.py --workdir=DIR

Writes DIR/encoder (and, for a classifier, DIR/classifier); see `encoder_training`.
"""

from absl import flags
from ml_collections import config_flags

from lookahead_drift import cli
from lookahead_drift import encoder_training


def main(argv: list[str]) -> None:
  del argv
  encoder_training.train_and_save(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Encoder training config file.")
  flags.DEFINE_string("workdir", None, "Output folder; the encoder goes to WORKDIR/encoder.")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run_absl(main)
