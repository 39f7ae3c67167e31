"""Files through tf.io.gfile, so gs:// and other TF file systems work wherever a path is taken:
JSON read and written atomically, directories replaced atomically, fresh temporary names."""

import json
import os
import uuid

import tensorflow as tf

from wae_tf.errors import ConfigError, error_summary


def write_json(path: str, value: dict) -> None:
    """Write JSON to a temporary file renamed over `path`: a kill never leaves half a file."""
    write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def write_bytes(path: str, contents: bytes) -> None:
    """Write `contents` to a temporary file renamed over `path`, removed if anything fails."""
    tmp = temporary_sibling(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(contents)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except (tf.errors.OpError, OSError) as error:  # full disk, read-only, not a directory
        raise ConfigError(f"Could not write {path} ({error_summary(error)}).") from None
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def check_writable_dir(directory: str, flag: str) -> None:
    """Create `directory` if needed and check that a file can be written in it; ConfigError
    naming `flag` otherwise (empty, a regular file, read-only or full)."""
    if not directory:
        raise ConfigError(f"{flag} is empty: name a directory.")
    if tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(directory):
        raise ConfigError(f"{flag}={directory} is a file, not a directory: name another one.")
    try:
        tf.io.gfile.makedirs(directory)
        probe = temporary_sibling(os.path.join(directory, "write-check"))
        with tf.io.gfile.GFile(probe, "wb") as f:
            f.write(b"x")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as error:
        raise ConfigError(f"{flag}={directory} is not writable ({error_summary(error)}): check its "
                          "permissions and free space, or name another directory.") from None


def remove_quietly(path: str) -> None:
    """Delete a file or directory tree if it exists, ignoring errors (cleanup after a failure)."""
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except (tf.errors.OpError, OSError):
        pass


def read_json(path: str) -> dict:
    """A JSON file, or ConfigError naming it (missing or corrupt)."""
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{path} not found: expected a training run's directory.")
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is corrupt ({error}).") from error


def temporary_sibling(path: str) -> str:
    """A fresh name beside `path` (same directory, so a rename stays on one file system)."""
    directory, name = os.path.split(path.rstrip("/"))
    return os.path.join(directory, f".tmp-{name}-{uuid.uuid4().hex[:12]}")


def replace_directory(tmp_dir: str, final_dir: str) -> None:
    """Move a fully written `tmp_dir` to `final_dir`, replacing any old one only at the end."""
    old = None
    if tf.io.gfile.exists(final_dir):
        old = temporary_sibling(final_dir) + ".old"
        tf.io.gfile.rename(final_dir, old)
    tf.io.gfile.rename(tmp_dir, final_dir)
    if old:
        tf.io.gfile.rmtree(old)


def remove_if_empty(directory: str) -> None:
    """Delete `directory` if it exists and holds nothing."""
    if tf.io.gfile.isdir(directory) and not tf.io.gfile.listdir(directory):
        tf.io.gfile.rmtree(directory)


def cache_root() -> str:
    """wae_tf's cache directory: $XDG_CACHE_HOME/wae_tf, ~/.cache/wae_tf without it."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "wae_tf")
