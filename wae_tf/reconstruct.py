"""Entry point: python -m wae_tf.reconstruct --image=FILE --out=FILE.png [--server=URL] asks a
model that TensorFlow Serving serves (REST, port 8501) for the reconstruction of an image file
(wae_tf.serving.rest_client) and writes it as a PNG.

stdout is one line of strict JSON: out, model, image_shape, mse_per_pixel. An answer holding NaN
or infinite pixels (a broken model) is refused in one line (exit 2), and no PNG is written."""

import json
import sys

from absl import app, flags

from wae_tf import cli

cli.DEFINE_path("image", None, "The image file (JPEG, PNG, BMP, GIF, WebP).", required=True)
cli.DEFINE_path("out", None, "The reconstruction's PNG file (in an existing folder).",
                required=True)
flags.DEFINE_string("server", "http://localhost:8501", "TensorFlow Serving's REST address.")
flags.DEFINE_string("model", "wae", "The served model's name (TF Serving's MODEL_NAME).")
flags.DEFINE_string("model_version", "", "A version to ask for; default: the latest served.")
flags.DEFINE_integer("crop", 0, "Centre crop side before resizing, as the model was trained "
                     "(--crop, or --celeba_crop for CelebA); 0 = the largest centred square.")
flags.DEFINE_float("timeout", 60.0, "Seconds to wait for each answer.")
FLAGS = flags.FLAGS


def main(argv):
    sys.exit(cli.run_reporting_user_errors(_main, argv))


def _main(argv):
    cli.check_no_arguments(argv)
    cli.import_tensorflow()  # without its start-up noise, before the libraries load it
    from wae_tf.serving import rest_client  # pylint: disable=import-outside-toplevel; after flag parsing
    result = rest_client.reconstruct_file(FLAGS.image, FLAGS.out, FLAGS.server, FLAGS.model,
                                          FLAGS.model_version, FLAGS.crop, FLAGS.timeout)
    print(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
