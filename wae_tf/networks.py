"""The paper's encoder, decoder and latent discriminator as named Keras models."""

import math

import keras
import tensorflow as tf
from keras import layers

from wae_tf.config import Config

# Channel counts of the paper's DCGAN-style networks (before --width_divisor).
ENCODER_CHANNELS = (128, 256, 512, 1024)
DECODER_CHANNELS = {28: (512, 256), 64: (512, 256, 128)}
KERNEL_SIZE = {28: 4, 64: 5}
DISC_UNITS = {28: 512, 64: 1024}


def _channels(count: int, config: Config) -> int:
    return max(1, count // config.width_divisor)


@keras.saving.register_keras_serializable(package="wae_tf")
class PatchConv2D(layers.Layer):
    """A bias-free stride-2 SAME Conv2D computed as image patches times a matrix.

    Same kernel variable [k, k, C_in, C_out] and outputs as `layers.Conv2D`. On CPUs, the
    gradients of convolutions with tiny outputs (4x4 -> 2x2, 1024 channels) run at ~2 GFLOP/s in
    TF's kernels; as one matmul the whole layer is 16x faster (BUILD.md, Performance).
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size

    def build(self, input_shape):
        # `_kernel`, as in layers.Conv2D: checkpoints of either layer restore into the other.
        self._kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, input_shape[-1],
                                  self.filters), initializer="glorot_uniform")

    @property
    def kernel(self):
        return self._kernel

    def call(self, x):
        size, k = x.shape[1], self.kernel_size
        out = -(-size // 2)
        pad = max((out - 1) * 2 + k - size, 0)  # SAME padding, as tf.nn.conv2d places it
        x = tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]])
        patches = tf.image.extract_patches(x, [1, k, k, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID")
        kernel = tf.cast(tf.reshape(self.kernel, [-1, self.filters]), patches.dtype)
        rows = tf.reshape(patches, [-1, patches.shape[-1]])  # [N*out*out, k*k*C_in]
        return tf.reshape(tf.matmul(rows, kernel), [-1, out, out, self.filters])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


def use_patch_conv(config: Config, output_size: int) -> bool:
    """--conv_impl: auto takes PatchConv2D for outputs of at most 4x4 on machines without GPU."""
    if config.conv_impl == "auto":
        return output_size <= 4 and not tf.config.list_logical_devices("GPU")
    return config.conv_impl == "patches"


def _conv_block(x, filters, kernel, strides, config, transpose, name):
    # No bias: the BatchNorm that follows removes it (its gradient is float noise).
    if not transpose and use_patch_conv(config, -(-x.shape[1] // strides)):
        x = PatchConv2D(filters, kernel, name=f"{name}_conv")(x)
    else:
        conv = layers.Conv2DTranspose if transpose else layers.Conv2D
        x = conv(filters, kernel, strides=strides, padding="same", use_bias=False,
                 name=f"{name}_conv")(x)
    x = layers.BatchNormalization(synchronized=config.sync_batchnorm, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def make_encoder(config: Config, image_shape) -> keras.Model:
    """Images [N,H,W,C] in [0,1] -> z [N,z_dim] (deterministic) or [mean, log_var] (gaussian)."""
    size = image_shape[0]
    images = keras.Input(shape=tuple(image_shape), name="images")
    x = images
    for i, count in enumerate(ENCODER_CHANNELS):
        x = _conv_block(x, _channels(count, config), KERNEL_SIZE[size], 2, config, False,
                        name=f"enc{i}")
    x = layers.Flatten(name="flatten")(x)
    if config.encoder == "gaussian":
        # float32 heads: codes stay float32 under --mixed_precision.
        mean = layers.Dense(config.z_dim, name="z_mean", dtype="float32")(x)  # [N, z_dim]
        log_var = layers.Dense(config.z_dim, name="z_log_var", dtype="float32")(x)  # [N, z_dim]
        outputs = [mean, log_var]
    else:
        outputs = layers.Dense(config.z_dim, name="z", dtype="float32")(x)  # [N, z_dim]
    return keras.Model(images, outputs, name="encoder")


def encoder_mean(encoder: keras.Model, images):
    """Deterministic codes [N, z_dim]: the output, or the mean head of a Gaussian encoder."""
    out = encoder(images, training=False)
    return out[0] if isinstance(out, (list, tuple)) else out


def make_decoder(config: Config, image_shape) -> keras.Model:
    """z [N,z_dim] -> images [N,H,W,C] in (0,1) through a sigmoid."""
    size, _, out_channels = image_shape
    channels = DECODER_CHANNELS[size]
    base = size // 2 ** (len(channels))  # 28 -> 7, 64 -> 8
    first = _channels(1024, config)
    z = keras.Input(shape=(config.z_dim,), name="z")
    x = layers.Dense(base * base * first, name="project")(z)
    x = layers.Reshape((base, base, first), name="reshape")(x)
    x = layers.ReLU(name="project_relu")(x)
    for i, count in enumerate(channels):
        x = _conv_block(x, _channels(count, config), KERNEL_SIZE[size], 2, config, True,
                        name=f"dec{i}")
    x = layers.Conv2DTranspose(out_channels, KERNEL_SIZE[size], strides=1, padding="same",
                               name="out_conv")(x)
    images = layers.Activation("sigmoid", name="images", dtype="float32")(x)
    return keras.Model(z, images, name="decoder")


@keras.saving.register_keras_serializable(package="wae_tf")
class NormalLogDensity(layers.Layer):
    """Adds log N(z; 0, s^2 I) to a logit: the paper code's prior-aware discriminator for CelebA."""

    def __init__(self, z_dim, scale, **kwargs):
        super().__init__(**kwargs)
        self.z_dim, self.scale = z_dim, scale

    def call(self, logit, z):
        sigma2 = self.scale ** 2
        normsq = keras.ops.sum(keras.ops.square(z), axis=1, keepdims=True)  # [N, 1]
        log_norm = 0.5 * self.z_dim * math.log(2.0 * math.pi * sigma2)
        return logit - normsq / (2.0 * sigma2) - log_norm

    def get_config(self):
        return {**super().get_config(), "z_dim": self.z_dim, "scale": self.scale}


def make_discriminator(config: Config, image_shape) -> keras.Model:
    """z [N,z_dim] -> logit [N,1] that z was drawn from the prior (WAE-GAN)."""
    units = _channels(DISC_UNITS[image_shape[0]], config)
    z = keras.Input(shape=(config.z_dim,), name="z")
    x = z
    for i in range(4):
        x = layers.Dense(units, activation="relu", name=f"dense{i}")(x)
    logit = layers.Dense(1, name="logit", dtype="float32")(x)  # [N, 1], float32 when mixed
    if config.disc_prior_logdensity:
        logit = NormalLogDensity(config.z_dim, config.prior_scale, name="prior_logdensity",
                                 dtype="float32")(logit, z)
    return keras.Model(z, logit, name="discriminator")


def network_image_size(image_shape) -> int:
    """Check that a paper network exists for these images and return their side."""
    height, width, _ = image_shape
    if height != width or height not in KERNEL_SIZE:
        raise ValueError(f"Images of shape {tuple(image_shape)}: the paper's networks take 28x28 "
                         "or 64x64; pass --image_size=28 or 64 to resize.")
    return height
