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


def same_patches(x, k: int):
    """The k x k patches [N, ceil(H/2), ceil(W/2), k*k*C] that a stride-2 SAME conv multiplies.

    Padded as tf.nn.conv2d places SAME padding (the extra row and column at the end).
    """
    size = x.shape[1]
    out = -(-size // 2)
    pad = max((out - 1) * 2 + k - size, 0)
    x = tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]])
    return tf.image.extract_patches(x, [1, k, k, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID")


class _StrideTwoLayer(layers.Layer):
    """A bias-free stride-2 SAME (transposed) conv layer: `filters` outputs, k x k kernel."""

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="wae_tf")
class PatchConv2D(_StrideTwoLayer):
    """A bias-free stride-2 SAME Conv2D computed as image patches times a matrix.

    Same kernel variable [k, k, C_in, C_out] and outputs as `layers.Conv2D`. On CPUs, the
    gradients of convolutions with tiny outputs (4x4 -> 2x2, 1024 channels) run at ~2 GFLOP/s in
    TF's kernels; as one matmul the whole layer is 16x faster (BUILD.md, Performance).
    """

    def build(self, input_shape):
        # `_kernel`, as in layers.Conv2D: checkpoints of either layer restore into the other.
        self._kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, input_shape[-1],
                                  self.filters), initializer="glorot_uniform")

    @property
    def kernel(self):
        return self._kernel

    def call(self, x):
        patches = same_patches(x, self.kernel_size)  # [N, out, out, k*k*C_in]
        out = patches.shape[1]
        kernel = tf.cast(tf.reshape(self.kernel, [-1, self.filters]), patches.dtype)
        rows = tf.reshape(patches, [-1, patches.shape[-1]])  # [N*out*out, k*k*C_in]
        return tf.reshape(tf.matmul(rows, kernel), [-1, out, out, self.filters])


def _phase_taps(k: int):
    """Per output phase r (0, 1): the (tap t, input offset d) pairs of a stride-2 SAME
    transposed conv with a k-tap kernel, out[2m + r] = sum x[m - d] * kernel[t].

    It transposes the stride-2 conv whose SAME padding puts (k - 2) // 2 zeros first.
    """
    lo = max(k - 2, 0) // 2
    return [[(t, (t - lo - r) // 2) for t in range(k) if (t - lo - r) % 2 == 0] for r in (0, 1)]


def phase_conv2d_transpose(x, kernel):
    """tf.nn.conv2d_transpose(x, kernel, 2, "SAME") as one matmul per output phase.

    x [N, n, n, C_in], kernel [k, k, C_out, C_in] -> [N, 2n, 2n, C_out]. Each of the four
    sub-pixel phases (even/odd rows x even/odd columns) of the output is a stride-1 conv of x
    with its own taps of the kernel: the same FLOPs, as large matmuls (Shi et al. 2016).
    """
    n, cout = x.shape[1], kernel.shape[2]
    taps = _phase_taps(kernel.shape[0])
    offsets = [d for phase in taps for _, d in phase]
    lo, hi = max(max(offsets), 0), max(-min(offsets), 0)
    xp = tf.pad(x, [[0, 0], [lo, hi], [lo, hi], [0, 0]])
    rows = []
    for taps_y in taps:
        row = []
        for taps_x in taps:
            views = [xp[:, lo - dy:lo - dy + n, lo - dx:lo - dx + n, :]
                     for _, dy in taps_y for _, dx in taps_x]
            weights = tf.concat([kernel[ty, tx] for ty, _ in taps_y for tx, _ in taps_x],
                                axis=1)  # [C_out, T*C_in]
            patches = tf.reshape(tf.concat(views, -1), [-1, weights.shape[1]])  # [N*n*n, T*C_in]
            phase = tf.matmul(patches, weights, transpose_b=True)  # [N*n*n, C_out]
            row.append(tf.reshape(phase, [-1, n, n, cout]))
        rows.append(tf.stack(row, axis=3))  # [N, n, n, 2, C_out]
    return tf.reshape(tf.stack(rows, axis=2), [-1, 2 * n, 2 * n, cout])  # from [N,n,2,n,2,C]


@tf.custom_gradient
def matmul_conv2d_transpose(x, kernel):
    """phase_conv2d_transpose whose gradients are also matmuls (of the output gradient's
    stride-2 patches), instead of the autodiff of its slices."""
    def grad(dy):  # dy [N, 2n, 2n, C_out]
        k, cout, cin = kernel.shape[0], kernel.shape[2], kernel.shape[3]
        rows = tf.reshape(same_patches(dy, k), [-1, k * k * cout])  # [N*n*n, k*k*C_out]
        dx = tf.matmul(rows, tf.reshape(kernel, [-1, cin]))  # the stride-2 conv of dy
        dkernel = tf.matmul(rows, tf.reshape(x, [-1, cin]), transpose_a=True)
        return tf.reshape(dx, tf.shape(x)), tf.reshape(dkernel, kernel.shape)
    return phase_conv2d_transpose(x, kernel), grad


@keras.saving.register_keras_serializable(package="wae_tf")
class PhaseConv2DTranspose(_StrideTwoLayer):
    """A bias-free stride-2 SAME Conv2DTranspose computed by `matmul_conv2d_transpose`.

    Same kernel variable [k, k, C_out, C_in] and outputs as `layers.Conv2DTranspose`. On CPUs,
    TF's transposed conv runs the 7x7x1024 -> 14x14x512 layer at ~18 GFLOP/s forward; as
    matmuls the layer with its gradients is 2.2x faster (BUILD.md, Performance).
    """

    def build(self, input_shape):
        self.kernel = self.add_weight(  # `kernel`, as in layers.Conv2DTranspose (Conv2D: `_kernel`)
            name="kernel", shape=(self.kernel_size, self.kernel_size, self.filters,
                                  input_shape[-1]), initializer="glorot_uniform")

    def call(self, x):
        return matmul_conv2d_transpose(x, tf.cast(self.kernel, x.dtype))


def use_matmul_conv(config: Config, transpose: bool, in_channels: int, output_size: int) -> bool:
    """--conv_impl for one stride-2 layer: auto takes the matmul forms on machines without GPU
    where they measured faster: convs with outputs of at most 4x4 (PatchConv2D) and transposed
    convs with at least 512 input channels (PhaseConv2DTranspose)."""
    if config.conv_impl == "auto":
        if tf.config.list_logical_devices("GPU"):
            return False
        return in_channels >= 512 if transpose else output_size <= 4
    return config.conv_impl == "patches"


def _conv_block(x, filters, kernel, strides, config, transpose, name):
    # No bias: the BatchNorm that follows removes it (its gradient is float noise).
    output_size = x.shape[1] * strides if transpose else -(-x.shape[1] // strides)
    if use_matmul_conv(config, transpose, x.shape[-1], output_size):
        matmul_layer = PhaseConv2DTranspose if transpose else PatchConv2D
        x = matmul_layer(filters, kernel, name=f"{name}_conv")(x)
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
