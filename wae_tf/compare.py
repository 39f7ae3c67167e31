"""Entry point: the paper's comparison of VAEs, WAE-MMD, WAE-GAN and WAE-SWD
(wae_tf.tools.comparison).

    python -m wae_tf.compare --workdir_root=runs/compare --train_seeds=0,1,2
"""

import sys

from absl import app, flags

from wae_tf import cli

cli.DEFINE_path("workdir_root", "runs/compare", "Directory holding one workdir per run.")
flags.DEFINE_integer("num_samples", 10000, "Samples (and test images) per evaluation.")
flags.DEFINE_integer("seed", 0, "Seed of the evaluation's prior samples and subsets.")
cli.DEFINE_path("classifier_dir", "", "Cache of the feature classifier; default "
                "~/.cache/wae_tf/classifier/<dataset>.")
flags.DEFINE_list("train_seeds", ["0", "1", "2"], "Training seeds: each model is trained once "
                  "per seed and reported as mean ± std.")
flags.DEFINE_list("runs", [], "Names of a subset of the runs (vae, vae_lambda01, wae_mmd, "
                  "wae_gan, wae_swd: wae_tf.tools.comparison.RUNS); default all.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cli.import_tensorflow()  # without its start-up noise, before the libraries load it
    from wae_tf.tools import comparison  # pylint: disable=import-outside-toplevel; after flag parsing
    sys.exit(cli.run_reporting_user_errors(lambda: print(comparison.run_comparison(
        FLAGS.workdir_root, FLAGS.num_samples, FLAGS.seed, FLAGS.classifier_dir,
        FLAGS.runs or None, [int(k) for k in FLAGS.train_seeds]))))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
