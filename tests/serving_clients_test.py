"""The serving clients, offline: the README's REST (curl) and gRPC examples and wae-reconstruct
(wae_tf.serving.rest_client) against stand-ins of TensorFlow Serving's REST and gRPC APIs that
answer with an exported SavedModel's signatures and refuse what TF Serving would not accept."""

import concurrent.futures
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from tests.conftest import REPO, tiny_config
from wae_tf import visualize
from wae_tf.data import images
from wae_tf.errors import ConfigError
from wae_tf.model import step as step_lib
from wae_tf.serving import rest_client, saved_model

MODEL = "wae"
with open(os.path.join(REPO, "README.md")) as _f:
    README = _f.read()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny export of the README's model shape: 28x28x1 images, z_dim 8."""
    config = tiny_config(z_dim=8)
    state = step_lib.create_state(config, (28, 28, 1), steps_per_epoch=1, num_epochs=1)
    base = str(tmp_path_factory.mktemp("export"))
    path = saved_model.export_saved_model(state.encoder, state.decoder, config, (28, 28, 1),
                                          base, 7)
    return path, tf.saved_model.load(path)


def _run_signature(model, name: str, inputs: dict) -> dict:
    """What TF Serving computes: the named signature on inputs cast to its input dtypes."""
    function = model.signatures[name]
    specs = function.structured_input_signature[1]
    if set(inputs) != set(specs):
        raise ValueError(f"signature {name!r} takes inputs {sorted(specs)}, got {sorted(inputs)}")
    outputs = function(**{k: tf.constant(np.asarray(v), specs[k].dtype) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def _metadata(path: str) -> dict:
    """GET /v1/models/<model>/metadata as TF Serving answers it: the SignatureDefMap printed with
    the proto field names and every field."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature_defs = {name: json_format.MessageToDict(
        definition, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for name, definition in saved_model.meta_graphs[0].signature_def.items()}
    return {"model_spec": {"name": MODEL, "signature_name": "", "version": "7"},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API for one model: metadata, and predict in the columnar format
    ({"signature_name", "inputs"}), with {"error": ...} and 400/404 for anything else."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append(("GET", self.path, None, self.headers.get("Content-Type")))
        if self.path != f"/v1/models/{MODEL}/metadata":
            return self._answer(404, {"error": f"Servable not found for request: {self.path}"})
        return self._answer(200, self.server.metadata)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, body, self.headers.get("Content-Type")))
        if self.path != f"/v1/models/{MODEL}:predict":
            return self._answer(404, {"error": f"Servable not found for request: {self.path}"})
        if not isinstance(body.get("inputs"), dict) or set(body) - {"signature_name", "inputs"}:
            return self._answer(400, {"error": f"not a columnar predict request: {sorted(body)}"})
        try:
            outputs = _run_signature(self.server.model, body.get("signature_name",
                                                                 "serving_default"),
                                     body["inputs"])
        except (KeyError, ValueError, tf.errors.InvalidArgumentError) as error:
            return self._answer(400, {"error": str(error).splitlines()[0]})
        # A sole output is given without its name (TF Serving's columnar response).
        outputs = {k: v.tolist() for k, v in outputs.items()}
        return self._answer(200, {"outputs": outputs if len(outputs) > 1 else
                                  next(iter(outputs.values()))})

    def _answer(self, status: int, value: dict) -> None:
        payload = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # quiet
        del args


@pytest.fixture(scope="module")
def rest_server(exported):
    path, model = exported
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RestHandler)
    server.model, server.metadata, server.requests = model, _metadata(path), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _png(path, image: np.ndarray) -> str:
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())
    return str(path)


def test_reconstruct_file_asks_for_the_shape_then_predicts_in_tf_servings_format(
        rest_server, exported, tmp_path):
    rest_server.requests.clear()
    photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)  # RGB, not square
    out = str(tmp_path / "reconstruction.png")
    result = rest_client.reconstruct_file(_png(tmp_path / "photo.png", photo), out,
                                          _url(rest_server), MODEL)
    (get, metadata_path, _, _), (post, predict_path, body, content_type) = rest_server.requests
    assert (get, metadata_path) == ("GET", f"/v1/models/{MODEL}/metadata")
    assert (post, predict_path, content_type) == ("POST", f"/v1/models/{MODEL}:predict",
                                                  "application/json")
    assert sorted(body) == ["inputs", "signature_name"] and body["signature_name"] == "reconstruct"
    sent = np.asarray(body["inputs"]["images"], np.float32)  # [1, 28, 28, 1] from the metadata
    # The photo as training reads a folder: grayscale, the centred square, resized.
    prepared = images.preprocess(28, 1, 0)(tf.io.encode_png(photo)).numpy() / 255.0
    np.testing.assert_allclose(sent[0], prepared, atol=1e-7)
    expected = _run_signature(exported[1], "reconstruct", {"images": sent})["images"][0]
    written = visualize.read_png(out)
    assert written.shape == (28, 28, 1)
    assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    assert result["image_shape"] == [28, 28, 1] and result["out"] == out
    assert result["mse_per_pixel"] == pytest.approx(float(np.mean((expected - sent[0]) ** 2)))


def test_client_errors_say_what_is_wrong(rest_server, tmp_path):
    image = _png(tmp_path / "x.png", np.zeros((28, 28, 1), np.uint8))
    out = str(tmp_path / "out.png")
    with pytest.raises(ConfigError, match="HTTP 404: Servable not found"):
        rest_client.reconstruct_file(image, out, _url(rest_server), "other_model")
    with socket.socket() as free:  # a port where nothing listens
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}"
    with pytest.raises(ConfigError, match="Cannot reach TensorFlow Serving"):
        rest_client.reconstruct_file(image, out, closed, MODEL, timeout=5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="Cannot decode .*bad.png"):
        rest_client.reconstruct_file(str(tmp_path / "bad.png"), out, _url(rest_server), MODEL)
    with pytest.raises(ConfigError, match="no 'reconstruct' signature"):
        rest_client.image_shape({"metadata": {"signature_def": {"signature_def": {}}}})
    assert not os.path.exists(out)


@pytest.mark.slow
def test_the_entry_point_writes_the_png_and_prints_what_it_did(rest_server, tmp_path):
    image = _png(tmp_path / "x.png", np.full((28, 28, 1), 128, np.uint8))
    out = str(tmp_path / "out.png")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "wae_tf.reconstruct", f"--image={image}", f"--out={out}",
         f"--server={_url(rest_server)}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["out"] == out
    assert visualize.read_png(out).shape == (28, 28, 1)


def _readme_block(first_line_start: str) -> list:
    """The lines of the README's indented code block whose first line starts so, dedented."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("    " + first_line_start))
    block = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return block


def test_the_readme_rest_examples_are_answered(rest_server):
    commands = []  # one per line, continued after a trailing backslash
    for line in _readme_block("curl -s localhost:8501"):
        if commands and commands[-1].endswith("\\"):
            commands[-1] += "\n" + line
        elif line.strip():
            commands.append(line)
    assert len(commands) == 4, commands  # sample, decode, encode, reconstruct
    answers = []
    for command in commands:
        command = command.replace("localhost:8501", f"127.0.0.1:{rest_server.server_address[1]}")
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                timeout=120, check=True)
        answers.append(json.loads(result.stdout)["outputs"])
    sample, decode, encode, reconstruct = answers
    assert np.shape(sample) == (3, 28, 28, 1) and np.shape(decode) == (1, 28, 28, 1)
    assert np.shape(encode) == (1, 8)
    assert np.shape(reconstruct["images"]) == (1, 28, 28, 1)
    assert np.shape(reconstruct["z"]) == (1, 8)


def _grpc_server(model):
    """A started gRPC server answering TF Serving's PredictionService.Predict for `model`, and
    its port (skips the test without tensorflow-serving-api)."""
    grpc = pytest.importorskip("grpc")
    services = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc",
                                   reason="pip install tensorflow-serving-api==2.21.0")
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

    class PredictionService(services.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (the gRPC method's name)
            if request.model_spec.name != MODEL:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: {MODEL}")
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            try:
                outputs = _run_signature(
                    model, request.model_spec.signature_name or "serving_default", inputs)
            except (KeyError, ValueError, tf.errors.InvalidArgumentError) as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error).splitlines()[0])
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(request.model_spec)
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    services.add_PredictionServiceServicer_to_server(PredictionService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_the_readme_grpc_example_is_answered(exported):
    server, port = _grpc_server(exported[1])
    try:
        code = "\n".join(_readme_block("import grpc")).replace("localhost:8500",
                                                                 f"127.0.0.1:{port}")
        namespace = {}
        exec(compile(code, "README.md (gRPC example)", "exec"), namespace)  # noqa: S102
    finally:
        server.stop(None)
    samples, codes = namespace["samples"], namespace["codes"]
    expected = _run_signature(exported[1], "sample", {"seed": np.array([1, 2, 3])})["images"]
    assert samples.shape == (3, 28, 28, 1) and codes.shape == (3, 8)
    np.testing.assert_allclose(samples, expected, atol=1e-6)
