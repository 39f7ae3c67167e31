"""wae_tf.WAE (wae_tf/keras/wae_model.py): `fit` takes the loop's steps (1 and 2 replicas),
Keras callbacks save and resume it, its export is the loop's contract, your own networks train
and export, and the README's Python API example runs as it is."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import wae_tf
from tests.conftest import FASHION_DIR, REPO, make_images, mirrored_strategy, tiny_config
from tests.export_test import CLIENT
from tests.step_test import _run_steps, _weights
from wae_tf import data
from wae_tf.evaluation import metrics as metrics_lib
from wae_tf.keras import WAE

# The same ops on the same batches: fit and the loop differ only in how the tf.functions are
# cut (measured: equal bit for bit, on 1 and 2 replicas, MMD and GAN; AVX-512 Xeon, 2026-12-04).
RTOL, ATOL = 1e-5, 1e-7


def _wae(config, image_shape=(28, 28, 1), strategy=None, **kwargs):
    with (strategy or tf.distribute.get_strategy()).scope():
        wae = WAE(config, image_shape, **kwargs)
        wae.compile()
    return wae


def _wae_weights(wae):
    return _weights(wae._state())


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def _fit_steps(config, images, num_steps, strategy):
    """`num_steps` epochs of one step each on the loop's batches: the epochs' logs are the
    steps' losses."""
    wae = _wae(config, images.image_shape, strategy)
    dataset = data.make_train_dataset(images, config.batch_size, config.seed)
    history = wae.fit(dataset, epochs=num_steps, steps_per_epoch=1, shuffle=False,
                      verbose=0).history
    return wae, [{name: history[name][i] for name in history} for i in range(num_steps)]


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("overrides", [
    dict(regularizer="mmd", encoder="gaussian", input_noise=0.05),  # every seeded draw
    dict(regularizer="gan")], ids=lambda o: o["regularizer"])
def test_fit_takes_the_loops_steps(overrides):
    config = tiny_config(**overrides)
    images, strategy = make_images(24), tf.distribute.get_strategy()
    state, loop_losses = _run_steps(config, strategy, images, 3)
    wae, fit_losses = _fit_steps(config, images, 3, strategy)
    assert set(fit_losses[0]) == set(loop_losses[0])  # loss, recon, penalty (, disc_loss)
    for fit_step, loop_step in zip(fit_losses, loop_losses):
        for name, value in loop_step.items():
            assert fit_step[name] == pytest.approx(value, rel=RTOL, abs=ATOL), name
    assert int(wae.optimizer.iterations.numpy()) == int(state.step.numpy()) == 3
    _assert_same(_wae_weights(wae), _weights(state))


@pytest.mark.slow
@pytest.mark.numerics
def test_fit_on_two_replicas_takes_the_loops_steps_and_logs_the_global_losses():
    config = tiny_config(regularizer="gan")
    images, strategy = make_images(24), mirrored_strategy()
    state, loop_losses = _run_steps(config, strategy, images, 2)
    wae, fit_losses = _fit_steps(config, images, 2, strategy)
    for fit_step, loop_step in zip(fit_losses, loop_losses):
        for name, value in loop_step.items():  # summed over replicas, not their mean or one
            assert fit_step[name] == pytest.approx(value, rel=RTOL, abs=ATOL), name
    _assert_same(_wae_weights(wae), _weights(state))


@pytest.mark.slow
def test_evaluate_reports_the_loops_test_metrics():
    config = tiny_config()
    wae, test = _wae(config), make_images(16, seed=1)
    logs = wae.evaluate(test.images, batch_size=8, verbose=0, return_dict=True)
    tracker = metrics_lib.ReconstructionMetrics(config.recon, config.pixel_scale)
    for images, _ in data.make_eval_dataset(test, 8):
        tracker.update(images, wae(images))
    expected = tracker.result()
    assert logs["recon"] == pytest.approx(expected["test_recon_cost"], rel=1e-5)
    assert logs["mse"] == pytest.approx(expected["test_mse_per_pixel"], rel=1e-5)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("interrupted")


@pytest.mark.slow
def test_backup_and_restore_resumes_where_fit_stopped(tmp_path):
    config, images = tiny_config(regularizer="gan"), make_images(16).images  # 2 steps an epoch
    fit = dict(batch_size=8, epochs=3, shuffle=False, verbose=0)
    uninterrupted = _wae(config)
    uninterrupted.fit(images, **fit)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        _wae(config).fit(images, callbacks=[backup, _Interrupt()], **fit)
    resumed = _wae(config)
    history = resumed.fit(images, callbacks=[backup], **fit).history
    assert len(history["loss"]) == 1  # the third epoch only
    assert int(resumed.optimizer.iterations.numpy()) == 6
    _assert_same(_wae_weights(resumed), _wae_weights(uninterrupted))
    _assert_same([v.numpy() for v in resumed.disc_optimizer.variables],
                 [v.numpy() for v in uninterrupted.disc_optimizer.variables])


def _event_tags(directory: str) -> set:
    tags = set()
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.slow
def test_model_checkpoint_tensorboard_and_early_stopping(tmp_path):
    config, images = tiny_config(), make_images(16).images
    wae = _wae(config)
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "wae-{epoch}.weights.h5"),
                                        save_weights_only=True),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "wae.keras")),
        keras.callbacks.TensorBoard(str(tmp_path / "logs")),
        # No epoch improves on the first by 1e9: it stops after the second.
        keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)]
    history = wae.fit(images, batch_size=8, epochs=5, validation_data=images, callbacks=callbacks,
                      verbose=0).history
    assert len(history["loss"]) == 2
    assert {"loss", "recon", "penalty", "val_recon", "val_mse"} <= set(history)
    assert {"epoch_loss", "epoch_recon", "epoch_penalty"} <= _event_tags(
        str(tmp_path / "logs" / "train"))
    assert "epoch_recon" in _event_tags(str(tmp_path / "logs" / "validation"))

    from_weights = _wae(config.replace(seed=1))  # other initial weights, then the file's
    from_weights.load_weights(str(tmp_path / "wae-2.weights.h5"))
    loaded = keras.saving.load_model(str(tmp_path / "wae.keras"))
    assert isinstance(loaded, WAE) and loaded.config == config
    for restored in (from_weights, loaded):
        assert int(restored.optimizer.iterations.numpy()) == 4
        _assert_same(_wae_weights(restored), _wae_weights(wae))
        _assert_same([v.numpy() for v in restored.optimizer.variables],
                     [v.numpy() for v in wae.optimizer.variables])
    more = [m.fit(images, batch_size=8, epochs=1, shuffle=False, verbose=0).history["loss"]
            for m in (wae, loaded)]
    assert more[1] == pytest.approx(more[0], rel=RTOL)  # the .keras file resumes training


@pytest.mark.slow
def test_export_is_the_loops_contract_and_samples_as_the_model_does(tmp_path):
    config = tiny_config(encoder="gaussian", sampler_components=2)
    wae, images = _wae(config), make_images(16).images
    wae.fit(images, batch_size=8, epochs=1, verbose=0)
    path = wae.export(str(tmp_path / "export"), sampler_images=images)
    assert path == str(tmp_path / "export" / "2")  # the step
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", CLIENT, path], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["signatures"] == ["decode", "encode", "reconstruct", "sample",
                                    "sample_fitted", "serving_default"]
    assert all(result["bad_inputs_rejected"]) and not result["wae_tf_imported"]
    assert sorted(os.listdir(os.path.join(path, "keras"))) == ["decoder.keras", "encoder.keras"]
    served = tf.saved_model.load(path).signatures
    seeds = tf.constant([5, 6, 7], tf.int64)
    np.testing.assert_allclose(served["sample"](seed=seeds)["images"], wae.sample(3, seed=5),
                               atol=1e-6)
    np.testing.assert_allclose(served["encode"](images=data.to_float(images))["z"],
                               wae.encode(images), atol=1e-6)


def _small_networks(z_dim: int, gaussian: bool = False):
    """A user's encoder and decoder for 16x16x1 images, a size the paper has no network for."""
    images = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(images)
    x = keras.layers.Flatten()(x)
    z = [keras.layers.Dense(z_dim)(x), keras.layers.Dense(z_dim)(x)] if gaussian else \
        keras.layers.Dense(z_dim)(x)
    encoder = keras.Model(images, z, name="my_encoder")
    decoder = keras.Sequential([
        keras.Input((z_dim,)), keras.layers.Dense(8 * 8 * 4, activation="relu"),
        keras.layers.Reshape((8, 8, 4)),
        keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")],
        name="my_decoder")
    return encoder, decoder


@pytest.mark.slow
def test_your_own_networks_train_save_and_export(tmp_path):
    config = tiny_config(regularizer="gan")  # the paper's discriminator for any image shape
    encoder, decoder = _small_networks(config.z_dim)
    wae = _wae(config, (16, 16, 1), encoder=encoder, decoder=decoder)
    images = make_images(16, size=16).images
    history = wae.fit(images, batch_size=8, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"])) and "disc_loss" in history
    wae.save(str(tmp_path / "mine.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "mine.keras"))
    assert loaded.encoder.name == "my_encoder"
    np.testing.assert_allclose(loaded.predict(images, verbose=0), wae.predict(images, verbose=0),
                               atol=1e-6)
    path = wae.export(str(tmp_path / "export"))
    served = tf.saved_model.load(path).signatures
    np.testing.assert_allclose(served["reconstruct"](images=data.to_float(images))["images"],
                               wae.predict(images, verbose=0), atol=1e-6)
    assert sorted(os.listdir(os.path.join(path, "keras"))) == [
        "decoder.keras", "discriminator.keras", "encoder.keras"]


def test_networks_of_the_wrong_shape_are_refused():
    encoder, decoder = _small_networks(3)
    with pytest.raises(ValueError, match=r"encoder \(--encoder=deterministic, z_dim=4\)"):
        WAE(tiny_config(), (16, 16, 1), encoder=encoder, decoder=decoder)
    encoder, decoder = _small_networks(4)
    with pytest.raises(ValueError, match=r"\[\(2, 4\), \(2, 4\)\]"):  # mean and log_var
        WAE(tiny_config(encoder="gaussian"), (16, 16, 1), encoder=encoder, decoder=decoder)
    with pytest.raises(ValueError, match="decoder on z"):
        WAE(tiny_config(), (16, 16, 1), encoder=encoder, decoder=_small_networks(3)[1])


def test_construction_takes_config_fields_and_checks_them():
    wae = wae_tf.WAE(image_shape=(28, 28, 1), width_divisor=32, z_dim=3, regularizer="gan")
    assert (wae.config.z_dim, wae.discriminator.name) == (3, "discriminator")
    assert wae.encode(np.zeros((2, 28, 28, 1), np.uint8)).shape == (2, 3)
    with pytest.raises(ValueError, match="--regularizer='nope'"):
        WAE(width_divisor=32, regularizer="nope")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        WAE(width_divisor=32, lr_schedule="smooth", epochs=3).compile()


@pytest.mark.slow
def test_pretrain_encoder_runs_the_loops_pretraining():
    config = tiny_config(encoder_pretrain_steps=2)
    wae = _wae(config)
    losses = wae.pretrain_encoder(tf.data.Dataset.from_tensors(make_images(8).images).repeat())
    assert 1 <= len(losses) <= 2 and all(np.isfinite(losses))


def _readme_python_api_block() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
                    reason=f"Fashion-MNIST IDX files not in {FASHION_DIR} (bash .ci/setup)")
def test_the_readme_python_api_example_runs_as_it_is(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _readme_python_api_block()],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(tmp_path / "runs" / "python_api" / "export")  # a version was written
