"""The run lock: held and released, released on an exception, a live holder refused in one line
naming it, stale locks (dead pid, or a pid reused by a later process) taken over, holders on
other hosts never judged stale, a directory it created removed again when left empty."""

import json
import os
import socket
import subprocess
import sys

import pytest

from wae_tf.errors import ConfigError
from wae_tf.runtime import lock


def _holder(pid, **overrides):
    holder = dict(pid=pid, host=socket.gethostname(), process_start=lock._process_start(pid),  # pylint: disable=protected-access
                  since="2030-01-01 00:00:00 UTC", token="theirs")
    return {**holder, **overrides}


def _write_lock(directory, holder):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, lock.LOCK_FILE), "w") as f:
        json.dump(holder, f)


def _read_lock(directory):
    with open(os.path.join(directory, lock.LOCK_FILE)) as f:
        return json.load(f)


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_held_while_entered_and_released_on_exit(tmp_path):
    directory = str(tmp_path / "run")
    with lock.RunLock(directory) as held:
        found = _read_lock(directory)
        assert found["pid"] == os.getpid() and found["host"] == socket.gethostname()
        assert found["token"] == held.holder["token"] and found["since"]
        assert not lock.is_stale(found)
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {os.getpid()} on "):
            lock.RunLock(directory).acquire()  # a second holder, even in the same process
    assert os.listdir(tmp_path) == []  # the lock file gone, the directory it made too
    with lock.RunLock(directory):  # free again
        pass


def test_released_on_an_exception(tmp_path):
    with pytest.raises(KeyError):
        with lock.RunLock(str(tmp_path)):
            raise KeyError("boom")
    assert not os.path.exists(tmp_path / lock.LOCK_FILE)


def test_a_live_holder_is_refused_in_one_line_and_its_lock_kept(tmp_path, live_process):
    holder = _holder(live_process)
    _write_lock(str(tmp_path), holder)
    with pytest.raises(ConfigError) as refused:
        lock.RunLock(str(tmp_path)).acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert (f"is in use by another run (pid {live_process} on {socket.gethostname()} since "
            "2030-01-01 00:00:00 UTC") in message
    assert "if that process is gone, delete the lock file" in message
    assert _read_lock(str(tmp_path)) == holder


@pytest.mark.parametrize("stale", ["dead pid", "pid reused"])
def test_a_stale_lock_of_this_host_is_taken_over(tmp_path, stale, caplog):
    # A reused pid: alive (this process) but started at another time than the lock says.
    holder = (_holder(_dead_pid()) if stale == "dead pid"
              else _holder(os.getpid(), process_start="1"))
    _write_lock(str(tmp_path), holder)
    assert lock.is_stale(holder)
    with lock.RunLock(str(tmp_path)) as held:
        assert _read_lock(str(tmp_path))["token"] == held.holder["token"]
    assert "Took over the stale lock" in caplog.text
    assert os.listdir(tmp_path) == []  # no stale copy left aside


def test_a_holder_on_another_host_is_never_stale(tmp_path):
    holder = _holder(_dead_pid(), host="other-host")
    assert not lock.is_stale(holder)
    _write_lock(str(tmp_path), holder)
    with pytest.raises(ConfigError, match="pid .* on other-host since"):
        lock.RunLock(str(tmp_path)).acquire()


def test_a_file_that_is_not_a_lock_is_refused(tmp_path):
    with open(tmp_path / lock.LOCK_FILE, "w") as f:
        f.write("garbage")
    with pytest.raises(ConfigError, match="is not a run lock wae_tf wrote"):
        lock.RunLock(str(tmp_path)).acquire()


def test_a_lock_replaced_by_another_holder_is_not_removed_on_release(tmp_path, live_process):
    held = lock.RunLock(str(tmp_path)).acquire()
    _write_lock(str(tmp_path), _holder(live_process))  # e.g. deleted by hand, then retaken
    held.release()
    assert _read_lock(str(tmp_path))["pid"] == live_process
