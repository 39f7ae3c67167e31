"""Two `python -m wae_tf.train --strategy=multi_worker` processes on 127.0.0.1 train like two
replicas in one process, from data in memory and from files each worker streams its share of;
a bad TF_CONFIG is one line, the wait for peers is bounded and stopped by SIGTERM/SIGINT, a
workdir in use stops every worker through the chief's lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, make_idx_dir, mirrored_strategy
from tests.folders_test import _image, _write
from wae_tf import data, loop
from wae_tf.config import Config
from wae_tf.errors import ConfigError
from wae_tf.runtime import cluster, lock
from wae_tf.tools import faults

FLAGS = dict(width_divisor=32, z_dim=4, batch_size=8, train_steps=3, checkpoint_every=2,
             log_every=1, image_every=1000, seed=3, deterministic=True)
TIMEOUT_S = 300


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch_workers(workdir, data_flags, log_dir):
    """Start the two workers of a TF_CONFIG cluster; returns [(process, log path)]."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    args = [f"--{k}={v}" for k, v in {**FLAGS, **data_flags}.items()]
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = os.path.join(log_dir, f"worker{index}.log")
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "wae_tf.train", *args, "--strategy=multi_worker",
                 f"--workdir={workdir}"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        workers.append((process, log))
    return workers


def _tail(path, chars=3000):
    with open(path) as f:
        return f.read()[-chars:]


def _make_data(kind, data_dir):
    """The data flags of one kind of input: IDX files held in memory, or a folder of PNG
    files streamed (each worker decodes only the rows of its replica)."""
    if kind == "memory":
        os.makedirs(data_dir)
        make_idx_dir(data_dir, num_train=32, num_test=8)
        return {"data_dir": data_dir}
    for split, count in (("train", 32), ("test", 8)):
        for i in range(count):
            _write(os.path.join(data_dir, split, f"{i}.png"), _image(i, (30, 30, 1)))
    return {"dataset": "folder", "data_dir": data_dir, "image_size": 28, "in_memory": "false"}


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["memory", "streamed"])
def test_two_workers_finish_and_match_a_single_process_run(tmp_path, kind):
    data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "run")
    data_flags = _make_data(kind, data_dir)
    config = Config(**FLAGS, **data_flags, export=False, strategy="default").validate()
    splits = (data.load_split(config.replace(in_memory="true"), "train"),
              data.load_split(config, "test"))
    workers = _launch_workers(workdir, data_flags, str(tmp_path))
    try:
        # Two replicas in one process: the same replica count, so the same BatchNorm formula
        # (Keras's all-reduced moments) as the two workers. Run while the workers run: they
        # spend much of their time waiting for each other.
        reference = loop.train_and_evaluate(config, str(tmp_path / "single"),
                                            strategy=mirrored_strategy(), data_override=splits)
        for process, log in workers:
            assert process.wait(timeout=TIMEOUT_S) == 0, _tail(log)
    finally:
        for process, _ in workers:
            faults.kill_if_running(process)
    assert "on 2 replica(s)" in _tail(workers[0][1], 100000)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["step"] == reference["step"] == 3
    for name in ("train_loss", "train_recon", "train_penalty", "test_recon_cost"):
        assert results[name] == pytest.approx(reference[name], rel=1e-4, abs=1e-5), name
    # Only the chief's files remain: checkpoints, summaries and the export.
    assert os.path.exists(os.path.join(workdir, "export", "3", "saved_model.pb"))
    assert sorted(os.listdir(os.path.join(workdir, "export"))) == ["3"]
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    assert "checkpoint" in names and "ckpt-3.index" in names and "worker_tmp" not in names
    assert len(os.listdir(os.path.join(workdir, "train"))) == 1  # one events file
    sessions = [n for n in os.listdir(workdir) if n.startswith("events.out.tfevents")]
    assert len(sessions) == 1 and f".{workers[0][0].pid}." in sessions[0]  # the chief's hparams


@pytest.mark.slow
def test_a_workdir_in_use_stops_every_worker_through_the_chief(tmp_path):
    """Only the chief takes the workdir's lock; when another run holds it (this process),
    every worker stops in one line instead of waiting for the chief."""
    data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "run")
    data_flags = _make_data("memory", data_dir)
    os.makedirs(workdir)
    with open(os.path.join(workdir, lock.LOCK_FILE), "w") as f:
        json.dump(lock.this_process(), f)
    workers = _launch_workers(workdir, data_flags, str(tmp_path))
    try:
        codes = [process.wait(timeout=TIMEOUT_S) for process, _ in workers]
    finally:
        for process, _ in workers:
            faults.kill_if_running(process)
    assert codes == [2, 2], [_tail(log) for _, log in workers]
    errors = [[line for line in _tail(log).splitlines() if line.startswith("error: ")]
              for _, log in workers]
    assert len(errors[0]) == 1 and f"in use by another run (pid {os.getpid()} " in errors[0][0]
    assert len(errors[1]) == 1 and "The chief refused to start" in errors[1][0]
    assert os.listdir(workdir) == [lock.LOCK_FILE]  # the holder's, untouched


# ----------------------------------------------------------- start-up: TF_CONFIG and the wait


@pytest.mark.parametrize("tf_config,message", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{bad", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG has no "cluster"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'TF_CONFIG has no "task"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG's task worker:3 is not in its cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "TF_CONFIG's task chief:0 is not in its cluster"),
])
def test_a_bad_tf_config_is_one_line_naming_it(tf_config, message):
    environ = {} if tf_config is None else {"TF_CONFIG": tf_config}
    with pytest.raises(ConfigError, match=message):
        cluster.read_tf_config(environ)


def test_multi_worker_without_tf_config_is_refused(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        cluster.create_strategy(Config(**FLAGS, strategy="multi_worker"))


def _cluster(ports):
    return {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": 0}}


def test_the_wait_for_peers_is_bounded_and_names_the_missing_tasks():
    ports = _free_ports(3)
    with socket.socket() as peer:  # worker 1 is up, worker 2 never starts
        peer.bind(("127.0.0.1", ports[1]))
        peer.listen(4)
        with pytest.raises(ConfigError, match=rf"TF_CONFIG's worker:2 \(127.0.0.1:{ports[2]}\) "
                                              r"did not start within --cluster_timeout=1 s"):
            cluster.wait_for_peers(_cluster(ports), timeout=1.0, poll=0.1)
        cluster.wait_for_peers(_cluster(ports[:2]), timeout=1.0, poll=0.1)  # all there: returns


def test_the_coordination_service_tolerates_slow_heartbeats():
    """Workers on busy cores count as dead only after HEARTBEAT_TIMEOUT_S, not TF's 10 s (in a
    fresh process: the service is configured once, before TF's context starts)."""
    code = ("from tensorflow.python.eager import context; from wae_tf.runtime import cluster; "
            f"cluster._configure_coordination({_cluster([1, 2])!r}); "
            "c = context.context().coordination_service; print(c.heartbeat_timeout_in_ms, "
            "c.service_leader, c.coordinated_job_list[0].num_tasks)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True, timeout=TIMEOUT_S).stdout.split()
    assert out == [str(cluster.HEARTBEAT_TIMEOUT_S * 1000), "/job:worker/replica:0/task:0", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_a_worker_waiting_for_its_peer(tmp_path, signum, code):
    """The peer never starts: SIGTERM/SIGINT stop the wait at once, in one line."""
    log = str(tmp_path / "worker.log")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(_cluster(_free_ports(2))))
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "wae_tf.train", "--flagfile=flags/test_tiny.cfg",
             "--strategy=multi_worker", "--cluster_timeout=120", f"--workdir={tmp_path / 'run'}"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while "Waiting for worker:1" not in _tail(log) and time.time() < deadline:
            assert process.poll() is None, _tail(log)
            time.sleep(0.2)
        process.send_signal(signum)
        assert process.wait(timeout=30) == code, _tail(log)
    finally:
        faults.kill_if_running(process)
    text = _tail(log)
    assert "Traceback" not in text and "while waiting for the cluster" in text, text
    assert not os.path.exists(tmp_path / "run")
