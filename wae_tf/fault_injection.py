"""Entry point: python -m wae_tf.fault_injection --kills=5 --workdir=/tmp/faults interrupts a
training run in every way wae_tf.tools.faults lists (SIGKILL, SIGTERM and SIGINT in training and
start-up, a lost checkpoint state file, a full disk), resumes it, compares it with a clean run
and prints a table of the faults; then the export window, a shared --export_dir, a deleted
config.json, a workdir in use and the --cache_dir cases (wae_tf.tools.faults.scenarios). Exit
code 0 when every check passes."""

import sys

from absl import app, flags

from wae_tf import cli
from wae_tf.tools import faults

flags.DEFINE_integer("kills", 5, "How many times to SIGKILL the run.")
flags.DEFINE_bool("sigterm", True, "Also interrupt once with SIGTERM (must save, exit 143).")
cli.DEFINE_path("workdir", None, "Scratch directory (reference/ and killed/ runs).",
                required=True)
flags.DEFINE_integer("train_steps", 300, "Training length of both runs.")
flags.DEFINE_integer("checkpoint_every", 25, "Checkpoint period of both runs.")
flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
cli.DEFINE_path("flagfile_train", "flags/test_tiny.cfg", "Flagfile of the training runs.")
flags.DEFINE_multi_string("train_flag", [], "Extra flag for the training runs (repeatable).")
flags.DEFINE_integer("timeout", 600, "Seconds allowed for each training process.")
flags.DEFINE_bool("full_disk", True, "Also fill a small tmpfs (needs root; else skipped).")
flags.DEFINE_bool("scenarios", True, "Also the export window, a shared --export_dir, a deleted "
                  "config.json, a workdir in use, an image replaced and a bad file fixed under "
                  "--cache_dir, each in runs of its own.")
FLAGS = flags.FLAGS


def main(argv):
    outcome = {}
    code = cli.run_reporting_user_errors(_main, argv, outcome)
    sys.exit(code or (0 if outcome.get("ok") else 1))


def _main(argv, outcome: dict):
    cli.check_no_arguments(argv)
    options = faults.Options(
        workdir=FLAGS.workdir, kills=FLAGS.kills, sigterm=FLAGS.sigterm,
        train_steps=FLAGS.train_steps, checkpoint_every=FLAGS.checkpoint_every, seed=FLAGS.seed,
        flagfile_train=FLAGS.flagfile_train, train_flag=tuple(FLAGS.train_flag),
        timeout=FLAGS.timeout, full_disk=FLAGS.full_disk, scenarios=FLAGS.scenarios)
    outcome["ok"] = faults.run(options)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
