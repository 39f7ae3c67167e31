"""TF Serving's warm-up file: a PredictRequest per signature at batch 1 and a typical batch,
written into a SavedModel version as assets.extra/tf_serving_warmup_requests."""

import math
import os

import tensorflow as tf

FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Batch 1 (one interactive request) and Keras's default predict batch; TF Serving replays each
# record when a version loads (a failing one fails the load; over 1000 records is an error), so
# the typical batch shrinks for large images to keep one request's input under REQUEST_BYTES
# (28x28 and 64x64 RGB: 32 images; 128x128 RGB: 10; 256x256 RGB: 2).
BATCHES = (1, 32)
REQUEST_BYTES = 2 * 1024 * 1024
_INPUTS = {"decode": "z", "sample": "seed", "sample_fitted": "seed"}  # others: "images"


def batches(image_shape):
    """The warm-up batch sizes for images of `image_shape` (BATCHES, capped by REQUEST_BYTES)."""
    image_bytes = 4 * math.prod(int(d) for d in image_shape)  # float32
    return tuple(sorted({min(b, max(1, REQUEST_BYTES // image_bytes)) for b in BATCHES}))


def example_inputs(signature: str, batch: int, z_dim: int, image_shape) -> dict:
    """Valid inputs of a serving signature: images uniform in [0, 1] [batch, H, W, C], codes
    N(0, 1) [batch, z_dim] or int64 seeds 0..batch-1; fixed draws, so the file is the same
    for every export of a model."""
    name = _INPUTS.get(signature, "images")
    if name == "z":
        return {name: tf.random.stateless_normal([batch, z_dim], seed=[9, 9])}
    if name == "seed":
        return {name: tf.range(batch, dtype=tf.int64)}
    return {name: tf.random.stateless_uniform([batch, *image_shape], seed=[9, 9])}


def prediction_logs(signature_names, z_dim: int, image_shape) -> list:
    """One tensorflow_serving PredictionLog per (signature, batch), signatures in the given
    order, each batch 1 first. model_spec.name stays empty: TF Serving's warm-up ignores it
    (the name is the deployment's choice)."""
    # pylint: disable-next=import-outside-toplevel; only the export needs TF Serving's protos
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    logs = []
    for signature in signature_names:
        for batch in batches(image_shape):
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, value in example_inputs(signature, batch, z_dim, image_shape).items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            logs.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_requests(path: str, signature_names, z_dim: int, image_shape) -> None:
    """Write the warm-up records (prediction_logs) to `path` as an uncompressed TFRecord."""
    with tf.io.TFRecordWriter(path) as writer:
        for log in prediction_logs(signature_names, z_dim, image_shape):
            writer.write(log.SerializeToString())
