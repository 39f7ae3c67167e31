"""The run lock: one trainer per --workdir, held for the run's life in <workdir>/run.lock (pid,
host, start time), released on any exit; a lock left by a dead process on this host is stale."""

import json
import os
import socket
import time
import uuid

import tensorflow as tf
from absl import logging

from wae_tf import fileio
from wae_tf.errors import ConfigError

LOCK_FILE = "run.lock"


def _process_start(pid: int) -> str:
    """The kernel's start time of `pid` (clock ticks since boot), "" where /proc cannot tell.

    With the pid it names one process: a pid reused after a restart has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def this_process() -> dict:
    """What the lock file says about its holder."""
    pid = os.getpid()
    return dict(pid=pid, host=socket.gethostname(), process_start=_process_start(pid),
                since=time.strftime("%Y-%m-%d %H:%M:%S %Z"), token=uuid.uuid4().hex)


def is_stale(holder: dict) -> bool:
    """True when the holder was a process on this host that no longer runs (its pid is gone, or
    now belongs to a process started at another time). A holder on another host is never
    stale: this host cannot see its processes."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder.get("pid", -1))
    if pid <= 0 or not _alive(pid):
        return True
    start = holder.get("process_start", "")
    return bool(start) and start != _process_start(pid)


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
            f"{holder.get('since', '?')}")


def _create(path: str, text: str) -> bool:
    """Create `path` holding `text` unless it exists (atomically on a local file system, where
    a hard link fails if the name is taken); True if created."""
    tmp = fileio.temporary_sibling(path)
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    try:
        if "://" in path:  # gs:// and the like: no atomic create, the check is best effort
            if tf.io.gfile.exists(path):
                return False
            tf.io.gfile.rename(tmp, path, overwrite=False)
        else:
            os.link(tmp, path)
        return True
    except (FileExistsError, tf.errors.AlreadyExistsError):
        return False
    finally:
        fileio.remove_quietly(tmp)


def _read(path: str):
    """The lock's holder; {} if the file vanished; None if it is not a lock file's JSON."""
    try:
        with tf.io.gfile.GFile(path) as f:
            holder = json.load(f)
    except tf.errors.NotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


class RunLock:
    """`with RunLock(directory):` holds <directory>/run.lock, or raises ConfigError naming the
    live holder. Creates `directory` if needed, and removes it again on release if it created
    it and it is still empty. A stale lock (is_stale) is taken over with a warning."""

    def __init__(self, directory: str, flag: str = "--workdir"):
        self.directory, self.flag = directory, flag
        self.path = os.path.join(directory, LOCK_FILE)
        self.holder, self._created_dir = None, False

    def acquire(self) -> "RunLock":
        self._created_dir = not tf.io.gfile.isdir(self.directory)
        fileio.check_writable_dir(self.directory, self.flag)
        me = this_process()
        for _ in range(3):  # a stale lock taken over, or one that vanished meanwhile
            if _create(self.path, json.dumps(me, indent=2)):
                self.holder = me
                return self
            found = _read(self.path)
            if found is None:
                self._release_dir()
                raise ConfigError(f"{self.path} is not a run lock wae_tf wrote: if no run uses "
                                  f"{self.flag}={self.directory}, delete it and rerun.")
            if found and not is_stale(found):
                self._release_dir()
                raise ConfigError(
                    f"{self.flag}={self.directory} is in use by another run ({describe(found)}, "
                    f"{self.path}): wait for it to end or stop it, or use another {self.flag}; "
                    "if that process is gone, delete the lock file.")
            if found:
                self._take_over(found)
        self._release_dir()
        raise ConfigError(f"Could not take {self.path}: other processes keep replacing it.")

    def _take_over(self, stale: dict) -> None:
        """Move the stale lock aside; put it back if another process replaced it meanwhile."""
        aside = fileio.temporary_sibling(self.path) + ".stale"
        try:
            tf.io.gfile.rename(self.path, aside)
        except tf.errors.NotFoundError:
            return
        if _read(aside) != stale:  # a live process's fresh lock: restore it (unless retaken)
            _create(self.path, tf.io.gfile.GFile(aside).read())
        else:
            logging.warning("Took over the stale lock %s of %s, which no longer runs.",
                            self.path, describe(stale))
        fileio.remove_quietly(aside)

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        if self.holder is not None:
            found = _read(self.path)
            if found and found.get("token") == self.holder["token"]:
                fileio.remove_quietly(self.path)
            self.holder = None
        self._release_dir()

    def _release_dir(self) -> None:
        if self._created_dir:
            fileio.remove_if_empty(self.directory)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
