"""Entry point: python -m wae_tf.train --flagfile=flags/<experiment>.cfg --workdir=DIR.

Rerunning with the same --workdir resumes; the run's flags come from DIR/config.json, with any
flag given on the command line (or in a flagfile) taking precedence.
"""

import sys

from absl import app, flags

from wae_tf import cli
from wae_tf.errors import ConfigError

cli.define_config_flags()
flags.adopt_module_key_flags(cli)  # --help lists the Config's flags, not only --workdir
cli.DEFINE_path("workdir", None, "Directory for checkpoints, logs, images and the export; "
                "outside the images of --dataset=folder (refused there: its PNGs would be read).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def _train(workdir):
    tf = cli.import_tensorflow()  # after the flags are parsed, without its start-up noise
    # pylint: disable=import-outside-toplevel

    from wae_tf import config as config_lib
    from wae_tf import loop
    from wae_tf.runtime import checkpoints, cluster
    if not workdir:
        raise ConfigError("--workdir is empty: name the run's directory.")
    # The run's record (config.json, or a copy when it is lost; None for a new run).
    record = checkpoints.find_run_record(workdir)
    config = (cli.config_from_dict_with_flags(config_lib.from_dict(record)) if record
              else cli.config_from_flags())
    cluster.configure_cpu_devices(config.cpu_devices)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Before any other TF op: MultiWorkerMirroredStrategy configures collectives at startup.
    strategy = cluster.create_strategy(config)
    loop.train_and_evaluate(config, workdir, strategy=strategy)


def main(argv):
    sys.exit(cli.run_reporting_user_errors(_main, argv))


def _main(argv):
    cli.check_no_arguments(argv)
    _train(FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
