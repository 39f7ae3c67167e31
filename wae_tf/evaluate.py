"""Entry point: evaluate a trained WAE on the test split (wae_tf.evaluation.evaluator).

    python -m wae_tf.evaluate --workdir=DIR              # latest checkpoint of a training run
    python -m wae_tf.evaluate --saved_model=DIR/export/N # an exported SavedModel
    python -m wae_tf.evaluate --workdir=DIR --fid_features=inception  # the standard FID space

stdout is the metrics' JSON alone; logs and warnings go to stderr.
"""

import json
import sys

from absl import app, flags

from wae_tf import cli
from wae_tf.errors import ConfigError

cli.DEFINE_path("workdir", "", "A training run's directory (evaluates its latest "
                "checkpoint into <workdir>/eval).")
cli.DEFINE_path("saved_model", "", "An exported SavedModel version directory "
                "(evaluated into <saved_model>/eval).")
cli.DEFINE_path("output_dir", "", "Where to write metrics.json, PNGs, events and projector/ "
                "(TensorBoard's embedding projector).")
flags.DEFINE_integer("num_samples", 10000, "Prior samples and (at most) test images used.")
flags.DEFINE_integer("seed", 0, "Seed of the prior samples and of the test subset.")
cli.DEFINE_path("classifier_dir", "", "Feature classifier cache; default "
                "~/.cache/wae_tf/classifier/<dataset>.")
flags.DEFINE_integer("classifier_epochs", 2, "Epochs of the classifier when it is trained.")
# The feature space's flags, as training defines them; unset, the run's own values apply.
FEATURE_FLAGS = ("fid_features", "inception_path", "stats_cache_dir")
cli.define_config_flags(names=FEATURE_FLAGS)
flags.adopt_module_key_flags(cli)  # --help lists them
FLAGS = flags.FLAGS


def _evaluate() -> dict:
    from wae_tf.evaluation import evaluator  # pylint: disable=import-outside-toplevel; after flag parsing
    if bool(FLAGS.workdir) == bool(FLAGS.saved_model):
        raise ConfigError("pass exactly one of --workdir and --saved_model.")
    kwargs = dict(output_dir=FLAGS.output_dir, num_samples=FLAGS.num_samples, seed=FLAGS.seed,
                  classifier_dir=FLAGS.classifier_dir, classifier_epochs=FLAGS.classifier_epochs)
    kwargs.update({name: FLAGS[name].value for name in FEATURE_FLAGS if FLAGS[name].present})
    if FLAGS.workdir:
        return evaluator.evaluate_workdir(FLAGS.workdir, **kwargs)
    return evaluator.evaluate_saved_model(FLAGS.saved_model, **kwargs)


def main(argv):
    sys.exit(cli.run_reporting_user_errors(_main, argv))


def _main(argv):
    cli.check_no_arguments(argv)
    cli.import_tensorflow()  # without its start-up noise, before the libraries load it
    print(json.dumps(_evaluate(), indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
