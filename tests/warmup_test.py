"""TF Serving's warm-up file: every signature at batch 1 and the typical batch, valid requests
that the exported SavedModel answers when replayed as TF Serving replays them."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tests.conftest import tiny_config
from wae_tf.model import latent_sampler
from wae_tf.model import step as step_lib
from wae_tf.serving import saved_model, warmup


@pytest.mark.parametrize("shape,expected", [
    ((28, 28, 1), (1, 32)),  # 3 KB per image
    ((64, 64, 3), (1, 32)),  # 48 KB: 32 images are 1.5 MB
    ((128, 128, 3), (1, 10)),  # 192 KB: 10 fit in 2 MB
    ((256, 256, 3), (1, 2)),
])
def test_the_typical_batch_keeps_a_request_under_two_megabytes(shape, expected):
    assert warmup.batches(shape) == expected


# Per-example output shapes of each signature (z_dim 4, 28x28x1 images).
OUTPUTS = {"encode": {"z": (4,)}, "decode": {"images": (28, 28, 1)},
           "reconstruct": {"images": (28, 28, 1), "z": (4,)},
           "serving_default": {"images": (28, 28, 1), "z": (4,)},
           "sample": {"images": (28, 28, 1)}, "sample_fitted": {"images": (28, 28, 1)}}


@pytest.mark.slow
def test_replayed_requests_give_every_signature_its_outputs(tmp_path):
    """Parsed back as TF Serving reads them (uncompressed TFRecord of PredictionLogs) and run
    against the loaded SavedModel: one request per (signature, batch), none fails (a failing
    warm-up request would fail the model's load in TF Serving)."""
    config = tiny_config(z_dim=4)
    state = step_lib.create_state(config, (28, 28, 1), steps_per_epoch=1, num_epochs=1)
    mixture = latent_sampler.fit_gmm(np.random.default_rng(0).normal(size=(50, 4)), 2, seed=0)
    path = saved_model.export_saved_model(state.encoder, state.decoder, config, (28, 28, 1),
                                      str(tmp_path), 1, mixture)
    records = tf.data.TFRecordDataset(os.path.join(path, warmup.FILE))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    signatures = tf.saved_model.load(path).signatures
    seen = []
    for log in logs:
        request = log.predict_log.request
        name = request.model_spec.signature_name
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        batch = len(next(iter(inputs.values())))
        seen.append((name, batch))
        if "images" in inputs:
            assert inputs["images"].dtype == np.float32
            assert 0 <= inputs["images"].min() and inputs["images"].max() <= 1
        if "seed" in inputs:
            assert inputs["seed"].dtype == np.int64
        outputs = signatures[name](**{key: tf.constant(v) for key, v in inputs.items()})
        assert {key: tuple(v.shape) for key, v in outputs.items()} == {
            key: (batch, *shape) for key, shape in OUTPUTS[name].items()}, name
    assert sorted(seen) == sorted((name, batch) for name in OUTPUTS for batch in (1, 32))
    # Images in 3 signatures x (1 + 32) requests x 3,136 bytes = 0.31 MB; codes and seeds.
    assert os.path.getsize(os.path.join(path, warmup.FILE)) < 400_000
