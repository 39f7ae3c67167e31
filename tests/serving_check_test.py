"""python -m wae_tf.tools.serving_check: without a Docker engine one line, "skipped: ...", exit 0
and nothing started; its pieces (the `docker run` command, waiting for AVAILABLE against a
stand-in status server, the comparison); and the whole check through a fake `docker` whose `run`
serves the export with tests/serving_clients_test.py's stand-ins: it agrees with the same export,
finds a different one, reports a server that never came up, and removes the container each time,
also when SIGTERM stops it."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import REPO, tiny_config
from wae_tf.model import step as step_lib
from wae_tf.serving import saved_model
from wae_tf.tools import serving_check

NO_ENGINE = ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker "
             "daemon running?")
# The docker command line as serving_check uses it: each call logged; `info` answers as
# FAKE_DOCKER_ENGINE says; `run` serves the mounted export (or FAKE_DOCKER_SERVE's export,
# "nothing" or "sleep": an exited or a silent container)
# with the stand-ins of tests/serving_clients_test.py on the published ports; `rm` kills them.
FAKE_DOCKER = """#!{python}
import json, os, signal, subprocess, sys
state, args = os.environ["FAKE_DOCKER_STATE"], sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
pid_file = lambda name: os.path.join(state, name + ".pid")
if args[0] == "info":
    if os.environ.get("FAKE_DOCKER_ENGINE") == "none":
        sys.exit({no_engine!r})
    print("28.0.0")
elif args[0] == "run":
    name = args[args.index("--name") + 1]
    ports = dict(reversed(args[i + 1].split(":")[1:]) for i, a in enumerate(args) if a == "-p")
    host, mounted, _ = args[args.index("-v") + 1].split(":")
    serve, pid = os.environ.get("FAKE_DOCKER_SERVE", host), ""
    if serve == "sleep":  # a container that runs but never serves
        pid = subprocess.Popen(["sleep", "600"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True).pid
    elif serve != "nothing":
        log = open(os.path.join(state, name + ".log"), "w")
        code = ("import sys; from tests.serving_clients_test import serve_forever; "
                "serve_forever(*sys.argv[1:])")
        pid = subprocess.Popen([sys.executable, "-c", code, serve, mounted.rsplit("/", 1)[1],
                                ports["8501"], ports["8500"]], cwd={repo!r}, stdout=log,
                               stderr=log, start_new_session=True).pid
    with open(pid_file(name), "w") as f:
        f.write(str(pid))
    print("f00d" * 16)
elif args[0] == "inspect":
    try:
        os.kill(int(open(pid_file(args[-1])).read()), 0)
        print("true")
    except (ValueError, ProcessLookupError):
        print("false")
elif args[0] == "logs":
    print("the fake TF Serving's log")
elif args[0] == "rm":
    pid = open(pid_file(args[-1])).read()
    if pid:
        os.kill(int(pid), signal.SIGKILL)
    os.remove(pid_file(args[-1]))
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """The fake `docker` (in a directory of its own, for PATH) and a function reading its calls."""
    directory = tmp_path / "bin"
    directory.mkdir()
    path = directory / "docker"
    path.write_text(FAKE_DOCKER.format(python=sys.executable, no_engine=NO_ENGINE, repo=REPO))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(tmp_path))

    def calls():
        log = tmp_path / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return str(path), calls


def _export(base, seed: int = 0) -> str:
    """A tiny 32x32 RGB export, version 7 of `base`."""
    config = tiny_config(z_dim=8, seed=seed)
    state = step_lib.create_state(config, (32, 32, 3), steps_per_epoch=1, num_epochs=1)
    return saved_model.export_saved_model(state.encoder, state.decoder, config, (32, 32, 3),
                                          str(base), 7)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An export and another one of the same shapes with other weights."""
    return (_export(tmp_path_factory.mktemp("export")),
            _export(tmp_path_factory.mktemp("other"), seed=1))


def test_without_a_docker_engine_it_says_skipped_and_starts_nothing(fake_docker, monkeypatch,
                                                                    tmp_path, capsys):
    docker, calls = fake_docker
    monkeypatch.setenv("FAKE_DOCKER_ENGINE", "none")
    assert serving_check.main([f"--saved_model={tmp_path}", f"--docker={docker}"]) == 0
    assert capsys.readouterr().out == f"skipped: no Docker engine ({NO_ENGINE})\n"
    assert calls() == [["info", "--format", "{{.ServerVersion}}"]]
    missing = str(tmp_path / "no" / "docker")
    assert serving_check.main([f"--saved_model={tmp_path}", f"--docker={missing}"]) == 0
    assert capsys.readouterr().out == f"skipped: no Docker engine (no {missing!r} command)\n"


def test_python_m_finds_docker_on_the_path_and_skips(fake_docker, tmp_path):
    docker, _ = fake_docker
    env = dict(os.environ, FAKE_DOCKER_ENGINE="none",
               PATH=os.path.dirname(docker) + os.pathsep + os.environ["PATH"])
    result = subprocess.run([sys.executable, "-m", "wae_tf.tools.serving_check",
                             f"--saved_model={tmp_path}"], cwd=REPO, env=env, text=True,
                            capture_output=True, timeout=120, check=False)
    assert (result.returncode, result.stdout) == (0, f"skipped: no Docker engine ({NO_ENGINE})\n")


def test_what_is_not_an_export_is_refused_before_any_container(fake_docker, tmp_path, capsys):
    docker, calls = fake_docker
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "missing", tmp_path / "empty"):
        assert serving_check.main([f"--saved_model={path}", f"--docker={docker}"]) == 2
        assert capsys.readouterr().err.startswith(f"error: --saved_model={path}" if
                                                  path.name == "missing" else f"error: {path}")
    assert [call[0] for call in calls()] == ["info"]  # the missing one fails before the probe


def test_the_docker_run_command_mounts_the_version_and_publishes_on_localhost_only():
    export = serving_check.Export("/runs/mine/export/600", "600", {}, (64, 64, 3), 8)
    assert serving_check.run_command(("sudo", "docker"), serving_check.IMAGE, export, 40001,
                                     40002, "wae-serving-check-1") == [
        "sudo", "docker", "run", "-d", "--name", "wae-serving-check-1",
        "-p", "127.0.0.1:40001:8501", "-p", "127.0.0.1:40002:8500",
        "-v", "/runs/mine/export/600:/models/wae/600:ro", "-e", "MODEL_NAME=wae",
        "tensorflow/serving:2.21.0"]


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """GET /v1/models/wae answered from server.answers in turn (the last one repeated)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        status, body = self.server.answers[min(self.server.count, len(self.server.answers) - 1)]
        self.server.count += 1
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        del args


@pytest.fixture
def status_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    server.answers, server.count = [], 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1/models/wae"
    server.shutdown()
    server.server_close()


def _status(state: str, error_code: str = "OK", message: str = "") -> tuple:
    return 200, {"model_version_status": [{"version": "7", "state": state, "status": {
        "error_code": error_code, "error_message": message}}]}


NOT_FOUND = (404, {"error": "Could not find any versions of model wae"})


def test_waiting_polls_until_the_version_is_available(status_server):
    server, url = status_server
    server.answers = [NOT_FOUND, _status("LOADING"), _status("AVAILABLE")]
    seconds = serving_check.wait_until_available(url, "7", 30, lambda: True, poll=0.01)
    assert server.count == 3 and 0 <= seconds < 30


def test_waiting_stops_at_a_failed_load_a_stopped_container_or_the_timeout(status_server):
    server, url = status_server
    server.answers = [_status("LOADING"), _status("END", "NOT_FOUND", "Could not find variable")]
    with pytest.raises(serving_check.CheckFailed, match="could not load version 7: Could not "):
        serving_check.wait_until_available(url, "7", 30, lambda: True, poll=0.01)
    server.answers = [NOT_FOUND]
    with pytest.raises(serving_check.CheckFailed, match="container stopped .*HTTP 404: Could"):
        serving_check.wait_until_available(url, "7", 30, lambda: False, poll=0.01)
    server.answers = [_status("LOADING")]
    with pytest.raises(serving_check.CheckFailed, match=r"not AVAILABLE after 0.2 s \(version "
                                                        r"7 is LOADING\)"):
        serving_check.wait_until_available(url, "7", 0.2, lambda: True, poll=0.01)
    with socket.socket() as free:  # nothing listens: refused until the timeout
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}/v1/models/wae"
    with pytest.raises(serving_check.CheckFailed, match="Cannot reach TensorFlow Serving"):
        serving_check.wait_until_available(closed, "7", 0.2, lambda: True, poll=0.01)


def test_the_comparison_allows_the_tolerance_relative_above_one():
    want = {"images": np.full([2, 3], 0.5, np.float32), "z": np.array([[100.0, -2.0]])}
    compare = serving_check.compare
    assert compare(want, {k: v.copy() for k, v in want.items()}, 1e-4) == dict(
        ok=True, max_abs_diff=0.0)
    close = {"images": want["images"] + 9e-5, "z": want["z"] + [[9e-3, 1.9e-4]]}
    assert compare(want, close, 1e-4)["ok"]  # 9e-3 <= 1e-4 * 100, 1.9e-4 <= 1e-4 * 2
    result = compare(want, {**close, "images": want["images"] + 2e-4}, 1e-4)
    assert not result["ok"] and result["max_abs_diff"] == pytest.approx(9e-3)
    nan = {**want, "images": np.full([2, 3], np.nan)}
    assert not compare(want, nan, 1e-4)["ok"]
    assert compare(want, {**want, "images": want["images"][:1]}, 1e-4) == dict(
        ok=False, problem="images: shape [1, 3], expected [2, 3]")
    assert compare(want, {"images": want["images"]}, 1e-4) == dict(
        ok=False, problem="outputs ['images'], expected ['images', 'z']")


def _check(docker: str, export: str, capsys, timeout: float = 120) -> tuple:
    code = serving_check.main([f"--saved_model={os.path.dirname(export)}", f"--docker={docker}",
                               f"--timeout={timeout}"])
    return code, json.loads(capsys.readouterr().out)


def _port_closes(url: str, seconds: float = 10.0) -> bool:
    """Whether nothing listens at the URL's port within `seconds` (a killed process's sockets
    close as it exits)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) != 0:
                return True
        time.sleep(0.1)
    return False


def test_a_server_that_never_serves_fails_with_its_log_and_is_removed(fake_docker, exports,
                                                                      monkeypatch, capsys):
    docker, calls = fake_docker
    monkeypatch.setenv("FAKE_DOCKER_SERVE", "nothing")
    code, summary = _check(docker, exports[0], capsys)
    assert code == 1 and not summary["ok"] and summary["container_removed"]
    assert summary["error"].startswith("the container stopped before version 7 was AVAILABLE")
    assert summary["server_log"] == ["the fake TF Serving's log"]
    assert calls()[-1] == ["rm", "-f", summary["container"]]


@pytest.mark.slow
def test_the_export_served_agrees_over_rest_and_grpc_and_the_container_is_removed(
        fake_docker, exports, capsys):
    docker, calls = fake_docker
    code, summary = _check(docker, exports[0], capsys)
    assert code == 0 and summary["ok"], json.dumps(summary)
    assert (summary["export"], summary["version"]) == (exports[0], "7")
    signatures = ["decode", "encode", "reconstruct", "sample", "serving_default"]
    assert [(row["signature"], row["api"]) for row in summary["checks"]] == [
        (s, api) for s in signatures for api in ("rest", "grpc")] + [
        ("reconstruct", "rest: wae-reconstruct's client")]
    assert all(row["ok"] and row["max_abs_diff"] <= 1e-6 for row in summary["checks"])
    run = next(call for call in calls() if call[0] == "run")
    assert f"{exports[0]}:/models/wae/7:ro" in run and run[-1] == serving_check.IMAGE
    assert calls()[-1] == ["rm", "-f", summary["container"]] and summary["container_removed"]
    assert _port_closes(summary["rest"])


@pytest.mark.slow
def test_another_model_served_is_found_out(fake_docker, exports, monkeypatch, capsys):
    docker, calls = fake_docker
    monkeypatch.setenv("FAKE_DOCKER_SERVE", exports[1])  # same shapes, other weights
    code, summary = _check(docker, exports[0], capsys)
    assert code == 1 and not summary["ok"]
    failed = {row["signature"] for row in summary["checks"] if not row["ok"]}
    assert failed == {"decode", "encode", "reconstruct", "sample", "serving_default"}
    assert all(row["max_abs_diff"] > 1e-4 for row in summary["checks"] if not row["ok"])
    assert calls()[-1] == ["rm", "-f", summary["container"]] and summary["container_removed"]


@pytest.mark.slow
def test_sigterm_while_waiting_removes_the_container_and_exits_143(fake_docker, exports):
    docker, calls = fake_docker
    env = dict(os.environ, FAKE_DOCKER_SERVE="sleep")
    process = subprocess.Popen(
        [sys.executable, "-m", "wae_tf.tools.serving_check", f"--saved_model={exports[0]}",
         f"--docker={docker}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(call[0] == "inspect" for call in calls()):  # waiting for AVAILABLE
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"not waiting for the server: {process.communicate()}")
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "stopped: SIGTERM; no container was left running"
    name = next(call for call in calls() if call[0] == "run")[3]  # run -d --name NAME
    assert calls()[-1] == ["rm", "-f", name] and out == ""
