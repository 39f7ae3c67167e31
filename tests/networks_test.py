"""Shapes and parameter counts of the paper's networks."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf import networks


@pytest.mark.parametrize("size,channels", [(28, 1), (64, 3)])
@pytest.mark.parametrize("encoder", ["deterministic", "gaussian"])
def test_output_shapes(size, channels, encoder):
    config = tiny_config(z_dim=6, encoder=encoder, regularizer="gan", disc_prior_logdensity=True)
    shape = (size, size, channels)
    images = tf.random.uniform((3,) + shape)
    out = networks.make_encoder(config, shape)(images)
    codes = out if encoder == "deterministic" else out[0]
    assert codes.shape == (3, 6)
    if encoder == "gaussian":
        assert out[1].shape == (3, 6)
    decoded = networks.make_decoder(config, shape)(codes)
    assert decoded.shape == (3,) + shape
    assert float(tf.reduce_min(decoded)) >= 0 and float(tf.reduce_max(decoded)) <= 1
    assert networks.make_discriminator(config, shape)(codes).shape == (3, 1)


def test_paper_28x28_parameter_count_at_full_width():
    config = tiny_config(width_divisor=1, z_dim=8)
    encoder = networks.make_encoder(config, (28, 28, 1))
    decoder = networks.make_decoder(config, (28, 28, 1))
    # Encoder: 4x4 convs without bias (BatchNorm follows): 16*(1*128 + 128*256 + 256*512 +
    # 512*1024) = 2,754,560; BatchNorm 4 params per channel: 4*(128+256+512+1024) = 7,680;
    # Dense(8) on 2*2*1024: 4096*8 + 8 = 32,776.
    assert encoder.count_params() == 11_012_096 + 7_680 + 32_776
    # Decoder: Dense(7*7*1024) = 8*50176 + 50176 = 451,584; transposed convs 16*(1024*512 +
    # 512*256) = 10,485,760; BatchNorm 4*(512+256) = 3,072; output conv 16*256*1 + 1 = 4,097.
    assert decoder.count_params() == 451_584 + 10_485_760 + 3_072 + 4_097


def test_discriminator_adds_the_prior_log_density():
    config = tiny_config(z_dim=2, regularizer="gan", disc_prior_logdensity=True, prior_scale=2.0)
    plain = networks.make_discriminator(config.replace(disc_prior_logdensity=False), (28, 28, 1))
    tricked = networks.make_discriminator(config, (28, 28, 1))
    tricked.set_weights(plain.get_weights())
    z = np.array([[1.0, 2.0]], np.float32)
    # log N(z; 0, 4 I) = -|z|^2/8 - log(2 pi 4) = -5/8 - 3.2215 = -3.8466
    expected = -5.0 / 8.0 - np.log(2 * np.pi * 4.0)
    diff = float(tricked(z)[0, 0] - plain(z)[0, 0])
    assert diff == pytest.approx(expected, rel=1e-5)


def test_unsupported_image_size_is_refused():
    with pytest.raises(ValueError, match="28x28"):
        networks.network_image_size((32, 32, 3))


@pytest.mark.parametrize("size,kernel", [(4, 4), (7, 4), (8, 5), (14, 4)])
def test_patch_conv_equals_conv2d(size, kernel):
    x = tf.random.stateless_normal([3, size, size, 5], seed=[1, 2])
    conv = tf.keras.layers.Conv2D(6, kernel, strides=2, padding="same", use_bias=False)
    patch = networks.PatchConv2D(6, kernel)
    expected = conv(x)
    patch.build(x.shape)
    patch.kernel.assign(conv.kernel)
    np.testing.assert_allclose(patch(x), expected, rtol=1e-5, atol=1e-5)


def test_conv_impls_share_checkpoints(tmp_path):
    """A checkpoint written with one --conv_impl restores into the other."""
    native = networks.make_encoder(tiny_config(conv_impl="native"), (28, 28, 1))
    patches = networks.make_encoder(tiny_config(conv_impl="patches"), (28, 28, 1))
    assert any(isinstance(l, networks.PatchConv2D) for l in patches.layers)
    path = tf.train.Checkpoint(encoder=native).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(encoder=patches).read(path).assert_existing_objects_matched()
    images = tf.random.uniform([2, 28, 28, 1])
    np.testing.assert_allclose(patches(images), native(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,kernel", [(1, 4), (4, 4), (7, 4), (4, 5), (8, 5), (3, 3)])
def test_phase_conv_transpose_equals_conv2d_transpose(size, kernel):
    """Outputs and both gradients of PhaseConv2DTranspose equal layers.Conv2DTranspose's."""
    x = tf.random.stateless_normal([3, size, size, 5], seed=[3, 4])
    conv = tf.keras.layers.Conv2DTranspose(6, kernel, strides=2, padding="same", use_bias=False)
    phase = networks.PhaseConv2DTranspose(6, kernel)
    conv.build(x.shape)
    phase.build(x.shape)
    phase.kernel.assign(conv.kernel)
    results = []
    for layer in (conv, phase):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)  # [3, 2*size, 2*size, 6]
            loss = tf.reduce_sum(tf.sin(y) * y)  # a non-linear loss: dy varies per pixel
        results.append([y, *tape.gradient(loss, [x, layer.kernel])])
    assert results[1][0].shape == (3, 2 * size, 2 * size, 6)
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_decoder_conv_impls_share_checkpoints(tmp_path):
    """The decoder's transposed convs restore across --conv_impl and decode the same images."""
    config = tiny_config(conv_impl="native", width_divisor=2)  # dec0 has 512 input channels
    native = networks.make_decoder(config, (28, 28, 1))
    patches = networks.make_decoder(dataclasses.replace(config, conv_impl="patches"), (28, 28, 1))
    assert sum(isinstance(l, networks.PhaseConv2DTranspose) for l in patches.layers) == 2
    auto = networks.make_decoder(dataclasses.replace(config, conv_impl="auto"), (28, 28, 1))
    # Without GPU, auto: 512 input channels (dec0) as matmuls, 256 (dec1) native.
    assert [type(l).__name__ for l in auto.layers if l.name.startswith("dec")
            and l.name.endswith("_conv")] == [
        "PhaseConv2DTranspose", "Conv2DTranspose"]
    path = tf.train.Checkpoint(decoder=native).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(decoder=patches).read(path).assert_existing_objects_matched()
    z = tf.random.stateless_normal([2, config.z_dim], seed=[5, 6])
    np.testing.assert_allclose(patches(z), native(z), rtol=1e-4, atol=1e-5)
