"""Shapes and parameter counts of the paper's networks (plain Keras layers)."""

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


def test_networks_are_plain_keras_layers_by_default():
    """Export and evaluation build these: no machine-specific layer in the serving graph."""
    config = tiny_config(width_divisor=1)
    kinds = {type(layer).__module__.split(".")[0] for model in (
        networks.make_encoder(config, (28, 28, 1)), networks.make_decoder(config, (28, 28, 1)))
        for layer in model.layers}
    assert kinds == {"keras"}
