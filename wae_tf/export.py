"""The serving contract: a tf.Module with encode/decode/reconstruct/sample, saved atomically."""

import os
import tempfile

import tensorflow as tf
from absl import logging

from wae_tf import checkpoints
from wae_tf import networks
from wae_tf import regularizers
from wae_tf.config import Config

CONFIG_ASSET = os.path.join("assets.extra", "wae_config.json")


def _check_images(images, image_shape):
    """Fail the request unless images are [N, H, W, C] with values in [0, 1] (NaN fails too)."""
    shape_ok = tf.reduce_all(tf.equal(tf.shape(images)[1:], tf.constant(image_shape)))
    with tf.control_dependencies([tf.debugging.Assert(
            shape_ok, ["images must have shape [N, H, W, C] =", tf.constant(image_shape),
                       "got", tf.shape(images)])]):
        ok = tf.reduce_all(tf.logical_and(images >= 0.0, images <= 1.0))
        return tf.debugging.Assert(ok, ["images must be finite float32 values in [0, 1]"])


def _check_finite(z):
    return tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(z)), ["z must be finite"])


class _Untracked:
    """Holds Keras models where tf.Module's attribute tracking does not look."""

    def __init__(self, encoder, decoder):
        self.encoder, self.decoder = encoder, decoder


class WAEModule(tf.Module):
    """Serving signatures of a trained WAE; batch dimension None, float32 or int64 tensors."""

    def __init__(self, encoder, decoder, config: Config, image_shape):
        super().__init__(name="wae")
        # Track the raw tf.Variables, not the Keras models: Keras 3 variables saved through the
        # models are stored twice, and the TF1 loader that TF Serving and saved_model_cli use
        # then fails with "Could not find variable" (keras-team/keras#20095).
        self.model_variables = [v.value for v in encoder.variables + decoder.variables]
        self._models = _Untracked(encoder, decoder)
        self._image_shape = [int(d) for d in image_shape]
        self._prior = (config.prior, config.z_dim, config.prior_scale)
        images_spec = tf.TensorSpec([None, *image_shape], tf.float32, name="images")
        z_spec = tf.TensorSpec([None, config.z_dim], tf.float32, name="z")
        seed_spec = tf.TensorSpec([None], tf.int64, name="seed")
        self.encode = tf.function(self._encode, input_signature=[images_spec])
        self.decode = tf.function(self._decode, input_signature=[z_spec])
        self.reconstruct = tf.function(self._reconstruct, input_signature=[images_spec])
        self.sample = tf.function(self._sample, input_signature=[seed_spec])

    def _encode(self, images):
        """images [N,H,W,C] in [0,1] -> z [N,z_dim] (the posterior mean if Gaussian)."""
        with tf.control_dependencies([_check_images(images, self._image_shape)]):
            return {"z": networks.encoder_mean(self._models.encoder, images)}

    def _decode(self, z):
        """z [N,z_dim] -> images [N,H,W,C] in [0,1]."""
        with tf.control_dependencies([_check_finite(z)]):
            return {"images": self._models.decoder(z, training=False)}

    def _reconstruct(self, images):
        """images -> their reconstructions and codes."""
        with tf.control_dependencies([_check_images(images, self._image_shape)]):
            z = networks.encoder_mean(self._models.encoder, images)
            return {"images": self._models.decoder(z, training=False), "z": z}

    def _sample(self, seed):
        """seed int64 [N] -> images [N,H,W,C] decoded from prior draws; one seed, one image."""
        kind, z_dim, scale = self._prior

        def draw(one_seed):
            pair = tf.stack([one_seed, tf.zeros_like(one_seed)])
            return regularizers.sample_prior(kind, 1, z_dim, scale, pair)[0]  # [z_dim]

        z = tf.map_fn(draw, seed, fn_output_signature=tf.TensorSpec([z_dim], tf.float32))
        return {"images": self._models.decoder(z, training=False)}


def signatures(module: WAEModule) -> dict:
    return {"serving_default": module.reconstruct, "reconstruct": module.reconstruct,
            "encode": module.encode, "decode": module.decode, "sample": module.sample}


def export_saved_model(encoder, decoder, config: Config, image_shape, base_dir: str,
                       version: int) -> str:
    """Save `<base_dir>/<version>` (TF Serving's layout) atomically; return its path.

    The SavedModel is written to a temporary sibling directory and renamed into place, so a
    crash mid-write never leaves a partial version where TF Serving would load it.
    """
    module = WAEModule(encoder, decoder, config, image_shape)
    tf.io.gfile.makedirs(base_dir)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; a serving container may be another user
    tf.saved_model.save(module, tmp_dir, signatures=signatures(module))
    tf.io.gfile.makedirs(os.path.join(tmp_dir, "assets.extra"))
    with tf.io.gfile.GFile(os.path.join(tmp_dir, CONFIG_ASSET), "w") as f:
        f.write(config.to_json())
    final_dir = os.path.join(base_dir, str(int(version)))
    checkpoints.replace_directory(tmp_dir, final_dir)
    logging.info("Exported SavedModel to %s", final_dir)
    return final_dir



def export_from_workdir(workdir: str, export_dir: str = "") -> str:
    """Export the latest checkpoint of a training run; returns the version directory."""
    run = checkpoints.restore_trained_models(workdir)
    base = export_dir or run.config.export_dir or os.path.join(workdir, "export")
    return export_saved_model(run.encoder, run.decoder, run.config, run.image_shape, base,
                              run.step)


if __name__ == "__main__":
    import sys

    from absl import app, flags

    from wae_tf import cli

    flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
    flags.DEFINE_string("export_dir", "", "Base directory of the export; default: the run's.")

    def main(argv):
        del argv
        sys.exit(cli.run_reporting_user_errors(lambda: print(export_from_workdir(
            flags.FLAGS.workdir, flags.FLAGS.export_dir))))

    app.run(main)
