"""Entry point: python -m wae_tf.export --workdir=DIR [--export_dir=BASE] exports the latest
checkpoint of a training run as BASE/<step> (default <workdir>/export/<step>)."""

import sys

from absl import app, flags

from wae_tf import cli

cli.DEFINE_path("workdir", None, "A training run's directory.", required=True)
cli.DEFINE_path("export_dir", "", "Base directory of the export; default: the run's.")
FLAGS = flags.FLAGS


def main(argv):
    sys.exit(cli.run_reporting_user_errors(_main, argv))


def _main(argv):
    cli.check_no_arguments(argv)
    cli.import_tensorflow()  # without its start-up noise, before the libraries load it
    from wae_tf.serving import saved_model  # pylint: disable=import-outside-toplevel; after flag parsing
    print(saved_model.export_from_workdir(FLAGS.workdir, FLAGS.export_dir))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
