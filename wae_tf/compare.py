"""Entry point: the paper's comparisons of VAEs and WAEs, a suite of runs trained alike
(wae_tf.tools.comparison).

    python -m wae_tf.compare --workdir_root=runs/compare --train_seeds=0,1,2
    python -m wae_tf.compare --suite=celeba --data_dir=DIR --train_steps=20 --width_divisor=16 \\
        --train_seeds=0 --num_samples=50 --workdir_root=runs/c

Flags other than the ones below pass to every run: training's (wae-train --help: --data_dir,
--train_steps, --width_divisor, ...) on top of each run's flagfile, and the evaluation's.
"""

import sys

from absl import app, flags

from wae_tf import cli

flags.DEFINE_string("suite", "fashion_mnist", "The runs to compare: fashion_mnist (VAEs, "
                    "WAE-MMD, WAE-GAN, WAE-SWD, flags/compare_*.cfg, sized for a CPU) or celeba "
                    "(the paper's Table 1: VAE, WAE-MMD, WAE-GAN from flags/celeba_*.cfg, with "
                    "the paper's values beside).")
cli.DEFINE_path("workdir_root", "runs/compare", "Directory holding one workdir per run.")
flags.DEFINE_integer("num_samples", 10000, "Samples (and test images) per evaluation.")
flags.DEFINE_integer("seed", 0, "Seed of the evaluation's prior samples and subsets.")
cli.DEFINE_path("classifier_dir", "", "Cache of the feature classifier; default "
                "~/.cache/wae_tf/classifier/<dataset>.")
flags.DEFINE_list("train_seeds", ["0", "1", "2"], "Training seeds: each model is trained once "
                  "per seed and reported as mean ± std.")
flags.DEFINE_list("runs", [], "Names of a subset of the suite's runs (fashion_mnist: vae, "
                  "vae_lambda01, wae_mmd, wae_gan, wae_swd; celeba: celeba_vae, celeba_wae_mmd, "
                  "celeba_wae_gan: wae_tf.tools.comparison.SUITES); default all.")
cli.validate_int_list("train_seeds")
FLAGS = flags.FLAGS


def parse_flags(argv):
    """wae-compare's own flags (flagfiles expanded as cli.expand_flagfiles does); the others stay
    in the returned list, for the runs."""
    return cli.parse_flags(argv, known_only=True)


def main(argv):
    sys.exit(cli.run_reporting_user_errors(_main, argv))


def _main(argv):
    cli.import_tensorflow()  # without its start-up noise, before the libraries load it
    from wae_tf.tools import comparison  # pylint: disable=import-outside-toplevel; after flag parsing
    print(comparison.run_comparison(
        FLAGS.workdir_root, FLAGS.num_samples, FLAGS.seed, FLAGS.classifier_dir,
        FLAGS.runs or None, [int(k) for k in FLAGS.train_seeds], FLAGS.suite, argv[1:]))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
