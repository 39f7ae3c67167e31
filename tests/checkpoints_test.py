"""Faults around checkpoints: corrupt or half-written ones, SIGTERM, chief-only writing."""

import glob
import logging
import os
import re
import shutil
import signal

import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management

from tests.conftest import make_images, tiny_config
from wae_tf import checkpoints
from wae_tf import cli
from wae_tf import cluster
from wae_tf import errors
from wae_tf import fileio
from wae_tf import loop
from wae_tf import training
from wae_tf.errors import ConfigError

CONFIG = tiny_config(train_steps=4, checkpoint_every=2)


def _sigterm_at_step(kill_step):
    """A loop._check_finite that also sends SIGTERM to this process after `kill_step`."""
    check_finite = loop._check_finite  # pylint: disable=protected-access

    def check_then_kill(metrics, step, manager):
        check_finite(metrics, step, manager)
        if step == kill_step:
            os.kill(os.getpid(), signal.SIGTERM)
    return check_then_kill


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory):
    """A run of 100 steps sent SIGTERM at step 5: checkpoints 2, 4 and (saved on SIGTERM) 5."""
    workdir = str(tmp_path_factory.mktemp("run"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "_check_finite", _sigterm_at_step(5))
        with pytest.raises(errors.Preempted) as stopped:
            loop.train_and_evaluate(CONFIG.replace(train_steps=100), workdir,
                                    data_override=(make_images(32), make_images(8)))
    return workdir, str(stopped.value)


def _copy(workdir, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return os.path.join(copy, "checkpoints")


def _restore(directory):
    """Restore into a fresh state; returns (restored path, step)."""
    state = training.create_state(CONFIG, (28, 28, 1), steps_per_epoch=4, num_epochs=1)
    manager = tf.train.CheckpointManager(state.checkpoint(), directory, max_to_keep=3)
    return checkpoints.restore_latest(manager), int(state.step.numpy())


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 64)


def _delete(path):
    os.remove(path)


@pytest.mark.parametrize("damage,pattern", [
    (_truncate, "ckpt-5.data-*"), (_flip_bytes, "ckpt-5.data-*"), (_truncate, "ckpt-5.index"),
    (_delete, "ckpt-5.index")], ids=["truncated-data", "flipped-data", "truncated-index",
                                     "missing-index"])
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(
        preempted_run, tmp_path, caplog, damage, pattern):
    directory = _copy(preempted_run[0], tmp_path)
    damage(glob.glob(os.path.join(directory, pattern))[0])
    with caplog.at_level(logging.ERROR):
        path, step = _restore(directory)
    assert path.endswith("ckpt-4") and step == 4
    assert "ckpt-5 is unreadable" in caplog.text


def test_no_readable_checkpoint_is_a_user_error(preempted_run, tmp_path):
    directory = _copy(preempted_run[0], tmp_path)
    for path in glob.glob(os.path.join(directory, "ckpt-*.index")):
        _truncate(path)
    with pytest.raises(ConfigError, match="could be read"):
        _restore(directory)


def test_a_save_interrupted_before_its_state_file_keeps_the_last_good_one(
        preempted_run, tmp_path, monkeypatch):
    """CheckpointManager writes the `checkpoint` state file last: a kill before it is harmless."""
    directory = _copy(preempted_run[0], tmp_path)
    state = training.create_state(CONFIG, (28, 28, 1), steps_per_epoch=4, num_epochs=1)
    manager = tf.train.CheckpointManager(state.checkpoint(), directory, max_to_keep=3)
    checkpoints.restore_latest(manager)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the state file was written")
    monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", killed)
    with pytest.raises(KeyboardInterrupt):
        manager.save(checkpoint_number=6)
    assert glob.glob(os.path.join(directory, "ckpt-6.index"))  # the data is there, unlisted
    monkeypatch.undo()
    assert _restore(directory) == (os.path.join(directory, "ckpt-5"), 5)


def test_sigterm_saves_a_checkpoint_and_stops(preempted_run):
    workdir, message = preempted_run
    assert re.match(r"SIGTERM at step 5: saved .*ckpt-5; rerun", message), message
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is uninstalled
    assert _restore(os.path.join(workdir, "checkpoints")) == (
        os.path.join(workdir, "checkpoints", "ckpt-5"), 5)
    assert cli.run_reporting_user_errors(_raise, errors.Preempted("x")) == 143


def _raise(error):
    raise error


def test_json_files_are_replaced_atomically(tmp_path):
    path = str(tmp_path / "results.json")
    fileio.write_json(path, {"a": 1})
    fileio.write_json(path, {"a": 2})
    assert fileio.read_json(path) == {"a": 2}
    # A write that fails half way (json writes '{"a": 1, "b": ' before it meets the object)
    # leaves the previous file whole, and no temporary file behind.
    with pytest.raises(TypeError):
        fileio.write_json(path, {"a": 1, "b": object()})
    assert fileio.read_json(path) == {"a": 2}
    assert os.listdir(tmp_path) == ["results.json"]


class _FakeResolver:
    def __init__(self, task_type, task_id):
        self.task_type, self.task_id = task_type, task_id

    def cluster_spec(self):
        return tf.train.ClusterSpec({"worker": ["a:1", "b:2"]})


class _FakeStrategy:
    def __init__(self, task_id):
        self.cluster_resolver = _FakeResolver("worker", task_id)


def test_only_the_chief_writes_where_users_read(tmp_path):
    chief, other = _FakeStrategy(0), _FakeStrategy(1)
    assert cluster.is_chief(chief) and not cluster.is_chief(other)
    base = str(tmp_path / "checkpoints")
    assert cluster.write_dir(base, chief) == base
    worker_dir = cluster.write_dir(base, other)
    assert worker_dir == os.path.join(base, "worker_tmp", "worker_1")
    os.makedirs(worker_dir)
    cluster.cleanup_worker_dirs([base], other)
    assert os.listdir(base) == []
