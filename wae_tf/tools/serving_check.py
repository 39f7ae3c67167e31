"""An export against a real TensorFlow Serving in Docker: `python -m wae_tf.tools.serving_check
--saved_model=DIR` starts the pinned image with the export's version mounted, waits until TF
Serving reports it AVAILABLE, sends every signature over REST and gRPC, and an image file through
wae-reconstruct's client (serving/rest_client.py), compares each answer with
`tf.saved_model.load` of the same version, prints a JSON summary and always removes the
container.

Exit codes: 0 every answer agrees, or no Docker engine answers (then one line, "skipped: no
Docker engine (...)"); 1 an answer differs, or the server never served the version (the summary
holds the container's last log lines); 2 not an export, or bad arguments; 130 / 143 stopped by
SIGINT / SIGTERM, the container removed.
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from wae_tf import cli
from wae_tf.errors import ConfigError, Preempted

# TF Serving built on TensorFlow 2.21, which writes the exports (an older server may not know
# their ops or attributes). Docker Hub has it for linux/amd64 only; `2.21.0-gpu` is the CUDA build.
IMAGE = "tensorflow/serving:2.21.0"
MODEL = "wae"
REST_PORT, GRPC_PORT = 8501, 8500  # inside the container
EXAMPLE_BATCH = 2
LOG_LINES = 20
# `docker run` pulls the image first if it is missing, so it may take long; the others are quick.
RUN_TIMEOUT, DOCKER_TIMEOUT = 1800.0, 60.0


class CheckFailed(RuntimeError):
    """TF Serving did not serve the version (it failed to load, stopped, or never answered)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What to check, with which image and Docker command."""
    saved_model: str
    image: str = IMAGE
    docker: Sequence[str] = ("docker",)
    test_image: str = ""  # an image file for wae-reconstruct's client; "" draws one
    timeout: float = 300.0  # seconds for the version to become AVAILABLE once started
    tolerance: float = 1e-4  # |served - loaded| <= tolerance * max(1, |loaded|)


@dataclasses.dataclass
class Export:
    """One version of an export, loaded: what TF Serving should answer."""
    path: str
    version: str
    signatures: Dict[str, Callable]
    image_shape: tuple  # [H, W, C]
    z_dim: int

    def run(self, signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The signature's outputs for `inputs`, cast to its input dtypes, as TF Serving does."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel; loaded by load_export
        function = self.signatures[signature]
        specs = function.structured_input_signature[1]
        outputs = function(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}


def docker_engine_problem(docker: Sequence[str]) -> Optional[str]:
    """Why no Docker engine answers `docker info`; None when one does."""
    try:
        result = subprocess.run([*docker, "info", "--format", "{{.ServerVersion}}"],
                                capture_output=True, text=True, timeout=DOCKER_TIMEOUT,
                                check=False)
    except FileNotFoundError:
        return f"no {docker[0]!r} command"
    except subprocess.TimeoutExpired:
        return f"`{shlex.join(docker)} info` did not answer within {DOCKER_TIMEOUT:g} s"
    if result.returncode == 0 and result.stdout.strip():
        return None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"`{shlex.join(docker)} info` exited {result.returncode}"


def load_export(path: str) -> Export:
    """The version TF Serving would serve from `path` (a version directory, or the highest
    version of a base directory); ConfigError if it is not a local wae_tf export."""
    tf = cli.import_tensorflow()  # after the Docker probe, without TF's start-up lines
    from wae_tf.serving import saved_model  # pylint: disable=import-outside-toplevel
    if "://" in path or not os.path.isdir(path):
        raise ConfigError(f"--saved_model={path} is not a local directory (Docker mounts it).")
    version_dir = os.path.abspath(saved_model.latest_version(path))
    name = os.path.basename(version_dir)
    signatures = tf.saved_model.load(version_dir).signatures
    if not {"encode", "decode", "reconstruct"} <= set(signatures):
        raise ConfigError(f"{version_dir} has signatures {sorted(signatures)}, not a wae_tf "
                          "export's (encode, decode, reconstruct, ...).")
    images = signatures["encode"].structured_input_signature[1]["images"]  # [None, H, W, C]
    z = signatures["decode"].structured_input_signature[1]["z"]  # [None, z_dim]
    return Export(version_dir, name if name.isdigit() else "1", dict(signatures),
                  tuple(int(d) for d in images.shape[1:]), int(z.shape[1]))


def free_ports(count: int) -> List[int]:
    """`count` distinct TCP ports of 127.0.0.1 that nothing listens on now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def run_command(docker: Sequence[str], image: str, export: Export, rest_port: int,
                grpc_port: int, name: str) -> List[str]:
    """`docker run` of TF Serving in the background: the one version, read-only, at
    /models/wae/<version>; its REST and gRPC ports published on 127.0.0.1 only."""
    return [*docker, "run", "-d", "--name", name,
            "-p", f"127.0.0.1:{rest_port}:{REST_PORT}", "-p", f"127.0.0.1:{grpc_port}:{GRPC_PORT}",
            "-v", f"{export.path}:/models/{MODEL}/{export.version}:ro",
            "-e", f"MODEL_NAME={MODEL}", image]


def _docker(docker: Sequence[str], *args: str, timeout: float = DOCKER_TIMEOUT):
    return subprocess.run([*docker, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def start_container(command: List[str]) -> None:
    """Run `command` (run_command's); CheckFailed if Docker could not start the container."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                check=False)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"`docker run` did not return within {RUN_TIMEOUT:g} s (pulling the "
                          "image?)") from None
    if result.returncode != 0:
        raise CheckFailed(f"`docker run` failed ({result.stderr.strip()[-500:]}); an image of "
                          "another tag: --image=tensorflow/serving:X.Y.Z")


def is_running(docker: Sequence[str], name: str) -> bool:
    """Whether the container runs (a slow `docker inspect` counts as running: the timeout
    of the wait ends it)."""
    try:
        result = _docker(docker, "inspect", "--format", "{{.State.Running}}", name)
    except subprocess.TimeoutExpired:
        return True
    return result.returncode == 0 and result.stdout.strip() == "true"


def log_tail(docker: Sequence[str], name: str) -> List[str]:
    """The container's last LOG_LINES lines of output (TF Serving logs to stderr)."""
    try:
        result = _docker(docker, "logs", "--tail", str(LOG_LINES), name)
    except subprocess.TimeoutExpired:
        return []
    return (result.stdout + result.stderr).splitlines()[-LOG_LINES:]


def remove_container(docker: Sequence[str], name: str) -> bool:
    """`docker rm -f`: stops and removes the container; False (and why, on stderr) if it failed."""
    try:
        result = _docker(docker, "rm", "-f", name)
    except subprocess.TimeoutExpired:
        result = None
    if result is not None and (result.returncode == 0 or "No such container" in result.stderr):
        return True
    print(f"warning: could not remove container {name}: run `{shlex.join(docker)} rm -f {name}`",
          file=sys.stderr)
    return False


def wait_until_available(url: str, version: str, timeout: float, running: Callable[[], bool],
                         poll: float = 0.5) -> float:
    """Seconds until TF Serving's model status (GET /v1/models/<model>) says `version` is
    AVAILABLE; CheckFailed if it failed to load, the container stopped, or `timeout` passed."""
    from wae_tf.serving import rest_client  # pylint: disable=import-outside-toplevel
    start, last = time.monotonic(), "no answer"
    while True:
        try:  # refused while the server starts; 404 until the version is found
            status = rest_client.call(url, timeout=10.0)
        except ConfigError as error:
            last = str(error)
        else:
            for entry in status.get("model_version_status", []):
                if str(entry.get("version")) != version:
                    continue
                if entry.get("state") == "AVAILABLE":
                    return time.monotonic() - start
                error = entry.get("status") or {}
                if error.get("error_code", "OK") != "OK":
                    raise CheckFailed(f"TF Serving could not load version {version}: "
                                      f"{error.get('error_message', error['error_code'])}")
                last = f"version {version} is {entry.get('state')}"
        if not running():
            raise CheckFailed(f"the container stopped before version {version} was AVAILABLE "
                              f"({last})")
        if time.monotonic() - start > timeout:
            raise CheckFailed(f"version {version} was not AVAILABLE after {timeout:g} s ({last})")
        time.sleep(poll)


def compare(expected: Dict[str, np.ndarray], served: Dict[str, np.ndarray],
            tolerance: float) -> dict:
    """Whether the served outputs have the loaded ones' names and shapes and values within
    tolerance * max(1, |expected|), with the largest absolute difference."""
    if sorted(served) != sorted(expected):
        return dict(ok=False, problem=f"outputs {sorted(served)}, expected {sorted(expected)}")
    ok, worst = True, 0.0
    for name, want in expected.items():
        got = np.asarray(served[name], np.float64)
        if got.shape != want.shape:
            return dict(ok=False, problem=f"{name}: shape {list(got.shape)}, expected "
                                          f"{list(want.shape)}")
        difference = np.abs(got - want)
        ok &= bool(np.all(difference <= tolerance * np.maximum(1.0, np.abs(want))))
        worst = max(worst, float(np.nanmax(difference, initial=0.0)))
        ok &= bool(np.all(np.isfinite(got)))
    return dict(ok=ok, max_abs_diff=worst)


def rest_predict(url: str, signature: str, inputs: Dict[str, np.ndarray],
                 output_names: Sequence[str]) -> Dict[str, np.ndarray]:
    """A columnar REST predict request; a sole output comes back without its name."""
    from wae_tf.serving import rest_client  # pylint: disable=import-outside-toplevel
    body = {"signature_name": signature, "inputs": {k: v.tolist() for k, v in inputs.items()}}
    outputs = rest_client.call(f"{url}:predict", body).get("outputs")
    if outputs is not None and not isinstance(outputs, dict) and len(output_names) == 1:
        outputs = {output_names[0]: outputs}
    if not isinstance(outputs, dict):
        raise ConfigError(f"{url}:predict answered without named outputs")
    return {k: np.asarray(v) for k, v in outputs.items()}


def grpc_predict(stub, signature: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """PredictionService.Predict, as the README's gRPC example sends it."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    response = stub.Predict(request, timeout=60.0, wait_for_ready=True)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _checked(predict: Callable[[], dict], expected: dict, tolerance: float) -> dict:
    import grpc  # pylint: disable=import-outside-toplevel
    try:
        served = predict()
    except ConfigError as error:
        return dict(ok=False, problem=str(error))
    except grpc.RpcError as error:
        return dict(ok=False, problem=f"gRPC {error.code().name}: {error.details()}")
    return compare(expected, served, tolerance)


def check_signatures(export: Export, rest_url: str, grpc_target: str,
                     tolerance: float) -> List[dict]:
    """Every signature on EXAMPLE_BATCH warm-up inputs, over REST and over gRPC."""
    # pylint: disable=import-outside-toplevel
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from wae_tf.serving import warmup
    rows = []
    with grpc.insecure_channel(grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature in sorted(export.signatures):
            inputs = {k: v.numpy() for k, v in warmup.example_inputs(
                signature, EXAMPLE_BATCH, export.z_dim, export.image_shape).items()}
            expected = export.run(signature, inputs)
            for api, predict in (
                    ("rest", functools.partial(rest_predict, rest_url, signature, inputs,
                                               list(expected))),
                    ("grpc", functools.partial(grpc_predict, stub, signature, inputs))):
                rows.append(dict(signature=signature, api=api,
                                 **_checked(predict, expected, tolerance)))
    return rows


def check_image_file(export: Export, rest_url: str, path: str, tolerance: float) -> dict:
    """wae-reconstruct's steps: the image shape from TF Serving's metadata, the file prepared
    as in training, one `reconstruct` request (serving/rest_client.py)."""
    from wae_tf.serving import rest_client  # pylint: disable=import-outside-toplevel

    def served():
        shape = rest_client.image_shape(rest_client.call(f"{rest_url}/metadata"))
        if tuple(shape) != export.image_shape:
            raise ConfigError(f"the metadata says images {list(shape)}, the export "
                              f"{list(export.image_shape)}")
        return {"images": rest_client.reconstruct(rest_client.read_image(path, shape), rest_url)}

    image = rest_client.read_image(path, export.image_shape)  # [H, W, C] in [0, 1]
    expected = {"images": export.run("reconstruct", {"images": image[None]})["images"][0]}
    return dict(signature="reconstruct", api="rest: wae-reconstruct's client", file=path,
                **_checked(served, expected, tolerance))


def draw_test_image(directory: str, image_shape) -> str:
    """A PNG larger than the model's images and not square (so the client crops and resizes):
    smooth ramps per channel."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    height, width, channels = image_shape
    y, x, c = np.meshgrid(np.arange(height + 8), np.arange(width + 24), np.arange(channels),
                          indexing="ij")
    pixels = ((3 * x + 5 * y + 80 * c) % 256).astype(np.uint8)  # [H + 8, W + 24, C]
    path = os.path.join(directory, "test_image.png")
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(pixels).numpy())
    return path


def serve_and_check(options: Options, export: Export, scratch: str) -> dict:
    """Start TF Serving on free ports, wait for the version, check it; always remove the
    container. The summary's `ok` is True when every answer agrees."""
    rest_port, grpc_port = free_ports(2)
    name = f"wae-serving-check-{os.getpid()}-{secrets.token_hex(3)}"
    rest_url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}"
    grpc_target = f"127.0.0.1:{grpc_port}"
    summary = dict(ok=False, image=options.image, export=export.path, version=export.version,
                   container=name, rest=rest_url, grpc=grpc_target, tolerance=options.tolerance)
    try:
        start_container(run_command(options.docker, options.image, export, rest_port,
                                    grpc_port, name))
        summary["available_after_s"] = round(wait_until_available(
            rest_url, export.version, options.timeout,
            lambda: is_running(options.docker, name)), 1)
        test_image = options.test_image or draw_test_image(scratch, export.image_shape)
        summary["checks"] = check_signatures(export, rest_url, grpc_target, options.tolerance)
        summary["checks"].append(check_image_file(export, rest_url, test_image,
                                                  options.tolerance))
        summary["ok"] = all(row["ok"] for row in summary["checks"])
    except CheckFailed as error:
        summary["error"] = str(error)
        summary["server_log"] = log_tail(options.docker, name)
    finally:
        summary["container_removed"] = remove_container(options.docker, name)
    return summary


def run(options: Options) -> dict:
    """The summary of the check, or {"skipped": why} where no Docker engine answers."""
    if not os.path.isdir(options.saved_model):
        raise ConfigError(f"--saved_model={options.saved_model} is not a directory.")
    if options.test_image and not os.path.isfile(options.test_image):
        raise ConfigError(f"--test_image={options.test_image} is not a file.")
    problem = docker_engine_problem(options.docker)
    if problem:
        return {"skipped": f"no Docker engine ({problem})"}
    export = load_export(options.saved_model)
    with tempfile.TemporaryDirectory() as scratch:
        return serve_and_check(options, export, scratch)


@contextlib.contextmanager
def _signals_stop_the_check():
    """SIGTERM and SIGINT raise Preempted, so the container is removed on the way out."""
    def stop(signum, frame):
        del frame
        raise Preempted(f"{signal.Signals(signum).name}; no container was left running", signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m wae_tf.tools.serving_check",
        description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--saved_model", required=True,
                        help="An export: a version directory, or their base (the highest "
                             "version is checked). ~ and $VARIABLES are expanded.")
    parser.add_argument("--image", default=IMAGE, help="TF Serving's Docker image.")
    parser.add_argument("--docker", default="docker",
                        help="The Docker command, split like a shell would (e.g. 'sudo docker').")
    parser.add_argument("--test_image", default="",
                        help="An image file for wae-reconstruct's client; default: a drawn one.")
    parser.add_argument("--timeout", type=float, default=Options.timeout,
                        help="Seconds for the version to become AVAILABLE once started.")
    parser.add_argument("--tolerance", type=float, default=Options.tolerance,
                        help="Largest |served - loaded| allowed, times max(1, |loaded|).")
    args = parser.parse_args(argv)
    return Options(saved_model=cli.expand_path(args.saved_model), image=args.image,
                   docker=tuple(shlex.split(args.docker)),
                   test_image=cli.expand_path(args.test_image), timeout=args.timeout,
                   tolerance=args.tolerance)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    try:
        with _signals_stop_the_check():
            summary = run(options)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Preempted as error:
        print(f"stopped: {error}", file=sys.stderr)
        return 128 + error.signum
    if "skipped" in summary:
        print(f"skipped: {summary['skipped']}")
        return 0
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
