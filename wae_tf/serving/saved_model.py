"""The serving contract: a tf.Module with encode/decode/reconstruct/sample over plain Keras
networks, saved atomically as TF Serving's <base>/<version> SavedModel with its warm-up requests
and the networks' .keras files."""

import collections
import functools
import os

import tensorflow as tf
from absl import logging

from wae_tf import config as config_lib
from wae_tf import fileio
from wae_tf.config import Config
from wae_tf.errors import ConfigError, error_summary
from wae_tf.model import latent_sampler, networks, regularizers
from wae_tf.runtime import checkpoints
from wae_tf.serving import warmup

CONFIG_ASSET = checkpoints.EXPORT_RECORD  # the run record, with the run's identity
# The plain networks as Keras files, inside the version (written and renamed with it); TF
# Serving and saved_model_cli read saved_model.pb, variables/ and assets*/ only.
KERAS_DIR = "keras"


def _runtime_shape(tensor):
    """tf.shape(tensor) as a vector of unknown length. TF folds tf.rank and the size of
    tf.shape to the rank the input signature declares, so a request of another rank would pass
    a check built on them; a serialised round trip of the (tiny) shape hides the declared one."""
    return tf.io.parse_tensor(tf.io.serialize_tensor(tf.shape(tensor)), tf.int32)


def _check_shape(tensor, name: str, dims: str, expected):
    """An Assert that `tensor` has shape [N, *expected]; the rank is checked first (comparing
    shapes of different ranks would fail with TF's own "Incompatible shapes" instead)."""
    shape, expected = _runtime_shape(tensor), tf.constant(expected, tf.int32)
    ok = tf.cond(tf.equal(tf.size(shape), tf.size(expected) + 1),
                 lambda: tf.reduce_all(tf.equal(shape[1:], expected)),
                 lambda: tf.constant(False))
    return tf.debugging.Assert(ok, [f"{name} must have shape {dims} = [N] +", expected, "got",
                                    shape])


def _check_images(images, image_shape):
    """Fail the request unless images are [N, H, W, C] with values in [0, 1] (NaN fails too)."""
    with tf.control_dependencies([_check_shape(images, "images", "[N, H, W, C]", image_shape)]):
        ok = tf.reduce_all(tf.logical_and(images >= 0.0, images <= 1.0))
        return tf.debugging.Assert(ok, ["images must be finite float32 values in [0, 1]"])


def _check_z(z, z_dim: int):
    """Fail the request unless z is [N, z_dim] and finite."""
    with tf.control_dependencies([_check_shape(z, "z", "[N, z_dim]", [z_dim])]):
        return tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(z)), ["z must be finite"])


def _check_seed(seed):
    """Fail the request unless seed is a vector [N] (one image per seed)."""
    shape = _runtime_shape(seed)
    return tf.debugging.Assert(tf.equal(tf.size(shape), 1), [
        "seed must have shape [N] (one int64 per image), got", shape])


def _nonempty(images, image_shape):
    """(`images`, N) with one blank image in place of an empty batch: TF's Conv2D answers an
    empty batch in its input's shape, not its output's, and the next layer then fails. Callers
    keep the first N rows of what they compute, so N = 0 gives empty outputs."""
    n = tf.shape(images)[0]
    return tf.cond(n > 0, lambda: images, lambda: tf.zeros([1, *image_shape])), n


class _Untracked:
    """Holds Keras models where tf.Module's attribute tracking does not look."""

    def __init__(self, encoder, decoder):
        self.encoder, self.decoder = encoder, decoder


class WAEModule(tf.Module):
    """Serving signatures of a trained WAE; batch dimension None, float32 or int64 tensors."""

    def __init__(self, encoder, decoder, config: Config, image_shape, mixture=None):
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
        # No Python control flow to convert: without autograph, tracing never re-reads source.
        function = functools.partial(tf.function, autograph=False)
        self.encode = function(self._encode, input_signature=[images_spec])
        self.decode = function(self._decode, input_signature=[z_spec])
        self.reconstruct = function(self._reconstruct, input_signature=[images_spec])
        self.sample = function(self._sample, input_signature=[seed_spec])
        self.sample_fitted = None
        if mixture is not None:  # constants of the graph: the mixture is part of the export
            self._mixture = latent_sampler.as_tensors(mixture)
            self.sample_fitted = function(self._sample_fitted, input_signature=[seed_spec])

    def _encode(self, images):
        """images [N,H,W,C] in [0,1] -> z [N,z_dim] (the posterior mean if Gaussian, with its
        log-variance z_log_var [N,z_dim])."""
        with tf.control_dependencies([_check_images(images, self._image_shape)]):
            images, n = _nonempty(images, self._image_shape)
            out = self._models.encoder(images, training=False)
            if isinstance(out, (list, tuple)):
                return {"z": out[0][:n], "z_log_var": out[1][:n]}
            return {"z": out[:n]}

    def _decode(self, z):
        """z [N,z_dim] -> images [N,H,W,C] in [0,1]."""
        with tf.control_dependencies([_check_z(z, self._prior[1])]):
            return {"images": self._models.decoder(z, training=False)}

    def _reconstruct(self, images):
        """images -> their reconstructions and codes."""
        with tf.control_dependencies([_check_images(images, self._image_shape)]):
            images, n = _nonempty(images, self._image_shape)
            z = networks.encoder_mean(self._models.encoder, images)[:n]
            return {"images": self._models.decoder(z, training=False), "z": z}

    def _sample(self, seed):
        """seed int64 [N] -> images [N,H,W,C] decoded from prior draws; one seed, one image."""
        with tf.control_dependencies([_check_seed(seed)]):
            seed = tf.identity(seed)
        z = regularizers.sample_prior_per_seed(*self._prior, seed)  # [N, z_dim]
        return {"images": self._models.decoder(z, training=False)}

    def _sample_fitted(self, seed):
        """seed int64 [N] -> images [N,H,W,C] decoded from draws of the Gaussian mixture fitted
        to the training codes; one seed, one image, as `sample`."""
        with tf.control_dependencies([_check_seed(seed)]):
            seed = tf.identity(seed)
        z = latent_sampler.sample_per_seed(self._mixture, seed)
        return {"images": self._models.decoder(z, training=False)}


def signatures(module: WAEModule) -> dict:
    found = {"serving_default": module.reconstruct, "reconstruct": module.reconstruct,
             "encode": module.encode, "decode": module.decode, "sample": module.sample}
    if module.sample_fitted is not None:
        found["sample_fitted"] = module.sample_fitted
    return found


def serving_networks(encoder, decoder, config: Config, image_shape,
                     discriminator=None) -> networks.Models:
    """Plain Keras copies of trained networks (built from any LayerSet; the discriminator, if
    given, from built-in layers only): the serving graph and the .keras files are the same
    whatever machine-specific layers training used, and load without wae_tf."""
    plain = networks.make_models(config, image_shape, with_discriminator=discriminator is not None,
                                 builtin_layers_only=True)
    for trained, copy in zip((encoder, decoder, discriminator), plain):
        if trained is not None:
            networks.copy_weights(trained, copy)
    return plain


def save_keras_files(plain: networks.Models, directory: str) -> None:
    """`<directory>/keras/{encoder,decoder[,discriminator]}.keras`, named by role: Keras's own
    format, which keras.saving.load_model opens without wae_tf (plain networks:
    serving_networks)."""
    keras_dir = os.path.join(directory, KERAS_DIR)
    tf.io.gfile.makedirs(keras_dir)
    for role, model in plain._asdict().items():
        if model is not None:
            model.save(os.path.join(keras_dir, f"{role}.keras"))


def export_saved_model(encoder, decoder, config: Config, image_shape, base_dir: str,
                       version: int, mixture=None, discriminator=None, record=None,
                       plain_copies: bool = True) -> str:
    """Save the trained networks as `<base_dir>/<version>` (TF Serving's layout) atomically;
    return its path.

    The SavedModel holds plain Keras layers (serving_networks), or with `plain_copies=False`
    the given networks as they are (a user's own, which the paper's cannot copy; their .keras
    files then need their layers to be serializable). It is written to a temporary sibling
    directory and renamed into place, so a crash mid-write never leaves a partial version where
    TF Serving would load it; stale temporaries of this version are removed. With `mixture`
    (latent_sampler.GaussianMixture) it also serves `sample_fitted`. The version also holds TF
    Serving's warm-up requests (warmup.FILE) and the networks as .keras files
    (save_keras_files; the discriminator's of a WAE-GAN run when given). `record`: the run's
    record (checkpoints.check_run_record), written to CONFIG_ASSET; with it, a version of
    another run is never replaced (check_export_owner).
    """
    final_dir = os.path.join(base_dir, str(int(version)))
    if record is not None:
        check_export_owner(final_dir, record)
    _remove_stale_temporaries(final_dir)
    plain = serving_networks(encoder, decoder, config, image_shape, discriminator) \
        if plain_copies else networks.Models(encoder, decoder, discriminator)
    module = WAEModule(plain.encoder, plain.decoder, config, image_shape, mixture)
    tmp_dir = fileio.temporary_sibling(final_dir)  # not a number: TF Serving ignores it
    try:
        try:
            _write_version(tmp_dir, module, plain, config, image_shape, record)
        except (tf.errors.OpError, OSError, ConfigError) as error:  # full disk, read-only
            raise ConfigError(f"Could not export to {final_dir} ({error_summary(error)})"
                              ": free space or fix permissions, then export the checkpoint "
                              "again (python -m wae_tf.export).") from None
        if record is not None:  # another run may have exported this version meanwhile
            check_export_owner(final_dir, record)
        fileio.replace_directory(tmp_dir, final_dir)
    finally:  # gone after the rename; after an error or a signal, partial
        fileio.remove_quietly(tmp_dir)
    logging.info("Exported SavedModel to %s", final_dir)
    return final_dir


def _write_version(directory, module, plain, config, image_shape, record) -> None:
    tf.io.gfile.makedirs(directory)
    served = signatures(module)
    tf.saved_model.save(module, directory, signatures=served)
    tf.io.gfile.makedirs(os.path.join(directory, "assets.extra"))
    fileio.write_json(os.path.join(directory, CONFIG_ASSET),
                      record or config_lib.run_record(config, image_shape))
    warmup.write_requests(os.path.join(directory, warmup.FILE), list(served), config.z_dim,
                          image_shape)
    save_keras_files(plain, directory)


def _remove_stale_temporaries(final_dir: str) -> None:
    """What an export of this version killed mid-write left (its temporary directory)."""
    for path in tf.io.gfile.glob(fileio.temporary_sibling(final_dir).rsplit("-", 1)[0] + "-*"):
        logging.warning("Removing %s, left by an interrupted export.", path)
        fileio.remove_quietly(path)


def check_export_owner(version_dir: str, record: dict) -> bool:
    """True if `version_dir` holds this run's export, False if it does not exist; ConfigError
    if it holds another run's (config_lib.same_run), which an export must not replace."""
    if not tf.io.gfile.exists(version_dir):
        return False
    path = os.path.join(version_dir, CONFIG_ASSET)
    theirs = fileio.read_json(path) if tf.io.gfile.exists(path) else {}
    if config_lib.same_run(theirs, record):
        return True
    owner = (f"run {theirs.get('run_id')} in {theirs.get('workdir')}" if theirs.get("run_id")
             else f"a run with seed {theirs.get('seed')}" if theirs else "not a wae_tf run")
    raise ConfigError(
        f"{version_dir} holds the export of another run ({owner}); this run "
        f"({record.get('workdir', 'this --workdir')}) would replace it: pass another "
        f"--export_dir, or delete {version_dir} if that export is no longer wanted.")


TrainedModels = collections.namedtuple(
    "TrainedModels", "config image_shape encoder decoder step checkpoint_path discriminator")


def restore_trained_models(workdir: str) -> TrainedModels:
    """The plain Keras encoder, decoder and (WAE-GAN) discriminator of a training run, restored
    from its latest checkpoint (checkpoints hold the same variables whatever layers training
    used)."""
    config, image_shape = checkpoints.read_run_record(workdir)
    models = networks.make_models(config, image_shape)
    step = tf.Variable(0, dtype=tf.int64)
    items = dict(encoder=models.encoder, decoder=models.decoder, step=step)
    if models.discriminator is not None:
        items.update(discriminator=models.discriminator)
    directory = os.path.join(workdir, "checkpoints")
    # The newest readable one: a corrupt newest checkpoint is reported and the previous used.
    path = checkpoints.restore_newest_readable(tf.train.Checkpoint(**items), directory,
                                               partial=True)
    if not path:
        raise ConfigError(f"No checkpoint in {directory}.")
    return TrainedModels(config, image_shape, models.encoder, models.decoder,
                         int(step.numpy()), path, models.discriminator)


def export_from_workdir(workdir: str, export_dir: str = "") -> str:
    """Export the latest checkpoint of a training run; returns the version directory."""
    run = restore_trained_models(workdir)
    base = export_dir or run.config.export_dir or os.path.join(workdir, "export")
    mixture = latent_sampler.maybe_load(os.path.join(workdir, latent_sampler.FILE))
    record = dict(checkpoints.find_run_record(workdir))
    return export_saved_model(run.encoder, run.decoder, run.config, run.image_shape, base,
                              run.step, mixture, run.discriminator, record=record)


def load_export(path: str):
    """(version directory, run record, loaded SavedModel) of an export or of its base (the
    highest version); ConfigError naming what is missing or unreadable (no variables/, a
    damaged saved_model.pb or record, no encode/decode signatures)."""
    path = latest_version(path)
    record_path = os.path.join(path, CONFIG_ASSET)
    if not tf.io.gfile.exists(record_path):
        raise ConfigError(f"{path} has no {CONFIG_ASSET}, the run record every wae_tf export "
                          "holds: pass a version directory written by wae_tf's export.")
    record = config_lib.check_record(fileio.read_json(record_path), record_path)
    if not tf.io.gfile.exists(os.path.join(path, "variables", "variables.index")):
        raise ConfigError(f"{path} has no variables/ (the trained weights): copy the whole "
                          "version directory, or export again (python -m wae_tf.export).")
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        raise ConfigError(f"{path} is not a readable SavedModel ({error_summary(error)}): copy "
                          "it again, or export again (python -m wae_tf.export).") from None
    missing = [name for name in ("encode", "decode") if name not in loaded.signatures]
    if missing:
        raise ConfigError(f"{path} has no {' or '.join(missing)} signature: is it a wae_tf "
                          "export?")
    return path, record, loaded


def latest_version(path: str) -> str:
    """`path` if it holds a SavedModel, else its highest numbered version (TF Serving layout)."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(path) if n.rstrip("/").isdigit()] \
        if tf.io.gfile.isdir(path) else []
    if not versions:
        raise ConfigError(f"{path} is neither a SavedModel nor a directory of versions.")
    return os.path.join(path, str(max(versions)))
