"""Entry point: python -m wae_tf.train --flagfile=flags/<experiment>.cfg --workdir=DIR."""

import os
import sys

from absl import app
from absl import flags

from wae_tf import cli

cli.define_config_flags()
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, images and the export.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def _train(config, workdir):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from wae_tf import checkpoints, training  # pylint: disable=import-outside-toplevel
    training.configure_cpu_devices(config.cpu_devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Before any other TF op: MultiWorkerMirroredStrategy configures collectives at startup.
    strategy = training.create_strategy(config)
    tf.io.gfile.makedirs(workdir)
    if checkpoints.is_chief(strategy):
        cli.write_flagfile(os.path.join(workdir, "flags.txt"), config, workdir=workdir)
    training.train_and_evaluate(config, workdir, strategy=strategy)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    sys.exit(cli.run_reporting_user_errors(
        lambda: _train(cli.config_from_flags(), FLAGS.workdir)))

if __name__ == "__main__":
    app.run(main)
