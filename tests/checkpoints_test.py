"""Faults around checkpoints: corrupt or half-written ones, a lost state file, SIGTERM and SIGINT
(also inside a Keras call, and during the final export), a finished run rerun, refused resumes,
a lost config.json, unwritable workdirs, chief-only writing."""

import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management

from tests.conftest import REPO, make_idx_dir, make_images, tiny_config
from wae_tf import cli, errors, fileio, loop
from wae_tf import config as config_lib
from wae_tf.errors import ConfigError
from wae_tf.model import step as step_lib
from wae_tf.runtime import checkpoints, cluster
from wae_tf.serving import saved_model
from wae_tf.tools import faults

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
    state = step_lib.create_state(CONFIG, (28, 28, 1), steps_per_epoch=4, num_epochs=1)
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
@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(
        preempted_run, tmp_path, caplog, damage, pattern):
    directory = _copy(preempted_run[0], tmp_path)
    damage(glob.glob(os.path.join(directory, pattern))[0])
    with caplog.at_level(logging.ERROR):
        path, step = _restore(directory)
    assert path.endswith("ckpt-4") and step == 4
    assert "ckpt-5 is unreadable" in caplog.text


@pytest.mark.slow
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
    state = step_lib.create_state(CONFIG, (28, 28, 1), steps_per_epoch=4, num_epochs=1)
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


# ----------- never lose a run: state files, signals, reruns, refused resumes, workdirs, a full disk


def _garble(path):
    with open(path, "w") as f:
        f.write("model_checkpoint_path: \x00\x01 not a proto {")


@pytest.mark.parametrize("damage", [_delete, lambda p: open(p, "w").close(), _garble],
                         ids=["deleted", "empty", "garbled"])
def test_a_lost_state_file_is_rebuilt_from_the_index_files(preempted_run, tmp_path, damage):
    directory = _copy(preempted_run[0], tmp_path)
    damage(os.path.join(directory, "checkpoint"))
    state = step_lib.create_state(CONFIG, (28, 28, 1), steps_per_epoch=4, num_epochs=1)
    # What every worker does: restore from the chief's directory, whatever its state file.
    assert checkpoints.restore_newest_readable(state.checkpoint(), directory).endswith("ckpt-5")
    assert int(state.step.numpy()) == 5
    manager = checkpoints.create_manager(state.checkpoint(), os.path.dirname(directory), CONFIG,
                                         tf.distribute.get_strategy())  # repairs the state file
    assert manager.latest_checkpoint == os.path.join(directory, "ckpt-5")
    assert len(manager.checkpoints) == 3  # ckpt-2, 4, 5: the manager still rotates them


@pytest.mark.slow
def test_training_resumes_over_a_deleted_state_file_instead_of_restarting(preempted_run,
                                                                          tmp_path, caplog):
    directory = _copy(preempted_run[0], tmp_path)
    os.remove(os.path.join(directory, "checkpoint"))
    # On absl's logger itself: an earlier test may have lowered absl's verbosity.
    with caplog.at_level(logging.INFO, logger="absl"):
        results = loop.train_and_evaluate(CONFIG.replace(train_steps=6), os.path.dirname(directory),
                                          data_override=(make_images(32), make_images(8)))
    assert results["step"] == 6 and "from step 5 to 6" in caplog.text
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-6")


@pytest.fixture
def sigint_handled():
    """SIGINT as Python's default handler for the test: a shell that starts pytest as a
    background job (`nohup ... &`) leaves SIGINT ignored, which StopSignals keeps ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.usefixtures("sigint_handled")
def test_sigint_saves_a_checkpoint_and_stops_with_130(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        check_finite = loop._check_finite  # pylint: disable=protected-access

        def check_then_interrupt(metrics, step, manager):
            check_finite(metrics, step, manager)
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)
        patch.setattr(loop, "_check_finite", check_then_interrupt)
        with pytest.raises(errors.Preempted) as stopped:
            loop.train_and_evaluate(CONFIG.replace(train_steps=100), str(tmp_path),
                                    data_override=(make_images(32), make_images(8)))
    assert re.match(r"SIGINT at step 3: saved .*ckpt-3; rerun", str(stopped.value))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert cli.run_reporting_user_errors(_raise, stopped.value) == 130
    assert cli.run_reporting_user_errors(_raise, KeyboardInterrupt()) == 130


@pytest.mark.usefixtures("sigint_handled")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_training_stops_at_once(signum):
    with pytest.raises(errors.Preempted, match="before training") as stopped:
        with cluster.StopSignals():
            os.kill(os.getpid(), signum)
    assert stopped.value.signum == signum


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finished"))
    loop.train_and_evaluate(CONFIG, workdir, data_override=(make_images(32), make_images(8)))
    return workdir


@pytest.mark.slow
def test_the_last_checkpoint_is_saved_once(finished_run):
    reader = tf.train.load_checkpoint(os.path.join(finished_run, "checkpoints"))
    assert reader.get_tensor("save_counter/.ATTRIBUTES/VARIABLE_VALUE") == 2  # steps 2 and 4


@pytest.mark.slow
def test_rerunning_a_finished_run_rewrites_nothing(finished_run):
    path = os.path.join(finished_run, "results.json")
    before, mtime = fileio.read_json(path), os.path.getmtime(path)
    assert "train_loss" in before
    again = loop.train_and_evaluate(CONFIG, finished_run,
                                    data_override=(make_images(32), make_images(8)))
    assert again == before and os.path.getmtime(path) == mtime


def _run_with_checkpoint(workdir, config):
    """A workdir holding `config`'s record and a (fake) checkpoint beside it."""
    checkpoints.check_run_record(workdir, config, (28, 28, 1), write=True)
    open(os.path.join(workdir, "checkpoints", "ckpt-1.index"), "w").close()


@pytest.mark.parametrize("flag,value", [("lambda_reg", 5.0), ("recon", "l1"), ("seed", 1)])
def test_a_resume_that_changes_what_the_checkpoints_mean_is_refused(tmp_path, flag, value):
    workdir = str(tmp_path)
    _run_with_checkpoint(workdir, CONFIG)
    record = open(os.path.join(workdir, "config.json")).read()
    with pytest.raises(ConfigError, match=rf"--{flag}={value!r} \(the run's: .*another --workdir"):
        checkpoints.check_run_record(workdir, CONFIG.replace(**{flag: value}), (28, 28, 1), True)
    assert open(os.path.join(workdir, "config.json")).read() == record
    # The training length and how it runs and shows its progress may change.
    checkpoints.check_run_record(workdir, CONFIG.replace(train_steps=9, log_every=3,
                                                         progress="off"), (28, 28, 1), True)
    assert open(os.path.join(workdir, "config.json")).read() == record


def test_a_record_without_checkpoints_binds_nothing(tmp_path):
    """A start that failed after writing config.json does not lock the workdir."""
    workdir = str(tmp_path)
    checkpoints.check_run_record(workdir, CONFIG, (28, 28, 1), write=True)
    checkpoints.check_run_record(workdir, CONFIG.replace(z_dim=5), (28, 28, 1), write=True)
    assert fileio.read_json(os.path.join(workdir, "config.json"))["z_dim"] == 5


def _files(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)


def test_a_lost_config_json_is_recovered_and_still_refuses_other_flags(tmp_path):
    workdir = str(tmp_path)
    _run_with_checkpoint(workdir, CONFIG)
    path = os.path.join(workdir, "config.json")
    original = fileio.read_json(path)
    assert original["run_id"] and original["workdir"] == workdir
    os.remove(path)
    assert checkpoints.find_run_record(workdir) == original  # from checkpoints/run_record.json
    with pytest.raises(ConfigError, match=r"--lambda_reg=5.0 \(the run's: 10.0\), --seed=7 "):
        checkpoints.check_run_record(workdir, CONFIG.replace(lambda_reg=5.0, seed=7),
                                     (28, 28, 1), write=True)
    assert not os.path.exists(path)  # nothing written for a refused resume
    record = checkpoints.check_run_record(workdir, CONFIG.replace(train_steps=9), (28, 28, 1),
                                          write=True)
    assert fileio.read_json(path) == original  # restored as the run wrote it
    assert record["run_id"] == original["run_id"] and record["train_steps"] == 9


def test_a_lost_config_json_without_a_copy_is_refused_before_writing_anything(tmp_path):
    workdir = str(tmp_path)
    os.makedirs(os.path.join(workdir, "checkpoints"))
    open(os.path.join(workdir, "checkpoints", "ckpt-1.index"), "w").close()  # an older run's
    for call in (lambda: checkpoints.find_run_record(workdir),
                 lambda: checkpoints.check_run_record(workdir, CONFIG, (28, 28, 1), True),
                 lambda: saved_model.restore_trained_models(workdir)):
        with pytest.raises(ConfigError, match=r"holds checkpoints but not config.json, .*"
                                              r"restore .*config.json from a backup"):
            call()
    assert _files(workdir) == ["checkpoints/ckpt-1.index"]
    # The run's own export keeps its record too.
    asset = os.path.join(workdir, "export", "1", checkpoints.EXPORT_RECORD)
    os.makedirs(os.path.dirname(asset))
    fileio.write_json(asset, config_lib.run_record(CONFIG, (28, 28, 1)))
    assert checkpoints.find_run_record(workdir)["lambda_reg"] == CONFIG.lambda_reg


def _write_version_then(signum):
    """A saved_model._write_version that sends `signum` to this process once it has written the
    temporary version (which is then never renamed into place)."""
    write = saved_model._write_version  # pylint: disable=protected-access

    def write_then_signal(directory, *args):
        write(directory, *args)
        os.kill(os.getpid(), signum)
    return write_then_signal


@pytest.mark.slow
def test_an_export_interrupted_by_sigterm_or_sigkill_is_made_by_the_rerun(tmp_path, monkeypatch):
    workdir, data = str(tmp_path / "run"), (make_images(32), make_images(8))
    config = CONFIG.replace(export=True)
    monkeypatch.setattr(saved_model, "_write_version", _write_version_then(signal.SIGTERM))
    with pytest.raises(errors.Preempted) as stopped:
        loop.train_and_evaluate(config, workdir, data_override=data)
    assert str(stopped.value) == ("SIGTERM after training, while testing and exporting "
                                  "(checkpoint 4 is saved); rerun the same command to finish.")
    assert stopped.value.signum == signal.SIGTERM
    export = os.path.join(workdir, "export")
    assert os.listdir(export) == []  # the temporary version removed
    assert not os.path.exists(os.path.join(workdir, "run.lock"))
    results = fileio.read_json(os.path.join(workdir, "results.json"))
    assert loop.missing_outputs(config, workdir, 4) == ["export"]  # not finished
    monkeypatch.undo()
    # A SIGKILL mid-export leaves the temporary version.
    os.makedirs(os.path.join(export, ".tmp-4-0123456789ab", "variables"))
    assert loop.train_and_evaluate(config, workdir, data_override=data) == results
    assert os.listdir(export) == ["4"]
    assert os.path.exists(os.path.join(export, "4", "saved_model.pb"))
    assert fileio.read_json(os.path.join(workdir, "results.json")) == results  # train losses kept
    assert loop.missing_outputs(config, workdir, 4) == []
    mtime = os.path.getmtime(os.path.join(export, "4"))
    loop.train_and_evaluate(config, workdir, data_override=data)  # finished: nothing redone
    assert os.path.getmtime(os.path.join(export, "4")) == mtime


def _wait_for(predicate, process, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None and time.time() < deadline, "ended before the moment"
        time.sleep(0.01)


@pytest.mark.slow
def test_train_stopped_during_its_export_says_so_and_the_rerun_exports(tmp_path):
    """The command sent SIGTERM as soon as its export's temporary directory appears: exit 143
    and one line; the rerun (not taking results.json alone for done) exports."""
    data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "run")
    os.makedirs(data_dir)
    make_idx_dir(data_dir, num_train=16, num_test=8)
    command = [sys.executable, "-m", "wae_tf.train", "--width_divisor=32", "--z_dim=4",
               "--batch_size=8", "--train_steps=2", "--sampler_components=2",
               f"--data_dir={data_dir}", f"--workdir={workdir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    log = str(tmp_path / "train.log")
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        _wait_for(lambda: glob.glob(os.path.join(workdir, "export", ".tmp-*")), process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 143
    finally:
        faults.kill_if_running(process)
    text = open(log).read()
    assert "Traceback" not in text and "Exception encountered" not in text
    assert [line for line in text.splitlines() if line.startswith("stopped: ")] == [
        "stopped: SIGTERM after training, while testing and exporting (checkpoint 2 is saved); "
        "rerun the same command to finish."]
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert os.listdir(os.path.join(workdir, "export")) == ["2"]
    assert os.path.exists(os.path.join(workdir, "export", "2", "saved_model.pb"))


class _SignalInCall(keras.layers.Layer):
    """A layer whose call receives `signum`: Keras wraps what the call raises."""

    def __init__(self, signum):
        super().__init__()
        self.signum = signum

    def call(self, inputs):
        os.kill(os.getpid(), self.signum)
        return inputs


@pytest.mark.usefixtures("sigint_handled")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_inside_a_keras_call_stops_the_run_as_itself(signum):
    stop = cluster.StopSignals()
    with pytest.raises(errors.Preempted) as stopped:
        with stop:
            stop.when = "after training; rerun the same command to finish."
            _SignalInCall(signum)(tf.zeros([1, 2]))
    name = signal.Signals(signum).name
    assert str(stopped.value) == f"{name} after training; rerun the same command to finish."
    assert stopped.value.signum == signum
    assert cli.run_reporting_user_errors(_raise, stopped.value) == 128 + signum


@pytest.mark.usefixtures("sigint_handled")
def test_a_signal_a_library_swallows_still_stops_the_run():
    """TF's saving and AutoGraph catch Exception in places: a Preempted raised there and
    swallowed is still `received` (the loop stops before its next step) and leaves the block
    (the process exits 143 instead of finishing as if not signalled)."""
    stop = cluster.StopSignals()
    with pytest.raises(errors.Preempted) as stopped:
        with stop:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler raises here
            except Exception:  # noqa: BLE001 (as a library might)
                pass
            assert stop.received == signal.SIGTERM
    assert stopped.value.signum == signal.SIGTERM


def test_export_falls_back_past_a_corrupt_newest_checkpoint(preempted_run, tmp_path, caplog):
    directory = _copy(preempted_run[0], tmp_path)
    _truncate(glob.glob(os.path.join(directory, "ckpt-5.data-*"))[0])
    with caplog.at_level(logging.ERROR):
        run = saved_model.restore_trained_models(os.path.dirname(directory))  # export and evaluate
    assert run.step == 4 and run.checkpoint_path.endswith("ckpt-4")
    assert "ckpt-5 is unreadable" in caplog.text


def test_a_workdir_that_is_a_file_or_empty_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        fileio.check_writable_dir(str(path), "--workdir")
    with pytest.raises(ConfigError, match="--workdir is empty"):
        fileio.check_writable_dir("", "--workdir")


@contextlib.contextmanager
def _tmpfs(path, options):
    """A small tmpfs at `path` (root only); skips the test when it cannot be mounted."""
    os.makedirs(path)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def test_a_read_only_workdir_is_refused(tmp_path):
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as workdir:
        with pytest.raises(ConfigError, match="is not writable"):
            loop.train_and_evaluate(CONFIG, os.path.join(workdir, "run"),
                                    data_override=(make_images(32), make_images(8)))


@pytest.mark.slow
def test_a_full_disk_stops_with_the_last_checkpoint_intact_and_no_partial_files(tmp_path):
    # One checkpoint of the tiny network is ~0.4 MB: the second does not fit in 0.7 MB.
    with _tmpfs(tmp_path / "full", "size=700k") as workdir:
        with pytest.raises(ConfigError, match=r"Could not save checkpoint 2 .*space.* The last "
                                              r"saved checkpoint, .*ckpt-1, is intact"):
            loop.train_and_evaluate(CONFIG.replace(checkpoint_every=1, log_every=100), workdir,
                                    data_override=(make_images(32), make_images(8)))
        names = os.listdir(os.path.join(workdir, "checkpoints"))
        assert not [n for n in names if "_temp" in n or n.startswith("ckpt-2")], names
        assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-1")
