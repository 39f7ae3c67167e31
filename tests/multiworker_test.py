"""Two `python -m wae_tf.train --strategy=multi_worker` processes on 127.0.0.1 train like two
replicas in one process, from data in memory and from files each worker streams its share of."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, make_idx_dir, mirrored_strategy
from tests.folders_test import _image, _write
from wae_tf import data
from wae_tf import loop
from wae_tf.config import Config

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


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["memory", "streamed"])
def test_two_workers_finish_and_match_a_single_process_run(tmp_path, kind):
    data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "run")
    data_flags = _make_data(kind, data_dir)
    config = Config(**FLAGS, **data_flags, export=False, strategy="default").validate()
    splits = (data.load_split(config.replace(in_memory="true"), "train"),
              data.load_split(config, "test"))
    # Two replicas in one process: the same replica count, so the same BatchNorm formula
    # (Keras's all-reduced moments) as the two workers.
    reference = loop.train_and_evaluate(config, str(tmp_path / "single"),
                                            strategy=mirrored_strategy(), data_override=splits)
    workers = _launch_workers(workdir, data_flags, str(tmp_path))
    try:
        for process, log in workers:
            assert process.wait(timeout=TIMEOUT_S) == 0, _tail(log)
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
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
