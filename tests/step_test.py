"""Tests of the WAE step and loop: every regulariser runs, 1 and 2 replicas agree, resume, NaN."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import make_images, mirrored_strategy, tiny_config
from wae_tf import data, errors, loop
from wae_tf.data import pipeline
from wae_tf.errors import ConfigError
from wae_tf.model import networks
from wae_tf.model import step as step_lib
from wae_tf.perf import fast_layers
from wae_tf.runtime import checkpoints

SWEEP = [
    dict(regularizer="mmd", kernel="imq"),
    dict(regularizer="mmd", kernel="rbf", encoder="gaussian", input_noise=0.05),
    dict(regularizer="gan"),
    dict(regularizer="gan", disc_prior_logdensity=True, encoder="gaussian"),
    dict(regularizer="kl", encoder="gaussian", lambda_reg=1.0),
    dict(regularizer="swd", prior="sphere", recon="l1"),
    dict(regularizer="mmd", prior="uniform", recon="l2"),
]


def _state(config, strategy, image_shape=(28, 28, 1), layer_set=None):
    with strategy.scope():
        return step_lib.create_state(config, image_shape, steps_per_epoch=4, num_epochs=1,
                                     layer_set=layer_set)


def _weights(state):
    models = [state.encoder, state.decoder] + ([state.discriminator] if state.discriminator else [])
    return [w for m in models for w in m.get_weights()]


def _run_steps(config, strategy, images, num_steps, layer_set=None):
    """Train `num_steps` on a stream of the given images; returns (state, list of loss dicts)."""
    state = _state(config, strategy, images.image_shape, layer_set)
    dataset = data.make_train_dataset(images, config.batch_size, config.seed)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    train_fn = step_lib.make_train_fn(config, state, strategy)
    losses = [{k: float(v) for k, v in train_fn(iterator, tf.constant(1)).items()}
              for _ in range(num_steps)]
    return state, losses


@pytest.mark.slow
@pytest.mark.parametrize("overrides", SWEEP, ids=lambda o: "-".join(map(str, o.values())))
def test_every_regularizer_trains_with_finite_losses(overrides):
    config = tiny_config(**overrides)
    strategy = tf.distribute.get_strategy()
    state, losses = _run_steps(config, strategy, make_images(16), 2)
    assert int(state.step.numpy()) == 2
    expected = {"loss", "recon", "penalty"} | (
        {"disc_loss"} if config.regularizer == "gan" else set())
    assert set(losses[-1]) == expected
    assert all(np.isfinite(v) for step in losses for v in step.values())
    # loss = recon + lambda * penalty, from the same forward pass.
    last = losses[-1]
    assert last["loss"] == pytest.approx(last["recon"] + config.lambda_reg * last["penalty"],
                                         rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_loss_falls_when_overfitting_one_batch():
    config = tiny_config(batch_size=8, width_divisor=16, learning_rate=2e-3)
    _, losses = _run_steps(config, tf.distribute.get_strategy(), make_images(8), 40)
    first, last = losses[0]["recon"], np.mean([step["recon"] for step in losses[-5:]])
    assert last < 0.6 * first, (first, last)


def _summed_gradients(config, strategy, images, layer_set):
    """Gradients and losses of the global batch `images`, summed over the strategy's replicas."""
    state = _state(config, strategy, layer_set=layer_set)
    batch = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(images))

    @tf.function
    def run(batch):
        def replica(x):
            grads, metrics, _, _ = step_lib.ae_gradients(config, state, x, tf.constant(3, tf.int64))
            return grads, metrics
        grads, metrics = strategy.run(replica, args=(batch,))
        reduce = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)  # noqa
        return [reduce(g) for g in grads], {k: reduce(v) for k, v in metrics.items()}

    grads, metrics = run(next(iter(batch)))
    return [g.numpy() for g in grads], {k: float(v) for k, v in metrics.items()}, _weights(state)


# What one process computes for a global batch must not depend on how many replicas share it.
# Both runs use the same layers: the fused BatchNorm only runs where the statistics are local,
# so one replica would normalise with another formula than two, and a ReLU input within rounding
# of 0 then switches off in one run only (one dec0_bn unit on either side of 0 was enough to
# move enc0's kernel gradient far beyond rounding). With one formula the runs add
# the same float32 terms in another order (a batch of 8 against two of 4 and an all-reduce),
# each sum exact to 2^-24 of its terms; BatchNorm's backward divides by sqrt(var + eps), about
# 0.04 here. Measured worst: 1.3e-5 of a tensor's largest entry (2026-11-27, AVX2 CPU).
# These width/32 networks have channels of variance ~1e-5: with the paper's eps 1e-5 the
# division amplifies the same rounding ~10x more (measured 1.8e-4), so the comparison runs at
# Keras's eps 1e-3, where it tests the distribution maths rather than BatchNorm's conditioning.
GRADIENT_ATOL = 2.0 ** -13  # of the largest entry of each gradient
WELL_CONDITIONED = dict(batchnorm_epsilon=1e-3)
# Adam moves a weight by ~ lr * g / (|g| + eps): an entry whose gradient is rounding noise
# (~1e-10 against eps = 1e-7) moves by lr * 1e-3 in one run and otherwise in the other.
# Measured worst: 4e-4 of the largest possible move, steps * lr.
STEP_ATOL = 2.0 ** -8  # of steps * learning_rate


# The two runs also round each ReLU input differently, and an input within that rounding of 0
# lands on either side: its gradient passes in one run only. Of these cases' tens of thousands
# of ReLU inputs the closest to 0 measured 2.5e-7 to 2.9e-6 (the runs differ by up to 1.2e-5).
# On an AVX-512 Xeon with oneDNN's ops one dec0_bn unit just below 0 came out just above it
# with two replicas and moved dec0's beta gradient far beyond GRADIENT_ATOL
# (docs/performance.md); no seed of 0-11 keeps every input 1e-5 clear of 0. These tests
# compare the distribution maths, which no activation changes: they run the networks with
# softplus, smooth at 0, in place of ReLU.
@pytest.fixture
def smooth_activations(monkeypatch):
    """The networks built during the test have softplus where they would have ReLU."""
    monkeypatch.setattr(networks.layers, "ReLU",
                        lambda name: keras.layers.Activation("softplus", name=name))
    dense = networks._dense

    def smooth_dense(units, config, activation=None, **kwargs):
        return dense(units, config, activation="softplus" if activation == "relu" else activation,
                     **kwargs)
    monkeypatch.setattr(networks, "_dense", smooth_dense)


def _assert_close(got, expected, atol, what):
    worst = float(np.abs(got - expected).max())
    assert worst <= atol, f"{what}: off by {worst:.2e} (allowed {atol:.2e})"


@pytest.mark.numerics
@pytest.mark.parametrize("overrides", [
    dict(regularizer="mmd"), dict(regularizer="mmd", kernel="rbf"), dict(regularizer="swd"),
    dict(regularizer="gan"), dict(regularizer="kl", encoder="gaussian"),
    dict(regularizer="gan", disc_prior_logdensity=True, encoder="gaussian", input_noise=0.05),
    dict(regularizer="mmd", conv_impl="patches")],  # the matmul layers' custom gradients
    ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.slow
def test_one_and_two_replicas_compute_the_same_gradients(overrides, smooth_activations):
    config = tiny_config(**overrides, **WELL_CONDITIONED)
    layer_set = fast_layers.tuned_convs(config)  # Keras's BatchNorm: one formula for both
    images = data.to_float(make_images(8).images)
    grads1, metrics1, init1 = _summed_gradients(config, tf.distribute.get_strategy(), images,
                                                layer_set)
    grads2, metrics2, init2 = _summed_gradients(config, mirrored_strategy(), images, layer_set)
    for a, b in zip(init1, init2):
        # Same seed, same initial weights; BatchNorm moving statistics moved in the forward pass
        # by (1 - momentum) = 0.1 of batch statistics summed in another order: a channel mean
        # near 0 of O(1) activations keeps their absolute rounding (measured 1.8e-7).
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for name in metrics1:
        assert metrics2[name] == pytest.approx(metrics1[name], rel=1e-5, abs=1e-7), name
    for i, (a, b) in enumerate(zip(grads1, grads2)):
        _assert_close(b, a, GRADIENT_ATOL * np.abs(a).max(), f"gradient {i} {a.shape}")


@pytest.mark.slow
@pytest.mark.numerics
def test_one_and_two_replicas_take_the_same_steps_with_a_discriminator(smooth_activations):
    config = tiny_config(regularizer="gan", batch_size=8, **WELL_CONDITIONED)
    layer_set = fast_layers.tuned_convs(config)
    images = make_images(16)
    state1, losses1 = _run_steps(config, tf.distribute.get_strategy(), images, 3, layer_set)
    state2, losses2 = _run_steps(config, mirrored_strategy(), images, 3, layer_set)
    for l1, l2 in zip(losses1, losses2):
        for name in l1:
            assert l2[name] == pytest.approx(l1[name], rel=1e-5, abs=1e-7), name
    for i, (a, b) in enumerate(zip(_weights(state1), _weights(state2))):
        _assert_close(b, a, STEP_ATOL * 3 * config.learning_rate, f"weight {i} {a.shape}")


def test_replicas_draw_different_prior_samples():
    strategy = mirrored_strategy()
    seed = step_lib.step_seed(0, 5, 2)

    @tf.function
    def draw():
        def replica():
            from wae_tf.model import regularizers  # pylint: disable=import-outside-toplevel
            return step_lib.replica_slice(regularizers.sample_prior("normal", 8, 3, 1.0, seed), 4)
        return strategy.experimental_local_results(strategy.run(replica))

    first, second = [t.numpy() for t in draw()]
    assert first.shape == second.shape == (4, 3)
    assert not np.allclose(first, second)
    from wae_tf.model import regularizers  # pylint: disable=import-outside-toplevel
    whole = regularizers.sample_prior("normal", 8, 3, 1.0, seed).numpy()
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)


@pytest.mark.slow
@pytest.mark.numerics
def test_resume_continues_step_optimizer_and_equals_uninterrupted_run(tmp_path):
    train, test = make_images(32), make_images(8, seed=1)
    config = tiny_config(train_steps=4, checkpoint_every=2)
    straight = loop.train_and_evaluate(config, str(tmp_path / "a"), data_override=(train, test))
    loop.train_and_evaluate(config.replace(train_steps=2), str(tmp_path / "b"),
                                data_override=(train, test))
    resumed = loop.train_and_evaluate(config, str(tmp_path / "b"), data_override=(train, test))
    assert straight["step"] == resumed["step"] == 4
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-4)
    assert resumed["test_recon_cost"] == pytest.approx(straight["test_recon_cost"], rel=1e-4)
    states = []
    for workdir in ("a", "b"):
        state = _state(config, tf.distribute.get_strategy())
        state.checkpoint().restore(
            tf.train.latest_checkpoint(str(tmp_path / workdir / "checkpoints")))
        states.append(state)
    assert int(states[1].ae_optimizer.iterations.numpy()) == 4
    for a, b in zip(_weights(states[0]) + [v.numpy() for v in states[0].ae_optimizer.variables],
                    _weights(states[1]) + [v.numpy() for v in states[1].ae_optimizer.variables]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train, test = make_images(32), make_images(8, seed=1)
    config = tiny_config(train_steps=2, checkpoint_every=1)
    workdir = str(tmp_path)
    loop.train_and_evaluate(config, workdir, data_override=(train, test))
    monkeypatch.setattr(step_lib.regularizers, "mmd_penalty", lambda *a, **k: tf.constant(np.nan))
    with pytest.raises(errors.NonFiniteLossError, match=r"step 3.*ckpt-2"):
        loop.train_and_evaluate(config.replace(train_steps=5), workdir,
                                    data_override=(train, test))
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-2")


def test_learning_rate_schedules_follow_the_paper_code():
    manual = lambda e: float(step_lib.learning_rate_multiplier("manual", e, 120))  # noqa: E731
    assert [manual(e) for e in (0, 29, 30, 49, 50, 99, 100)] == pytest.approx(
        [1, 1, 0.5, 0.5, 0.1, 0.1, 0.01])
    smooth = lambda e: float(step_lib.learning_rate_multiplier("smooth", e, 10))  # noqa: E731
    # The paper code's manual_smooth divides by 100^(1/E) before every epoch, the first too:
    # 100^(-(e+1)/E), so epoch 0 already runs at 100^(-1/10) and the last (9) at 1/100.
    assert [smooth(e) for e in (0, 4, 9)] == pytest.approx([100 ** -0.1, 0.1, 0.01])
    schedule = step_lib.EpochSchedule(1e-3, "manual", steps_per_epoch=10, num_epochs=60)
    assert float(schedule(299)) == pytest.approx(1e-3)
    assert float(schedule(300)) == pytest.approx(5e-4)


def test_workdir_with_other_model_flags_is_refused(tmp_path):
    config = tiny_config()
    checkpoints.check_run_record(str(tmp_path), config, (28, 28, 1), write=True)
    assert json.load(open(tmp_path / "config.json"))["z_dim"] == 4
    os.makedirs(tmp_path / "checkpoints", exist_ok=True)  # a checkpoint makes it binding
    open(tmp_path / "checkpoints" / "ckpt-1.index", "w").close()
    with pytest.raises(ConfigError, match="z_dim"):
        checkpoints.check_run_record(str(tmp_path), config.replace(z_dim=5), (28, 28, 1),
                                     write=True)
    with pytest.raises(ConfigError, match="image_shape"):
        checkpoints.check_run_record(str(tmp_path), config, (64, 64, 3), write=True)


def test_batch_not_divisible_by_replicas_is_refused(tmp_path):
    config = tiny_config(batch_size=7)
    with pytest.raises(ConfigError, match="not divisible"):
        loop.train_and_evaluate(config, str(tmp_path), strategy=mirrored_strategy(),
                                    data_override=(make_images(16), make_images(8)))


@pytest.mark.parametrize("policy,conv_impl", [
    ("mixed_float16", "native"), ("mixed_bfloat16", "native"), ("mixed_float16", "patches")])
@pytest.mark.slow
def test_mixed_precision_trains_with_float32_variables_and_outputs(policy, conv_impl):
    config = tiny_config(mixed_precision=policy, regularizer="gan", conv_impl=conv_impl)
    state, losses = _run_steps(config, tf.distribute.get_strategy(), make_images(16), 2)
    assert all(np.isfinite(v) for step in losses for v in step.values())
    assert state.decoder.get_layer("dec0_conv").compute_dtype == policy[len("mixed_"):]
    # Codes, logits and images stay float32, so losses and exported signatures do too.
    for model in (state.encoder, state.decoder, state.discriminator):
        assert model.output.dtype == "float32"
    assert all(v.dtype == "float32" for v in state.ae_variables)


def test_input_noise_is_truncated_at_two_std_in_pixel_range_units():
    """0.01 on [-1, 1] pixels is 0.005 on the [0, 1] images the encoder's first layer maps."""
    images = tf.fill([4, 28, 28, 1], 0.5)
    for pixel_range, std in (("unit", 0.01), ("symmetric", 0.005)):
        config = tiny_config(input_noise=0.01, pixel_range=pixel_range)
        strategy = tf.distribute.get_strategy()
        noise = strategy.run(step_lib.noisy_inputs,
                             (config, images, tf.constant(3, tf.int64), 4)).numpy() - 0.5
        assert np.abs(noise).max() <= 2 * std * (1 + 1e-6)
        assert noise.std() == pytest.approx(0.88 * std, rel=0.05)  # N(0,1) cut at +-2: 0.880


def test_log_variance_is_clipped():
    config = tiny_config(encoder="gaussian")

    def encoder(images, training):
        return tf.zeros([2, 4]), tf.constant([[-80.0, 0.0, 10.0, 200.0]] * 2)
    z, _, log_var = step_lib.encode(config, encoder, None, tf.ones([2, 4]), training=True)
    np.testing.assert_allclose(log_var.numpy()[0], [-50.0, 0.0, 10.0, 50.0])
    assert np.all(np.isfinite(z.numpy()))


@pytest.mark.slow
def test_encoder_pretraining_moves_the_codes_moments_to_the_priors():
    config = tiny_config(width_divisor=16, encoder_pretrain_steps=30, encoder_pretrain_batch=32,
                         learning_rate=2e-3)
    strategy = tf.distribute.get_strategy()
    images = make_images(64)
    state = _state(config, strategy)
    x = data.to_float(images.images)

    def moment_loss():
        z = state.encoder(x, training=True)
        pz = tf.random.stateless_normal([64, config.z_dim], [1, 2])
        return float(step_lib.regularizers.moment_matching_loss(z, pz))
    before = moment_loss()
    decoder_before = [w.copy() for w in state.decoder.get_weights()]
    iterator = iter(data.distribute(strategy, images, 32, config.seed + 1))
    losses = step_lib.pretrain_encoder(config, state, strategy, iterator)
    assert 1 <= len(losses) <= 30 and (losses[-1] < step_lib.PRETRAIN_TARGET or len(losses) == 30)
    assert moment_loss() < 0.5 * before, (before, moment_loss())
    for a, b in zip(decoder_before, state.decoder.get_weights()):
        np.testing.assert_array_equal(a, b)  # only the encoder learns
    assert int(state.step.numpy()) == 0


@pytest.mark.slow
def test_the_discriminator_learns_from_the_codes_of_the_updated_encoder():
    """As in the paper's code: the auto-encoder steps first, then the discriminator's loss is
    that of the pre-step discriminator on codes of the post-step encoder."""
    config = tiny_config(regularizer="gan", batch_size=8)
    strategy = tf.distribute.get_strategy()
    images = make_images(8)
    state = _state(config, strategy)
    disc_before = [w.copy() for w in state.discriminator.get_weights()]
    train_fn = step_lib.make_train_fn(config, state, strategy)
    iterator = iter(strategy.experimental_distribute_dataset(
        data.make_train_dataset(images, 8, config.seed)))
    reported = float(train_fn(iterator, tf.constant(1))["disc_loss"])
    state.discriminator.set_weights(disc_before)
    x = data.to_float(images.images)
    order = next(iter(pipeline.index_batches(8, 8, config.seed, 0))).numpy()
    z = state.encoder(tf.gather(x, order), training=True)
    pz = step_lib.regularizers.sample_prior(config.prior, 8, config.z_dim, config.prior_scale,
                                            step_lib.step_seed(config.seed, 0, step_lib._PRIOR))
    expected = float(tf.reduce_mean(step_lib.regularizers.gan_discriminator_loss(
        state.discriminator(pz), state.discriminator(z))))
    assert reported == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_one_step_per_call_is_traced_once_and_refuses_more_steps():
    """--steps_per_loop=1 (the default): the step is traced once, with no loop body, so a call
    asking for more steps fails instead of silently running one."""
    config = tiny_config(steps_per_loop=1)
    strategy = tf.distribute.get_strategy()
    state = _state(config, strategy)
    iterator = iter(data.make_train_dataset(make_images(16), config.batch_size, config.seed))
    train_fn = step_lib.make_train_fn(config, state, strategy)
    train_fn(iterator, tf.constant(1))
    graph = train_fn.get_concrete_function(iterator, tf.constant(1)).graph
    assert not [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    with pytest.raises(tf.errors.InvalidArgumentError, match="one step a call"):
        train_fn(iterator, tf.constant(2))
    assert int(state.step.numpy()) == 1
