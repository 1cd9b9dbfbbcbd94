"""The train binary: trains a one-step generator with the (lookahead) drifting loss.

  python -m lookahead_drift.train --config=configs/toy2d.py --workdir=/tmp/toy2d \
      [--config.num_steps=2000 ...]

Relaunching the same command resumes from the latest good checkpoint; see `train_loop.run`
for what a run does, `cli` for the exit codes. Multi-process: pass
--coordinator_address/--num_processes/--process_id (or launch under a cluster that
`jax.distributed.initialize()` detects).
"""

from absl import flags
from ml_collections import config_flags

from lookahead_drift import cli
from lookahead_drift import sharding
from lookahead_drift import train_loop


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  config = f.config
  if f.nonfinite is not None:
    with config.unlocked():
      config.nonfinite = f.nonfinite
  sharding.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
  train_loop.run(config, f.workdir, allow_config_change=f.allow_config_change)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
  flags.DEFINE_bool("allow_config_change", False, "Resume even if the config changes fields "
                    "that change the run's meaning (recorded in WORKDIR/config_history).")
  flags.DEFINE_enum("nonfinite", None, list(train_loop.NONFINITE_POLICIES), "On a non-finite "
                    "loss or gradient: stop (exit 4) or skip the step (default: "
                    f"config.nonfinite or {train_loop.NONFINITE_DEFAULT!r}).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run_absl(main)
