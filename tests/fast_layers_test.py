"""The fast layers equal the Keras layers they replace: outputs, gradients, checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf.model import networks
from wae_tf.perf import convs, fast_layers

pytestmark = pytest.mark.numerics  # every test compares two computations


def _conv_plans(model):
    return [str(layer.plan) for layer in model.layers if layer.name.endswith("_conv")]


def _layers(**overrides):
    return fast_layers.training_layers(tiny_config(**overrides))


def test_conv_impls_share_checkpoints(tmp_path):
    """A checkpoint of the plain Keras encoder restores into the matmul forms and back."""
    config = tiny_config()
    native = networks.make_encoder(config, (28, 28, 1))
    patches = networks.make_encoder(config, (28, 28, 1), _layers(conv_impl="patches"))
    assert _conv_plans(patches) == [str(convs.ALL_MATMUL)] * 4
    path = tf.train.Checkpoint(encoder=native).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(encoder=patches).read(path).assert_existing_objects_matched()
    images = tf.random.uniform([2, 28, 28, 1])
    np.testing.assert_allclose(patches(images), native(images), rtol=1e-4, atol=1e-5)


def test_decoder_conv_impls_share_checkpoints(tmp_path):
    """The decoder's transposed convs restore across --conv_impl and decode the same images."""
    config = tiny_config(width_divisor=2)
    native = networks.make_decoder(config, (28, 28, 1))
    patches = networks.make_decoder(config, (28, 28, 1),
                                    _layers(conv_impl="patches", width_divisor=2))
    # Stride 2 and the stride-1 output layer (its forward as shifted sums).
    assert _conv_plans(patches) == [str(convs.ALL_MATMUL)] * 2 + [
        str(convs.ConvPlan(convs.MATMUL))]
    path = tf.train.Checkpoint(decoder=native).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(decoder=patches).read(path).assert_existing_objects_matched()
    z = tf.random.stateless_normal([2, config.z_dim], seed=[5, 6])
    np.testing.assert_allclose(patches(z), native(z), rtol=1e-4, atol=1e-5)


def test_deterministic_auto_uses_matmuls_only_for_convs_to_2x2():
    """--deterministic must not time (a rerun could choose differently): a fixed rule."""
    config = tiny_config(conv_impl="auto", deterministic=True, width_divisor=1)
    plans = [fast_layers.conv_plan(config, convs.LayerShape(False, 1, size, 8, 8, 4))
             for size in (28, 14, 7, 4)]
    assert plans == [convs.ALL_NATIVE] * 3 + [convs.ALL_MATMUL]
    assert fast_layers.conv_plan(config, convs.LayerShape(True, 1, 7, 8, 8, 4)) == convs.ALL_NATIVE


def test_auto_leaves_tiny_layers_native():
    """Layers under convs.MIN_TUNED_FLOPS are not timed (tests and small models stay fast)."""
    encoder = networks.make_encoder(tiny_config(), (28, 28, 1), _layers(conv_impl="auto"))
    assert _conv_plans(encoder) == [str(convs.ALL_NATIVE)] * 4


def test_plans_are_timed_at_the_global_batch():
    """The planner sees --batch_size whatever the replica count, so 1 and N replicas of one
    process compute with the same forms."""
    shapes = []
    planner = lambda shape: shapes.append(shape) or convs.ALL_NATIVE  # noqa: E731
    layer = fast_layers.TunedConv2D(8, 4, planner=planner, batch_size=64)
    layer(tf.zeros([4, 14, 14, 3]))
    assert shapes == [convs.LayerShape(False, 64, 14, 3, 8, 4, 2)]


@pytest.mark.parametrize("synchronized", [True, False])
def test_fused_batch_norm_equals_keras_batch_norm(synchronized):
    """FusedBatchNorm (FusedBatchNormV3) gives Keras's outputs, gradients and moving
    statistics (the biased batch variance, not the fused op's n/(n-1) one)."""
    x = tf.random.stateless_normal([20, 5, 5, 6], seed=[7, 8]) * 3.0 + 1.0
    keras_bn = tf.keras.layers.BatchNormalization(synchronized=synchronized, momentum=0.9)
    fused_bn = fast_layers.FusedBatchNorm(synchronized=synchronized, momentum=0.9)
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
    layer = fast_layers.TunedConv2DTranspose(3, 4, strides=1, use_bias=True, plan=plan,
                                             name="out")
    rebuilt = fast_layers.TunedConv2DTranspose.from_config(layer.get_config())
    assert (rebuilt.plan, rebuilt.strides, rebuilt.use_bias) == (plan, 1, True)
    x = tf.random.stateless_normal([2, 5, 5, 4], seed=[3, 3])
    layer.build(x.shape)
    rebuilt.build(x.shape)
    rebuilt.set_weights(layer.get_weights())
    np.testing.assert_allclose(rebuilt(x), layer(x), rtol=1e-6)


def test_tuned_conv_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="SAME"):
        fast_layers.TunedConv2D(4, 3, padding="valid", plan=convs.ALL_NATIVE)
    with pytest.raises(ValueError, match="plan or a planner"):
        fast_layers.TunedConv2D(4, 3)


def _fake_timing(monkeypatch):
    """Every layer is timed (MIN_TUNED_FLOPS 0) by a stand-in that picks matmuls at once;
    returns the list of the shapes it timed."""
    timed = []
    monkeypatch.setattr(convs, "_PLANS", {})
    monkeypatch.setattr(convs, "_TUNED", [])
    monkeypatch.setattr(convs, "MIN_TUNED_FLOPS", 0)
    monkeypatch.setattr(convs, "_time_parts", lambda shape, dtype: (
        timed.append(shape) or convs.matmul_plan(shape), {}))
    return timed


def test_deferred_tuning_starts_on_the_rule_and_times_later(monkeypatch, tmp_path):
    """With defer_tuning, untimed layers start on convs.rule_plan (nothing timed while
    building); time_untimed times them, stops between layers when asked, and the plans it timed
    serve later models from this process and from the plan cache file."""
    timed = _fake_timing(monkeypatch)
    config = tiny_config(conv_plan_cache=str(tmp_path / "plans.json"))
    build = lambda: networks.make_encoder(  # noqa: E731
        config, (28, 28, 1), fast_layers.training_layers(config, defer_tuning=True))
    encoder = build()
    rule = [str(convs.ALL_NATIVE)] * 3 + [str(convs.ALL_MATMUL)]  # the last conv: to 2x2
    assert _conv_plans(encoder) == rule and not timed
    assert len(fast_layers.untimed(config, [encoder])) == 4
    untimed = lambda: fast_layers.untimed(config, [encoder])  # noqa: E731
    assert fast_layers.time_untimed(config, untimed(), should_stop=lambda: len(timed) == 2) == 2
    assert len(timed) == 2 and len(untimed()) == 2
    assert fast_layers.time_untimed(config, untimed()) == 1  # the 2x2 conv had matmuls already
    assert _conv_plans(encoder) == [str(convs.ALL_MATMUL)] * 4 and len(timed) == 4
    assert not fast_layers.untimed(config, [encoder])
    assert _conv_plans(build()) == [str(convs.ALL_MATMUL)] * 4 and len(timed) == 4
    monkeypatch.setattr(convs, "_PLANS", {})  # as a new process: the file has them
    assert _conv_plans(build()) == [str(convs.ALL_MATMUL)] * 4 and len(timed) == 4


@pytest.mark.parametrize("overrides", [dict(deterministic=True), dict(conv_impl="native"),
                                       dict(conv_impl="rule")])
def test_nothing_is_left_to_time_where_auto_does_not_time(monkeypatch, overrides):
    _fake_timing(monkeypatch)
    config = tiny_config(conv_plan_cache="", **overrides)
    encoder = networks.make_encoder(config, (28, 28, 1),
                                    fast_layers.training_layers(config, defer_tuning=True))
    assert not fast_layers.untimed(config, [encoder])
