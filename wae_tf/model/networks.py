"""The paper's encoder, decoder and latent discriminator as named Keras models.

The architectures follow the appendix of Tolstikhin et al. (2018) and the paper's code
(`models.py`): DCGAN-style stride-2 convolutions with BatchNorm and ReLU. The layers they are
made of come from a `LayerSet`, plain Keras by default; training passes faster forms with the
same variables (wae_tf.perf.fast_layers), so a checkpoint restores into either.
"""

import contextlib
import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import keras
from keras import layers

from wae_tf.config import Config

# Image sides with a network: the paper's MNIST (28) and CelebA (64) networks, and the CelebA
# family at other powers of two, one stride-2 block more (or less) per doubling (or halving).
IMAGE_SIZES = (28, 32, 64, 128, 256)


def encoder_channels(size: int):
    """Channels of the encoder's stride-2 blocks (before --width_divisor), down to 4x4 (28: 2x2).

    28 and 64: (128, 256, 512, 1024) as in the paper; 128: (64, 128, ..., 1024); 32: (256, ...).
    """
    if size == 28:
        return (128, 256, 512, 1024)
    blocks = size.bit_length() - 3  # 64 -> 4 blocks: 64, 32, 16, 8 -> 4
    return tuple(1024 >> (blocks - 1 - i) for i in range(blocks))


def decoder_channels(size: int):
    """Channels of the decoder's stride-2 transposed blocks, up from 7x7 (28) or 8x8.

    28: (512, 256) and 64: (512, 256, 128) as in the paper; 128: (512, 256, 128, 64)."""
    if size == 28:
        return (512, 256)
    return tuple(512 >> i for i in range(size.bit_length() - 4))  # 64 -> 3 blocks: 8 -> 64


def kernel_size(size: int) -> int:
    return 4 if size == 28 else 5


def disc_units(size: int) -> int:
    return 512 if size == 28 else 1024


@dataclasses.dataclass(frozen=True)
class LayerSet:
    """Constructors of the layers the networks are made of (flax's `ResNet(conv=...)` pattern).

    Each takes the Keras layer's arguments: conv / conv_transpose (filters, kernel_size,
    strides=, padding="same", use_bias=, kernel_initializer=, name=), batch_norm (synchronized=,
    momentum=, epsilon=, name=).
    """
    conv: Callable = layers.Conv2D
    conv_transpose: Callable = layers.Conv2DTranspose
    batch_norm: Callable = layers.BatchNormalization


KERAS_LAYERS = LayerSet()


def _channels(count: int, config: Config) -> int:
    return max(1, count // config.width_divisor)


def initializer(config: Config):
    """Weights' initializer: N(0, init_std^2) as the paper's code (init_std 0.01), or Keras's
    Glorot uniform when init_std is 0. Biases start at 0 either way."""
    if config.init_std > 0:
        return keras.initializers.RandomNormal(stddev=config.init_std)
    return "glorot_uniform"


def _conv_block(x, filters, kernel, config, conv, batch_norm, name):
    """Stride-2 (transposed) conv, BatchNorm, ReLU. No conv bias: BatchNorm removes it."""
    x = conv(filters, kernel, strides=2, padding="same", use_bias=False,
             kernel_initializer=initializer(config), name=f"{name}_conv")(x)
    x = batch_norm(synchronized=config.sync_batchnorm, momentum=config.batchnorm_momentum,
                   epsilon=config.batchnorm_epsilon, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _dense(units, config, **kwargs):
    return layers.Dense(units, kernel_initializer=initializer(config), **kwargs)


def _to_support(z, config: Config):
    """Deterministic codes projected onto the prior's support, as the paper's code does:
    radius prior_scale for the sphere, tanh into [-s, s]^d for the box; normal: unchanged."""
    if config.prior == "sphere":
        z = layers.UnitNormalization(axis=1, name="to_sphere", dtype="float32")(z)
    elif config.prior == "uniform":
        z = layers.Activation("tanh", name="to_box", dtype="float32")(z)
    else:
        return z
    if config.prior_scale != 1.0:
        z = layers.Rescaling(config.prior_scale, name="prior_scale", dtype="float32")(z)
    return z


def make_encoder(config: Config, image_shape, layer_set: LayerSet = KERAS_LAYERS) -> keras.Model:
    """Images [N,H,W,C] in [0,1] -> z [N,z_dim] (deterministic) or [mean, log_var] (gaussian).

    With --pixel_range=symmetric the first layer maps the images to [-1, 1]."""
    size = image_shape[0]
    images = keras.Input(shape=tuple(image_shape), name="images")
    x = images
    if config.pixel_range == "symmetric":
        x = layers.Rescaling(2.0, offset=-1.0, name="to_symmetric")(x)
    for i, count in enumerate(encoder_channels(size)):  # 28: 14, 7, 4, 2; 64: 32, 16, 8, 4
        x = _conv_block(x, _channels(count, config), kernel_size(size), config, layer_set.conv,
                        layer_set.batch_norm, name=f"enc{i}")
    x = layers.Flatten(name="flatten")(x)
    if config.encoder == "gaussian":
        # float32 heads: codes stay float32 under --mixed_precision.
        mean = _dense(config.z_dim, config, name="z_mean", dtype="float32")(x)  # [N, z_dim]
        log_var = _dense(config.z_dim, config, name="z_log_var", dtype="float32")(x)
        outputs = [mean, log_var]
    else:
        outputs = _to_support(_dense(config.z_dim, config, name="z", dtype="float32")(x), config)
    return keras.Model(images, outputs, name="encoder")


def encoder_mean(encoder: keras.Model, images):
    """Deterministic codes [N, z_dim]: the output, or the mean head of a Gaussian encoder."""
    out = encoder(images, training=False)
    return out[0] if isinstance(out, (list, tuple)) else out


def make_decoder(config: Config, image_shape, layer_set: LayerSet = KERAS_LAYERS) -> keras.Model:
    """z [N,z_dim] -> images [N,H,W,C] in (0,1) through a sigmoid, or with
    --pixel_range=symmetric a tanh (the network's [-1, 1]) mapped back to [0, 1]."""
    size, _, out_channels = image_shape
    channels = decoder_channels(size)
    base = size // 2 ** (len(channels))  # 28 -> 7, 64 -> 8
    first = _channels(1024, config)
    z = keras.Input(shape=(config.z_dim,), name="z")
    x = _dense(base * base * first, config, name="project")(z)
    x = layers.Reshape((base, base, first), name="reshape")(x)  # [N, base, base, first]
    x = layers.ReLU(name="project_relu")(x)
    for i, count in enumerate(channels):  # doubles the side each time, up to `size`
        x = _conv_block(x, _channels(count, config), kernel_size(size), config,
                        layer_set.conv_transpose, layer_set.batch_norm, name=f"dec{i}")
    x = layer_set.conv_transpose(out_channels, kernel_size(size), strides=1, padding="same",
                                 use_bias=True, kernel_initializer=initializer(config),
                                 name="out_conv")(x)
    if config.pixel_range == "symmetric":
        x = layers.Activation("tanh", name="tanh", dtype="float32")(x)
        images = layers.Rescaling(0.5, offset=0.5, name="images", dtype="float32")(x)
    else:
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


def _builtin_normal_log_density(logit, z, z_dim: int, scale: float):
    """NormalLogDensity from built-in Keras layers: logit + sum_i z_i^2 * (-1/(2 s^2)) - log_norm
    as a Dense of z*z with fixed, non-trainable weights. A model holding it loads in a process
    that does not import wae_tf (the exported discriminator.keras)."""
    sigma2 = scale ** 2
    log_norm = 0.5 * z_dim * math.log(2.0 * math.pi * sigma2)
    squares = layers.Multiply(name="prior_z_squared", dtype="float32")([z, z])  # [N, z_dim]
    log_density = layers.Dense(  # [N, 1]: -||z||^2/(2 s^2) - log_norm
        1, kernel_initializer=keras.initializers.Constant(-1.0 / (2.0 * sigma2)),
        bias_initializer=keras.initializers.Constant(-log_norm), trainable=False,
        name="prior_log_density", dtype="float32")(squares)
    return layers.Add(name="prior_logdensity", dtype="float32")([logit, log_density])


def make_discriminator(config: Config, image_shape, builtin_layers_only: bool = False
                       ) -> keras.Model:
    """z [N,z_dim] -> logit [N,1] that z was drawn from the prior (WAE-GAN).

    With --disc_prior_logdensity the prior's log-density is added by NormalLogDensity, or, with
    `builtin_layers_only` (the export's copy), by built-in layers with fixed weights: the same
    function and the same trainable variables (a checkpoint's weights copy by layer name).
    """
    units = _channels(disc_units(image_shape[0]), config)
    z = keras.Input(shape=(config.z_dim,), name="z")
    x = z
    for i in range(4):
        x = _dense(units, config, activation="relu", name=f"dense{i}")(x)
    logit = _dense(1, config, name="logit", dtype="float32")(x)  # [N, 1], float32 when mixed
    if config.disc_prior_logdensity and builtin_layers_only:
        logit = _builtin_normal_log_density(logit, z, config.z_dim, config.prior_scale)
    elif config.disc_prior_logdensity:
        logit = NormalLogDensity(config.z_dim, config.prior_scale, name="prior_logdensity",
                                 dtype="float32")(logit, z)
    return keras.Model(z, logit, name="discriminator")


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Each layer's weights into `target`'s layer of the same name (the same network built from
    another LayerSet, or with the built-in prior log-density, whose fixed weights are its own).
    ValueError if a trainable layer of `target` has no namesake in `source`."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())
    names = {layer.name for layer in source.layers}
    missing = [layer.name for layer in target.layers
               if layer.trainable_weights and layer.name not in names]
    if missing:
        raise ValueError(f"{target.name}: no weights for {missing} in {source.name}.")


def network_image_size(image_shape) -> int:
    """Check that a paper network exists for these images and return their side."""
    height, width, _ = image_shape
    if height != width or height not in IMAGE_SIZES:
        sizes = ", ".join(map(str, IMAGE_SIZES))
        raise ValueError(f"Images of shape {tuple(image_shape)}: the networks take square images "
                         f"of side {sizes}; pass --image_size to resize.")
    return height


class Models(NamedTuple):
    encoder: keras.Model
    decoder: keras.Model
    discriminator: Optional[keras.Model]  # --regularizer=gan only


@contextlib.contextmanager
def dtype_policy(config: Config):
    """Keras's global dtype policy from --mixed_precision while layers are created."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(
        "float32" if config.mixed_precision == "none" else config.mixed_precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_models(config: Config, image_shape, layer_set: LayerSet = KERAS_LAYERS,
                with_discriminator: bool = True, builtin_layers_only: bool = False) -> Models:
    """Encoder, decoder and (for gan, unless with_discriminator is False) discriminator in the
    --mixed_precision policy; initialised from Keras's global seed (keras.utils.set_random_seed).

    `builtin_layers_only`: the discriminator's prior log-density from built-in layers
    (make_discriminator); with the default `layer_set` no model then holds a wae_tf layer."""
    network_image_size(image_shape)
    with dtype_policy(config):
        discriminator = None
        # The discriminator first: the seed's stream as in earlier releases.
        if config.regularizer == "gan" and with_discriminator:
            discriminator = make_discriminator(config, image_shape, builtin_layers_only)
        return Models(make_encoder(config, image_shape, layer_set),
                      make_decoder(config, image_shape, layer_set), discriminator)
