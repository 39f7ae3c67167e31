"""The serving clients, offline: the README's REST (curl, Python) and gRPC examples for a 64x64
RGB model and wae-reconstruct (wae_tf.serving.rest_client) against stand-ins of TensorFlow
Serving's REST and gRPC APIs that answer with an exported SavedModel's signatures and refuse what
TF Serving would not accept. `serve_forever` runs both stand-ins for tests/serving_check_test.py."""

import concurrent.futures
import http.server
import json
import os
import re
import shlex
import shutil
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


def _export(base: str, image_shape) -> tuple:
    """A tiny export with z_dim 8, as version 7 of `base`, and the SavedModel loaded."""
    config = tiny_config(z_dim=8)
    state = step_lib.create_state(config, image_shape, steps_per_epoch=1, num_epochs=1)
    path = saved_model.export_saved_model(state.encoder, state.decoder, config, image_shape,
                                          base, 7)
    return path, tf.saved_model.load(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Fashion-MNIST's shape: 28x28x1 images."""
    return _export(str(tmp_path_factory.mktemp("export")), (28, 28, 1))


@pytest.fixture(scope="module")
def exported_rgb64(tmp_path_factory):
    """The README's model: a 64x64 RGB folder's."""
    return _export(str(tmp_path_factory.mktemp("export_rgb64")), (64, 64, 3))


def _run_signature(model, name: str, inputs: dict) -> dict:
    """What TF Serving computes: the named signature on inputs cast to its input dtypes."""
    function = model.signatures[name]
    specs = function.structured_input_signature[1]
    if set(inputs) != set(specs):
        raise ValueError(f"signature {name!r} takes inputs {sorted(specs)}, got {sorted(inputs)}")
    outputs = function(**{k: tf.constant(np.asarray(v), specs[k].dtype) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def _metadata(path: str, version: str) -> dict:
    """GET /v1/models/<model>/metadata as TF Serving answers it: the SignatureDefMap printed with
    the proto field names and every field."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signature_defs = {name: json_format.MessageToDict(
        definition, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for name, definition in saved_model.meta_graphs[0].signature_def.items()}
    return {"model_spec": {"name": MODEL, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API for one model: its status, metadata, and predict in the columnar
    format ({"signature_name", "inputs"}), with {"error": ...} and 400/404 for anything else."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append(("GET", self.path, None, self.headers.get("Content-Type")))
        if self.path == f"/v1/models/{MODEL}":
            return self._answer(200, {"model_version_status": [
                {"version": self.server.version, "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}}]})
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


def _rest_server(path: str, model, version: str = "7", port: int = 0):
    """A started stand-in of TF Serving's REST API serving `model` (loaded from `path`)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _RestHandler)
    server.model, server.metadata, server.requests = model, _metadata(path, version), []
    server.version = version
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def rest_server(exported):
    server = _rest_server(*exported)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def rest_server_rgb64(exported_rgb64):
    server = _rest_server(*exported_rgb64)
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


def _readme_rest_commands() -> list:
    """The README's REST examples: one command per line, continued after a trailing backslash."""
    commands = []
    for line in _readme_block("curl -s localhost:8501"):
        if commands and commands[-1].endswith("\\"):
            commands[-1] += "\n" + line
        elif line.strip():
            commands.append(line)
    return commands


def test_the_readme_rest_examples_are_answered(rest_server_rgb64):
    commands = [c for c in _readme_rest_commands() if "curl" in c]
    assert len(commands) == 3, commands  # sample, decode, encode
    answers = []
    for command in commands:
        command = command.replace("localhost:8501", _url(rest_server_rgb64)[len("http://"):])
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                timeout=120, check=True)
        answers.append(json.loads(result.stdout)["outputs"])
    sample, decode, encode = answers  # sole outputs, unnamed
    assert np.shape(sample) == (3, 64, 64, 3) and np.shape(decode) == (1, 64, 64, 3)
    assert np.shape(encode) == (1, 8)


def test_the_readme_python_request_from_a_png_is_answered(rest_server_rgb64, exported_rgb64,
                                                          tmp_path):
    code = re.search(r"```python\n(from wae_tf.serving import rest_client\n.*?)```", README,
                     re.S).group(1)
    photo = np.random.default_rng(1).integers(0, 256, (80, 100, 3), np.uint8)
    code = code.replace('"photo.png"', repr(_png(tmp_path / "photo.png", photo))).replace(
        "http://localhost:8501", _url(rest_server_rgb64))
    namespace = {}
    exec(compile(code, "README.md (REST from a PNG)", "exec"), namespace)  # noqa: S102
    sent = np.asarray(namespace["body"]["inputs"]["images"], np.float32)  # [1, 64, 64, 3]
    prepared = images.preprocess(64, 3, 0)(tf.io.encode_png(photo)).numpy() / 255.0
    np.testing.assert_allclose(sent[0], prepared, atol=1e-7)
    expected = _run_signature(exported_rgb64[1], "reconstruct", {"images": sent})
    outputs = namespace["outputs"]
    assert sorted(outputs) == ["images", "z"]
    np.testing.assert_allclose(outputs["images"], expected["images"], atol=1e-6)
    np.testing.assert_allclose(outputs["z"], expected["z"], atol=1e-6)


@pytest.mark.slow
def test_the_readme_wae_reconstruct_command_writes_the_png(rest_server_rgb64, tmp_path):
    (command,) = [c for c in _readme_rest_commands() if c.startswith("wae-reconstruct")]
    photo = np.random.default_rng(2).integers(0, 256, (50, 70, 3), np.uint8)
    with open(tmp_path / "photo.jpg", "wb") as f:
        f.write(tf.io.encode_jpeg(photo).numpy())
    out = str(tmp_path / "photo_reconstruction.png")
    command = command.replace("photo.jpg", str(tmp_path / "photo.jpg")).replace(
        "photo_reconstruction.png", out).replace("http://localhost:8501", _url(rest_server_rgb64))
    args = [sys.executable, "-m", "wae_tf.reconstruct", *shlex.split(command)[1:]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["out"] == out
    assert visualize.read_png(out).shape == (64, 64, 3)


def _grpc_server(model, port: int = 0):
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
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


def test_the_readme_grpc_example_is_answered(exported_rgb64):
    server, port = _grpc_server(exported_rgb64[1])
    try:
        code = "\n".join(_readme_block("import grpc")).replace("localhost:8500",
                                                                 f"127.0.0.1:{port}")
        namespace = {}
        exec(compile(code, "README.md (gRPC example)", "exec"), namespace)  # noqa: S102
    finally:
        server.stop(None)
    samples, codes = namespace["samples"], namespace["codes"]
    expected = _run_signature(exported_rgb64[1], "sample", {"seed": np.array([1, 2, 3])})
    assert samples.shape == (3, 64, 64, 3) and codes.shape == (3, 8)
    np.testing.assert_allclose(samples, expected["images"], atol=1e-6)


def serve_forever(path: str, version: str, rest_port: str, grpc_port: str) -> None:
    """Both stand-ins on 127.0.0.1 for the SavedModel at `path` as `version` of model "wae",
    until killed: the fake `docker run` of tests/serving_check_test.py."""
    # Importing conftest made a cache directory that no pytest_unconfigure removes here.
    shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)
    model = tf.saved_model.load(path)
    servers = _rest_server(path, model, version, int(rest_port)), _grpc_server(model,
                                                                               int(grpc_port))
    threading.Event().wait()
    del servers  # kept until killed: a gRPC server no longer referenced stops
