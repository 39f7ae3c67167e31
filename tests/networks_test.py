"""Shapes and parameter counts of the paper's networks."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf import convs
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


def _conv_layer_types(model):
    return [type(l).__name__ for l in model.layers if l.name.endswith("_conv")]


def test_conv_impls_share_checkpoints(tmp_path):
    """A checkpoint written with one --conv_impl restores into the other."""
    native = networks.make_encoder(tiny_config(conv_impl="native"), (28, 28, 1))
    patches = networks.make_encoder(tiny_config(conv_impl="patches"), (28, 28, 1))
    assert _conv_layer_types(patches) == ["TunedConv2D"] * 4
    path = tf.train.Checkpoint(encoder=native).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(encoder=patches).read(path).assert_existing_objects_matched()
    images = tf.random.uniform([2, 28, 28, 1])
    np.testing.assert_allclose(patches(images), native(images), rtol=1e-4, atol=1e-5)


def test_decoder_conv_impls_share_checkpoints(tmp_path):
    """The decoder's transposed convs restore across --conv_impl and decode the same images."""
    config = tiny_config(conv_impl="native", width_divisor=2)
    native = networks.make_decoder(config, (28, 28, 1))
    patches = networks.make_decoder(dataclasses.replace(config, conv_impl="patches"), (28, 28, 1))
    # Stride 2 and the stride-1 output layer (its forward as shifted sums).
    assert _conv_layer_types(patches) == ["TunedConv2DTranspose"] * 3
    path = tf.train.Checkpoint(decoder=native).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(decoder=patches).read(path).assert_existing_objects_matched()
    z = tf.random.stateless_normal([2, config.z_dim], seed=[5, 6])
    np.testing.assert_allclose(patches(z), native(z), rtol=1e-4, atol=1e-5)


def test_deterministic_auto_uses_matmuls_only_for_convs_to_2x2():
    """--deterministic must not time (a rerun could choose differently): a fixed rule."""
    config = tiny_config(conv_impl="auto", deterministic=True, width_divisor=1)
    plans = [networks.conv_plan(config, convs.LayerShape(False, 1, size, 8, 8, 4))
             for size in (28, 14, 7, 4)]
    assert plans == [convs.ALL_NATIVE] * 3 + [convs.ALL_MATMUL]
    assert networks.conv_plan(config, convs.LayerShape(True, 1, 7, 8, 8, 4)) == convs.ALL_NATIVE


def test_auto_leaves_tiny_layers_native():
    """Layers under convs.MIN_TUNED_FLOPS are not timed (tests and small models stay fast)."""
    encoder = networks.make_encoder(tiny_config(conv_impl="auto"), (28, 28, 1))
    assert _conv_layer_types(encoder) == ["Conv2D"] * 4


@pytest.mark.parametrize("synchronized", [True, False])
def test_fused_batch_norm_equals_keras_batch_norm(synchronized):
    """networks.BatchNorm (FusedBatchNormV3) gives Keras's outputs, gradients and moving
    statistics (the biased batch variance, not the fused op's n/(n-1) one)."""
    x = tf.random.stateless_normal([20, 5, 5, 6], seed=[7, 8]) * 3.0 + 1.0
    keras_bn = tf.keras.layers.BatchNormalization(synchronized=synchronized, momentum=0.9)
    fused_bn = networks.BatchNorm(synchronized=synchronized, momentum=0.9)
    for layer in (keras_bn, fused_bn):
        layer.build(x.shape)
        layer.set_weights([np.full([6], 0.5 + i, np.float32) for i in range(4)])
    results = []
    for layer in (keras_bn, fused_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)  # [20, 5, 5, 6]
            loss = tf.reduce_sum(tf.sin(y) * y)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # Inference uses the moving statistics, as Keras does.
    np.testing.assert_allclose(fused_bn(x, training=False), keras_bn(x, training=False),
                               rtol=1e-5, atol=1e-5)


def test_tuned_conv_config_round_trip():
    """get_config / from_config keep the plan, stride and bias of a tuned layer."""
    plan = convs.ConvPlan(convs.MATMUL, convs.NATIVE, convs.NATIVE)
    layer = networks.TunedConv2DTranspose(3, 4, plan, strides=1, use_bias=True, name="out")
    rebuilt = networks.TunedConv2DTranspose.from_config(layer.get_config())
    assert (rebuilt.plan, rebuilt.strides, rebuilt.use_bias) == (plan, 1, True)
    x = tf.random.stateless_normal([2, 5, 5, 4], seed=[3, 3])
    layer.build(x.shape)
    rebuilt.build(x.shape)
    rebuilt.set_weights(layer.get_weights())
    np.testing.assert_allclose(rebuilt(x), layer(x), rtol=1e-6)
