"""Entry point: python -m wae_tf.encode --saved_model=DIR --images=DIR --out=codes.npz writes the
code of every image in a folder (wae_tf.serving.encoding), with the file names, in batches."""

import json
import sys

from absl import app, flags

from wae_tf import cli

flags.DEFINE_string("saved_model", None, "An export: a version directory or its base (the "
                    "highest version is used).", required=True)
flags.DEFINE_string("images", None, "Directory of image files (searched recursively).",
                    required=True)
flags.DEFINE_string("out", None, "Output .npz: codes [N, z_dim], files [N], skipped.",
                    required=True)
flags.DEFINE_integer("batch_size", 256, "Images per call of the encode signature.")
flags.DEFINE_bool("skip_bad_images", False, "Leave out files that cannot be decoded (listed "
                  "in the output's `skipped`) instead of stopping.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from wae_tf.serving import encoding  # pylint: disable=import-outside-toplevel; after flag parsing
    sys.exit(cli.run_reporting_user_errors(lambda: print(json.dumps(encoding.encode_folder(
        FLAGS.saved_model, FLAGS.images, FLAGS.out, FLAGS.batch_size, FLAGS.skip_bad_images)))))


if __name__ == "__main__":
    app.run(main)
