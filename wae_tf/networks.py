"""The paper's encoder, decoder and latent discriminator as named Keras models."""

import dataclasses
import math

import keras
import tensorflow as tf
from keras import layers

from wae_tf import convs
from wae_tf.config import Config

# Channel counts of the paper's DCGAN-style networks (before --width_divisor).
ENCODER_CHANNELS = (128, 256, 512, 1024)
DECODER_CHANNELS = {28: (512, 256), 64: (512, 256, 128)}
KERNEL_SIZE = {28: 4, 64: 5}
DISC_UNITS = {28: 512, 64: 1024}


def _channels(count: int, config: Config) -> int:
    return max(1, count // config.width_divisor)


class _TunedConv(layers.Layer):
    """A SAME (transposed) conv whose forward and gradients are computed as `plan` says
    (convs.strided_conv): `filters` outputs, k x k kernel, stride 2 (or 1), optional bias."""

    transpose = False

    def __init__(self, filters, kernel_size, plan, strides=2, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.strides, self.use_bias = strides, use_bias
        self.plan = convs.ConvPlan(**plan) if isinstance(plan, dict) else plan  # dict: from_config

    def build(self, input_shape):
        if self.use_bias:  # `bias`, as in the Keras layers
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x):
        y = convs.strided_conv(x, tf.cast(self.kernel, x.dtype), self.plan, self.transpose,
                               self.strides)
        return y + tf.cast(self.bias, y.dtype) if self.use_bias else y

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "plan": dataclasses.asdict(self.plan), "strides": self.strides,
                "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="wae_tf")
class TunedConv2D(_TunedConv):
    """layers.Conv2D(filters, k, strides, padding="same", use_bias), part by part as TF's
    kernel or matmuls. Same kernel variable [k, k, C_in, C_out], so checkpoints of either
    layer restore into the other."""

    def build(self, input_shape):
        self._kernel = self.add_weight(  # `_kernel`, as in layers.Conv2D
            name="kernel", shape=(self.kernel_size, self.kernel_size, input_shape[-1],
                                  self.filters), initializer="glorot_uniform")
        super().build(input_shape)

    @property
    def kernel(self):
        return self._kernel


@keras.saving.register_keras_serializable(package="wae_tf")
class TunedConv2DTranspose(_TunedConv):
    """layers.Conv2DTranspose(filters, k, strides, padding="same", use_bias), part by part as
    TF's kernel or matmuls; same kernel variable [k, k, C_out, C_in]."""

    transpose = True

    def build(self, input_shape):
        self.kernel = self.add_weight(  # `kernel`, as in layers.Conv2DTranspose
            name="kernel", shape=(self.kernel_size, self.kernel_size, self.filters,
                                  input_shape[-1]), initializer="glorot_uniform")
        super().build(input_shape)


@keras.saving.register_keras_serializable(package="wae_tf")
class BatchNorm(layers.BatchNormalization):
    """layers.BatchNormalization whose training pass is TF's fused kernel where it can be.

    Keras 3 normalises with ~10 separate elementwise ops (and, synchronised, a full-size tensor
    of ones to count the batch); FusedBatchNormV3 (oneDNN on CPU, cuDNN on GPU) is one op each
    way, 2.3x faster with its gradient on [100, 28, 28, 64] (BUILD.md). Used when the statistics
    are this replica's alone: one replica in sync, or `synchronized=False`; otherwise Keras's
    all-reduced moments. Same variables, same maths (moving variance biased, as in Keras).
    """

    def call(self, inputs, training=None, mask=None):
        ctx = tf.distribute.get_replica_context()
        local = not self.synchronized or ctx is None or ctx.num_replicas_in_sync == 1
        if not (training and self.trainable and local and mask is None and not self.renorm
                and self.axis in (-1, len(inputs.shape) - 1) and len(inputs.shape) == 4):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # statistics in float32, as Keras does
        channels = x.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels])
        beta = self.beta if self.center else tf.zeros([channels])
        y, mean, unbiased_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.cast(gamma, tf.float32), offset=tf.cast(beta, tf.float32),
            mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=self.epsilon, is_training=True)
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = unbiased_var * (count - 1.0) / count  # the op returns n/(n-1) x the variance
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.stop_gradient(batch) * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def conv_plan(config: Config, shape: convs.LayerShape) -> convs.ConvPlan:
    """--conv_impl for one layer.

    auto: TF's kernels with a GPU; on CPUs each part timed on this machine (convs.tune), or,
    with --deterministic (a rerun must compute the same), matmuls only for convs to 2x2 outputs,
    whose TF kernels were 3.5x to 16x slower on both CPUs measured (BUILD.md).
    """
    if config.conv_impl == "native" or (config.conv_impl == "auto"
                                        and tf.config.list_logical_devices("GPU")):
        return convs.ALL_NATIVE
    if config.conv_impl == "patches":
        return convs.matmul_plan(shape)
    if config.deterministic:
        small = not shape.transpose and shape.stride == 2 and shape.out <= 2
        return convs.matmul_plan(shape) if small else convs.ALL_NATIVE
    return convs.tune(shape, keras.config.dtype_policy().compute_dtype)


def _conv(x, filters, kernel, strides, use_bias, transpose, config, name):
    """The Keras (transposed) conv layer applied to x [N, n, n, C], or its tuned form where
    --conv_impl puts a part on matmuls. Same variables either way."""
    shape = convs.LayerShape(transpose, config.batch_size, x.shape[1], x.shape[-1], filters,
                             kernel, strides)
    plan = conv_plan(config, shape)
    if not plan.all_native:
        tuned_layer = TunedConv2DTranspose if transpose else TunedConv2D
        return tuned_layer(filters, kernel, plan, strides, use_bias, name=name)(x)
    conv = layers.Conv2DTranspose if transpose else layers.Conv2D
    return conv(filters, kernel, strides=strides, padding="same", use_bias=use_bias,
                name=name)(x)


def _conv_block(x, filters, kernel, config, transpose, name):
    # No bias: the BatchNorm that follows removes it (its gradient would be float noise).
    x = _conv(x, filters, kernel, 2, False, transpose, config, name=f"{name}_conv")
    x = BatchNorm(synchronized=config.sync_batchnorm, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def make_encoder(config: Config, image_shape) -> keras.Model:
    """Images [N,H,W,C] in [0,1] -> z [N,z_dim] (deterministic) or [mean, log_var] (gaussian)."""
    size = image_shape[0]
    images = keras.Input(shape=tuple(image_shape), name="images")
    x = images
    for i, count in enumerate(ENCODER_CHANNELS):
        x = _conv_block(x, _channels(count, config), KERNEL_SIZE[size], config, False,
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
        x = _conv_block(x, _channels(count, config), KERNEL_SIZE[size], config, True,
                        name=f"dec{i}")
    x = _conv(x, out_channels, KERNEL_SIZE[size], 1, True, True, config, name="out_conv")
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
