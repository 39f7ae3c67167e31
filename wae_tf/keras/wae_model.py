"""`WAE`: the WAE as a `keras.Model`, whose `train_step` is the training loop's step
(model/step.py), so `fit`, Keras callbacks and `.keras` files work; `export` writes the loop's
SavedModel contract (serving/saved_model.py).

It lives above `serving/` (see wae_tf/keras/__init__.py): `model/` holds the maths and may not
import the export.
"""

import dataclasses
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from wae_tf import config as config_lib
from wae_tf import data
from wae_tf.config import Config
from wae_tf.model import latent_sampler, networks, regularizers
from wae_tf.model import step as step_lib
from wae_tf.serving import saved_model

_ROLES = ("encoder", "decoder", "discriminator")
_TRAIN_METRICS = ("loss", "recon", "penalty", "disc_loss")  # disc_loss: gan only
_TEST_METRICS = ("recon", "mse")  # `val_recon`, `val_mse` in fit's logs


def _float_images(images):
    """uint8 images -> float32 in [0, 1] (x / 255); float images -> float32 as they are."""
    images = tf.convert_to_tensor(images)
    return data.to_float(images) if images.dtype == tf.uint8 else tf.cast(images, tf.float32)


def _unpack_images(batch):
    """The images of a batch from `fit`/`evaluate`: x alone, or x of (x, y[, weights])."""
    return _float_images(keras.utils.unpack_x_y_sample_weight(batch)[0])


def _check_output(what: str, network, inputs, expected) -> None:
    """ValueError unless `network(inputs)` (a tensor or a list of them) has the `expected`
    shapes; Keras's own error for inputs it refuses is named `what` too."""
    try:
        outputs = network(inputs, training=False)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(f"{what}: {error}") from None
    got = [tuple(t.shape) for t in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
    if got != [tuple(e) for e in expected]:
        raise ValueError(f"{what}: expected output shapes {expected} on a batch of 2, got {got}.")


def check_networks(config: Config, image_shape, models: networks.Models) -> None:
    """ValueError unless the encoder maps images [N, H, W, C] to z [N, z_dim] (--encoder=
    gaussian: [mean, log_var], each [N, z_dim]), the decoder z to images [N, H, W, C] and the
    discriminator (gan) z to logits [N, 1]; checked on a batch of 2 zeros."""
    z_dim, z = config.z_dim, tf.zeros([2, config.z_dim])
    heads = 2 if config.encoder == "gaussian" else 1
    _check_output(f"encoder (--encoder={config.encoder}, z_dim={z_dim}) on images "
                  f"[2, {', '.join(map(str, image_shape))}]", models.encoder,
                  tf.zeros([2, *image_shape]), [(2, z_dim)] * heads)
    _check_output(f"decoder on z [2, {z_dim}]", models.decoder, z, [(2, *image_shape)])
    if models.discriminator is not None:
        _check_output(f"discriminator on z [2, {z_dim}]", models.discriminator, z, [(2, 1)])


def build_networks(config: Config, image_shape, given: dict) -> networks.Models:
    """The user's networks (`given`: role -> keras.Model or None) completed by the paper's
    (step.create_models, seeded by --seed), shapes checked."""
    if config.regularizer != "gan" and given["discriminator"] is not None:
        raise ValueError("discriminator= is for --regularizer=gan only.")
    if given["encoder"] is None or given["decoder"] is None:
        built = step_lib.create_models(config, image_shape)
    else:  # only the discriminator may be missing: the paper's, for any image shape
        keras.utils.set_random_seed(config.seed)
        with networks.dtype_policy(config):
            built = networks.Models(None, None, networks.make_discriminator(
                config, image_shape) if config.regularizer == "gan" else None)
    models = networks.Models(*(given[r] if given[r] is not None else getattr(built, r)
                               for r in _ROLES))
    check_networks(config, image_shape, models)
    return models


@keras.saving.register_keras_serializable(package="wae_tf")
class WAE(keras.Model):
    """A Wasserstein Auto-Encoder trained with `fit`; the step is the training loop's.

    `WAE(config=None, image_shape=(28, 28, 1), encoder=None, decoder=None,
    discriminator=None, **overrides)`: the hyper-parameters are a `Config` (the command line's
    flags; `overrides` replace fields, e.g. `WAE(regularizer="gan", z_dim=16)`), the networks
    the paper's for `image_shape`, or your own Keras models: an encoder from images
    [N, H, W, C] in [0, 1] to z [N, z_dim] (with --encoder=gaussian a list [mean, log_var]),
    a decoder from z to images in [0, 1], for gan a discriminator from z to logits [N, 1]
    (shapes checked). A deterministic encoder's codes should lie where the prior has support
    (the paper's networks project them onto a sphere or box prior). The length of training is
    `fit`'s; the Config's `epochs` only sets an `lr_schedule`'s length.

    Like the loop's `train_step`, `fit` takes batches of images [b, H, W, C] (float32 in
    [0, 1] or uint8; labels in (x, y) are ignored) and logs `loss`, `recon`, `penalty` (and
    `disc_loss`), each the global batch's, averaged over the epoch; `evaluate` and validation
    log the test reconstruction cost `recon` and `mse` per pixel. The step counter is the
    auto-encoder optimizer's `iterations` (restored with the weights by `ModelCheckpoint`,
    `BackupAndRestore` and `.keras` files); under mixed_float16 it skips the steps the loss
    scaler skips. Create and compile it inside `strategy.scope()` to train on several devices;
    a batch must then split evenly. `fit` does not pre-train the encoder
    (--encoder_pretrain_steps): call `pretrain_encoder` first.
    """

    def __init__(self, config: Optional[Config] = None, image_shape=(28, 28, 1), encoder=None,
                 decoder=None, discriminator=None, name: str = "wae", **overrides):
        super().__init__(name=name)
        config = (config or Config()).replace(**overrides)
        # fit sets the length: a Config without one is valid here.
        (config if config.train_steps or config.epochs else
         config.replace(train_steps=1)).validate()
        self.config = config
        self.image_shape = tuple(int(d) for d in image_shape)
        given = dict(encoder=encoder, decoder=decoder, discriminator=discriminator)
        self._user_roles = [role for role in _ROLES if given[role] is not None]
        self.encoder, self.decoder, self.discriminator = build_networks(
            config, self.image_shape, given)
        gan = self.discriminator is not None
        names = [n for n in _TRAIN_METRICS if n != "disc_loss" or gan] + ["mse"]
        self._means = {n: keras.metrics.Mean(name=n) for n in names}
        self.disc_optimizer = None
        self._compile_args = {}
        self.built = True

    # ------------------------------------------------------------------------- training

    def compile(self, optimizer=None, disc_optimizer=None, steps_per_epoch: Optional[int] = None,
                run_eagerly: bool = False, steps_per_execution: Optional[int] = None,
                jit_compile: Optional[bool] = None):
        """The paper's Adam for each player by default (step.create_optimizers: --learning_rate,
        --disc_learning_rate, --adam_beta1/2, --lr_schedule over `steps_per_epoch`, needed by
        a schedule other than constant), or your own; both are built here over their
        variables (a Keras optimizer first built inside the distributed step fails).
        `steps_per_execution` and `jit_compile` default to --steps_per_loop, --jit_compile."""
        if self.config.lr_schedule != "constant" and not steps_per_epoch:
            raise ValueError(f"--lr_schedule={self.config.lr_schedule} counts epochs: pass "
                             "compile(steps_per_epoch=...).")
        if disc_optimizer is not None and self.discriminator is None:
            raise ValueError("disc_optimizer= is for --regularizer=gan only.")
        with self.distribute_strategy.scope():
            paper_ae, paper_disc = step_lib.create_optimizers(
                self.config, steps_per_epoch or 1, self.config.epochs or 1)
            optimizer = paper_ae if optimizer is None else keras.optimizers.get(optimizer)
            disc_optimizer = paper_disc if disc_optimizer is None else \
                keras.optimizers.get(disc_optimizer)
        settings = dict(
            run_eagerly=run_eagerly, jit_compile=self.config.jit_compile if jit_compile is None
            else jit_compile, steps_per_execution=steps_per_execution or self.config.steps_per_loop)
        super().compile(optimizer=optimizer, **settings)
        self.disc_optimizer = disc_optimizer
        with self.distribute_strategy.scope():
            for opt, variables in ((self.optimizer, self._state().ae_variables),
                                   (disc_optimizer, self._disc_variables())):
                if opt is not None and not opt.built:
                    opt.build(variables)
        self._compile_args = dict(optimizer=self.optimizer, disc_optimizer=disc_optimizer,
                                  steps_per_epoch=steps_per_epoch, **settings)

    def _disc_variables(self) -> list:
        return [] if self.discriminator is None else self.discriminator.trainable_variables

    def _state(self) -> step_lib.TrainState:
        """The networks and optimizers as the loop's step takes them; its step counter is the
        auto-encoder optimizer's iteration count."""
        optimizer = getattr(self, "optimizer", None)
        return step_lib.TrainState(self.encoder, self.decoder, self.discriminator, optimizer,
                                   self.disc_optimizer,
                                   optimizer.iterations if optimizer is not None else None)

    @property
    def metrics(self):
        return list(self._means.values())

    def train_step(self, batch):
        """step.train_step on this replica's images; logs the global batch's losses."""
        step = tf.convert_to_tensor(self.optimizer.iterations)  # read before the update
        shares = step_lib.train_step(self.config, self._state(), _unpack_images(batch), step)
        # Each replica holds its share: every replica records the sum, the global batch's.
        totals = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                shares)
        for name, value in totals.items():
            self._means[name].update_state(value)
        return {name: self._means[name].result() for name in totals}

    def test_step(self, batch):
        """The reconstruction cost c(x, G(E(x))) per image and the MSE per pixel, of the
        encoder's mean, as the loop's test metrics (test_recon_cost, test_mse_per_pixel)."""
        images = _unpack_images(batch)
        recon = self(images, training=False)  # [b, H, W, C]
        self._means["recon"].update_state(regularizers.reconstruction_cost(
            images, recon, self.config.recon, self.config.pixel_scale))  # [b]
        self._means["mse"].update_state(tf.reduce_mean(tf.square(images - recon), [1, 2, 3]))
        return {name: self._means[name].result() for name in _TEST_METRICS}

    def pretrain_encoder(self, dataset: tf.data.Dataset) -> list:
        """The paper code's encoder pre-training (step.pretrain_encoder: up to
        --encoder_pretrain_steps steps moving the codes' moments to the prior's) on a dataset
        of image batches; returns the losses. Call it before `fit`, as the loop does."""
        strategy = self.distribute_strategy
        dataset = dataset.map(_unpack_images)
        return step_lib.pretrain_encoder(self.config, self._state(), strategy,
                                         iter(strategy.experimental_distribute_dataset(dataset)))

    # ------------------------------------------------------------------------- use

    def call(self, images, training=False):
        """images [N, H, W, C] -> reconstructions from the encoder's mean (`predict`)."""
        z = networks.encoder_mean(self.encoder, _float_images(images))
        return self.decoder(z, training=training)

    def encode(self, images, batch_size: int = 256) -> np.ndarray:
        """images [N, H, W, C] (float32 in [0, 1] or uint8) -> codes [N, z_dim] (a Gaussian
        encoder's mean), as the export's `encode`."""
        codes = self.encoder.predict(_float_images(images), batch_size=batch_size, verbose=0)
        return codes[0] if isinstance(codes, (list, tuple)) else codes

    def decode(self, z, batch_size: int = 256) -> np.ndarray:
        """z [N, z_dim] -> images [N, H, W, C] in [0, 1]."""
        return self.decoder.predict(tf.cast(z, tf.float32), batch_size=batch_size, verbose=0)

    def sample(self, num: int, seed: int = 0) -> np.ndarray:
        """`num` images [num, H, W, C] decoded from prior draws of the seeds seed, seed + 1,
        ...: the export's `sample` signature on those seeds."""
        seeds = tf.range(seed, seed + num, dtype=tf.int64)
        return self.decode(regularizers.sample_prior_per_seed(
            self.config.prior, self.config.z_dim, self.config.prior_scale, seeds))

    def export(self, base_dir: str, version: Optional[int] = None,
               sampler_images=None) -> str:
        """The loop's SavedModel (serving/saved_model.py: signatures, warm-up requests, the
        networks' .keras files) as `<base_dir>/<version>`, version defaulting to the step;
        returns its path. With `sampler_images` (and --sampler_components) it also serves
        `sample_fitted`, from a Gaussian mixture fitted to their codes. The paper's networks
        are exported as plain Keras copies, yours as they are."""
        mixture = None
        if sampler_images is not None and self.config.sampler_components:
            codes = self.encode(sampler_images)
            mixture = latent_sampler.fit_gmm(codes, min(self.config.sampler_components,
                                                        len(codes)), self.config.seed)
        if version is None:
            state = self._state()
            version = int(state.step.numpy()) if state.step is not None else 0
        return saved_model.export_saved_model(
            self.encoder, self.decoder, self.config, self.image_shape, base_dir, version,
            mixture, self.discriminator, plain_copies=not self._user_roles)

    # ------------------------------------------------------------------------- saving

    def get_config(self) -> dict:
        """The Config's fields, the image shape and your own networks (the paper's are rebuilt
        from the Config): `.keras` files and `keras.saving.load_model` work."""
        networks_config = {role: keras.saving.serialize_keras_object(getattr(self, role))
                           for role in self._user_roles}
        return dict(name=self.name, config=dataclasses.asdict(self.config),
                    image_shape=list(self.image_shape), **networks_config)

    @classmethod
    def from_config(cls, config: dict) -> "WAE":
        config = dict(config)
        given = {role: keras.saving.deserialize_keras_object(config.pop(role))
                 for role in _ROLES if role in config}
        return cls(config_lib.from_dict(config["config"]), tuple(config["image_shape"]),
                   name=config.get("name", "wae"), **given)

    def get_compile_config(self) -> dict:
        return keras.saving.serialize_keras_object(self._compile_args) if self.compiled else {}

    def compile_from_config(self, config: dict) -> None:
        self.compile(**keras.saving.deserialize_keras_object(config))
