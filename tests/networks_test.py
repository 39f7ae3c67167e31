"""Shapes and parameter counts of the paper's networks (plain Keras layers)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf.model import networks


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3), (128, 3), (256, 1)])
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


def test_celeba_64x64_network_is_the_papers_and_128x128_adds_one_block_each_way():
    config = tiny_config(width_divisor=1, z_dim=8)
    # 64: 5x5 convs 25*(3*128 + 128*256 + 256*512 + 512*1024) = 17,212,800; BatchNorm
    # 4*(128+256+512+1024) = 7,680; Dense(8) on 4*4*1024: 16384*8 + 8 = 131,080.
    assert networks.make_encoder(config, (64, 64, 3)).count_params() == 17_351_560
    # 128: one more block of 64 channels first: 25*(3*64 + 64*128 + ... + 512*1024) =
    # 17,412,800; BatchNorm 4*(64+...+1024) = 7,936; the same Dense(8) on 4*4*1024.
    assert networks.make_encoder(config, (128, 128, 3)).count_params() == 17_551_816
    # Decoder 128: Dense(8*8*1024) 8*65536 + 65536 = 589,824; transposed 5x5 convs
    # 25*(1024*512 + 512*256 + 256*128 + 128*64) = 17,408,000; BatchNorm 4*(512+...+64) =
    # 3,840; output conv 25*64*3 + 3 = 4,803.
    assert networks.make_decoder(config, (128, 128, 3)).count_params() == 18_006_467
    assert networks.encoder_channels(64) == (128, 256, 512, 1024)
    assert networks.decoder_channels(64) == (512, 256, 128)


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


def test_the_exported_discriminator_adds_the_same_log_density_with_built_in_layers():
    """The export's copy (discriminator.keras loads without wae_tf) computes the training
    discriminator's logits; the training one keeps its variables, so checkpoints are unchanged."""
    config = tiny_config(z_dim=3, regularizer="gan", disc_prior_logdensity=True, prior_scale=2.0)
    trained = networks.make_discriminator(config, (28, 28, 1))
    exported = networks.make_discriminator(config, (28, 28, 1), builtin_layers_only=True)
    # Dense layers 3->16->16->16->16->1 (width 512/32), kernels and biases: 10 variables.
    assert len(trained.weights) == len(trained.trainable_weights) == 10
    assert [w.shape for w in exported.trainable_weights] == [w.shape for w in trained.weights]
    assert len(exported.non_trainable_weights) == 2  # the log-density's fixed kernel and bias
    assert not [layer for layer in exported.layers if type(layer).__module__.startswith("wae_tf")]
    networks.copy_weights(trained, exported)
    z = tf.random.stateless_normal([6, 3], seed=[1, 2], stddev=3.0)
    np.testing.assert_allclose(exported(z), trained(z), rtol=1e-6, atol=1e-5)
    z_in = keras.Input((3,))
    first_only = keras.Model(z_in, keras.layers.Dense(16, name="dense0")(z_in), name="first")
    with pytest.raises(ValueError, match=r"no weights for \['dense1', .*'logit'\] in first"):
        networks.copy_weights(first_only, exported)  # a trainable layer left at its init: refused


def test_unsupported_image_size_is_refused():
    with pytest.raises(ValueError, match="28, 32, 64, 128, 256"):
        networks.network_image_size((48, 48, 3))
    with pytest.raises(ValueError, match="square"):
        networks.network_image_size((64, 32, 3))


def test_networks_are_plain_keras_layers_by_default():
    """Export and evaluation build these: no machine-specific layer in the serving graph."""
    config = tiny_config(width_divisor=1)
    kinds = {type(layer).__module__.split(".")[0] for model in (
        networks.make_encoder(config, (28, 28, 1)), networks.make_decoder(config, (28, 28, 1)))
        for layer in model.layers}
    assert kinds == {"keras"}


def test_symmetric_pixel_range_maps_in_and_out_of_minus_one_one():
    """--pixel_range=symmetric: the encoder's first layer is 2x - 1 and the decoder's output is
    (tanh(a) + 1) / 2, so both models still take and give images in [0, 1]."""
    config = tiny_config(pixel_range="symmetric")
    encoder = networks.make_encoder(config, (28, 28, 1))
    decoder = networks.make_decoder(config, (28, 28, 1))
    images = tf.constant([[[[0.0]] * 28] * 28, [[[1.0]] * 28] * 28])  # [2, 28, 28, 1]
    np.testing.assert_allclose(encoder.get_layer("to_symmetric")(images).numpy()[:, 0, 0, 0],
                               [-1.0, 1.0])
    z = tf.random.normal([5, config.z_dim], stddev=30.0)  # saturates tanh at both ends
    pre = tf.keras.Model(decoder.input, decoder.get_layer("out_conv").output)(z)
    np.testing.assert_allclose(decoder(z).numpy(), (np.tanh(pre.numpy()) + 1) / 2, atol=1e-6)
    assert float(tf.reduce_min(decoder(z))) >= 0 and float(tf.reduce_max(decoder(z))) <= 1


@pytest.mark.parametrize("prior, scale", [("sphere", 1.0), ("sphere", 3.0), ("uniform", 2.0)])
def test_deterministic_codes_lie_on_the_priors_support(prior, scale):
    config = tiny_config(prior=prior, prior_scale=scale)
    codes = networks.make_encoder(config, (28, 28, 1))(
        tf.random.uniform([6, 28, 28, 1]), training=True).numpy()
    if prior == "sphere":
        np.testing.assert_allclose(np.linalg.norm(codes, axis=1), scale, rtol=1e-5)
    else:
        assert np.all(np.abs(codes) <= scale) and np.abs(codes).max() > 0


def test_paper_initialisation_and_batchnorm_settings():
    config = tiny_config(width_divisor=4, init_std=0.01)
    encoder = networks.make_encoder(config, (28, 28, 1))
    kernel = encoder.get_layer("enc2_conv").kernel.numpy()  # 4*4*64*128 = 131,072 weights
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
    assert not np.any(encoder.get_layer("z").bias.numpy())
    bn = encoder.get_layer("enc0_bn")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)  # the paper's code (and PyTorch's defaults)
    glorot = networks.make_encoder(tiny_config(width_divisor=4), (28, 28, 1))
    limit = np.sqrt(6 / (16 * 64 + 16 * 128))  # Glorot uniform: sqrt(6 / (fan_in + fan_out))
    assert np.abs(glorot.get_layer("enc2_conv").kernel.numpy()).max() <= limit
