"""Entry point: python -m wae_tf.encode --saved_model=DIR --images=DIR --out=codes.npz writes the
code of every image in a folder (wae_tf.serving.encoding), with the file names, labels and splits,
in batches; --out=codes.csv or codes.npy for other formats."""

import json
import sys

from absl import app, flags

from wae_tf import cli

cli.DEFINE_path("saved_model", None, "An export: a version directory or its base (the "
                "highest version is used).", required=True)
cli.DEFINE_path("images", None, "Directory of image files (searched recursively).",
                required=True)
cli.DEFINE_path("out", None, "Output file, its format by extension: .npz (codes, files, labels, "
                "split, classes, skipped), .npy (codes) or .csv (file,label,split,z0..).",
                required=True)
flags.DEFINE_integer("batch_size", 256, "Images per call of the encode signature.")
flags.DEFINE_bool("skip_bad_images", False, "Leave out files that cannot be decoded (listed "
                  "in the output's `skipped`) instead of stopping.")
FLAGS = flags.FLAGS


def main(argv):
    sys.exit(cli.run_reporting_user_errors(_main, argv))


def _main(argv):
    cli.check_no_arguments(argv)
    cli.import_tensorflow()  # without its start-up noise, before the libraries load it
    from wae_tf.serving import encoding  # pylint: disable=import-outside-toplevel; after flag parsing
    print(json.dumps(encoding.encode_folder(FLAGS.saved_model, FLAGS.images, FLAGS.out,
                                            FLAGS.batch_size, FLAGS.skip_bad_images)))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
