"""Checkpoint managers, resuming past unreadable checkpoints or a lost `checkpoint` state file,
saving without leaving partial files, and the run's record (config.json, with copies) that a
resume must match."""

import dataclasses
import os
import re

import tensorflow as tf
from absl import logging
from tensorflow.python.checkpoint import checkpoint_management

from wae_tf import config as config_lib
from wae_tf import fileio
from wae_tf.config import Config
from wae_tf.errors import ConfigError, error_summary
from wae_tf.runtime import cluster

RECORD_FILE = "config.json"
# Copies of the record that survive a lost config.json: beside the checkpoints, in each export.
RECORD_COPY = os.path.join("checkpoints", "run_record.json")
EXPORT_RECORD = os.path.join("assets.extra", "wae_config.json")
STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of checkpoints
_INDEX_RE = re.compile(r"^ckpt-(\d+)\.index$")
# Truncated files raise IndexError ("Read less bytes than requested") or DataLossError.
_UNREADABLE = (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError)


def create_manager(checkpoint: tf.train.Checkpoint, workdir: str, config: Config,
                   strategy) -> tf.train.CheckpointManager:
    """The manager of this worker's checkpoint directory, its state file repaired first."""
    directory = cluster.write_dir(os.path.join(workdir, "checkpoints"), strategy)
    repair_state_file(directory)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=config.keep_checkpoints)


def _indexed_checkpoints(directory: str) -> list:
    """Paths of the `ckpt-N` whose `.index` file exists, by increasing N."""
    if not tf.io.gfile.isdir(directory):
        return []
    steps = sorted(int(m.group(1)) for m in map(_INDEX_RE.match, tf.io.gfile.listdir(directory))
                   if m)
    return [os.path.join(directory, f"ckpt-{n}") for n in steps]


def _read_state(directory: str):
    """The state file's checkpoint paths (oldest first); None if it is missing or unreadable."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except ValueError:  # an empty state file: "Invalid checkpoint state loaded from ..."
        return None
    # A garbled file is logged by TF and returns None, like a missing one.
    return list(state.all_model_checkpoint_paths) if state else None


def list_checkpoints(directory: str) -> list:
    """The checkpoints of `directory`, oldest first: those its state file lists or, when the
    state file is missing, empty or garbled, every `ckpt-N` with an `.index` file."""
    listed = _read_state(directory)
    if listed is not None:
        return listed
    found = _indexed_checkpoints(directory)
    if found:
        logging.warning("%s has no readable '%s' state file; recovering from the %d ckpt-*.index "
                        "files (newest %s).", directory, STATE_FILE, len(found), found[-1])
    return found


def repair_state_file(directory: str) -> None:
    """Rewrite a missing, empty or garbled state file from the `ckpt-N.index` files, so that
    a CheckpointManager neither fails on it nor restarts numbering over existing checkpoints."""
    if _read_state(directory) is not None:
        return
    found = _indexed_checkpoints(directory)
    if found:
        # Their files' times: the manager then keeps rotating them (it deletes only checkpoints
        # newer than last_preserved_timestamp).
        times = [tf.io.gfile.stat(path + ".index").mtime_nsec / 1e9 for path in found]
        checkpoint_management.update_checkpoint_state_internal(
            directory, found[-1], all_model_checkpoint_paths=found, save_relative_paths=True,
            all_model_checkpoint_timestamps=times, last_preserved_timestamp=min(times) - 1)
        logging.warning("Rewrote %s from its ckpt-*.index files.",
                        os.path.join(directory, STATE_FILE))


def restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str,
                            partial: bool = False) -> str:
    """Restore the newest readable checkpoint of `directory`, reporting each unreadable one.

    `partial`: the checkpoint may hold more than `checkpoint` tracks (export, evaluation).
    Returns the restored path, or "" when there is none; ConfigError when none can be read.
    """
    paths = list_checkpoints(directory)
    for path in reversed(paths):
        try:
            status = checkpoint.restore(path)
            (status.expect_partial() if partial else status).assert_existing_objects_matched()
        except _UNREADABLE as error:
            logging.error("Checkpoint %s is unreadable (%s); trying the previous one.", path,
                          str(error).splitlines()[0] if str(error) else type(error).__name__)
            continue
        logging.info("Restored %s.", path)
        return path
    if paths:
        raise ConfigError(f"No checkpoint in {directory} could be read; move the directory away "
                          "to start afresh.")
    return ""


def restore_latest(manager: tf.train.CheckpointManager, directory: str = "") -> str:
    """Restore the manager's newest readable checkpoint (restore_newest_readable).

    `directory` (default: the manager's) lets every worker restore from the chief's checkpoints.
    """
    return restore_newest_readable(manager.checkpoint, directory or manager.directory)


def checkpoint_step(path: str) -> int:
    """N of a `.../ckpt-N` path; -1 for "" (no checkpoint)."""
    match = re.search(r"ckpt-(\d+)$", path or "")
    return int(match.group(1)) if match else -1


def save(manager: tf.train.CheckpointManager, step: int) -> str:
    """Save checkpoint `step`, unless the newest one already is it; returns its path.

    A failed write (full disk, read-only file system) removes its partial files (TF's
    `ckpt-N_temp/` and `ckpt-N.*`, never listed in the state file) and becomes a ConfigError
    naming the intact checkpoint a rerun resumes from.
    """
    if checkpoint_step(manager.latest_checkpoint) == step:
        return manager.latest_checkpoint
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as error:
        _remove_partial_checkpoint(manager.directory, step)
        raise ConfigError(
            f"Could not save checkpoint {step} in {manager.directory} "
            f"({error_summary(error)}). The last saved checkpoint, "
            f"{manager.latest_checkpoint or '(none)'}, is intact: free space or fix permissions, "
            "then rerun the same command to resume from it.") from None


def _remove_partial_checkpoint(directory: str, step: int) -> None:
    """Delete what a failed save of `ckpt-<step>` left behind (best effort)."""
    for pattern in (f"ckpt-{step}_temp*", f"ckpt-{step}.*"):
        for path in tf.io.gfile.glob(os.path.join(directory, pattern)):
            try:
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
            except tf.errors.OpError as error:
                logging.error("Could not remove %s: %s", path, error)


def has_checkpoints(workdir: str) -> bool:
    return bool(list_checkpoints(os.path.join(workdir, "checkpoints")))


def _record_copies(workdir: str) -> list:
    """Where else a run's record is kept: beside its checkpoints, then in its exports (default
    place, newest version first)."""
    export = os.path.join(workdir, "export")
    versions = sorted((int(n.rstrip("/")) for n in tf.io.gfile.listdir(export)
                       if n.rstrip("/").isdigit()), reverse=True) \
        if tf.io.gfile.isdir(export) else []
    return [os.path.join(workdir, RECORD_COPY)] + [
        os.path.join(export, str(v), EXPORT_RECORD) for v in versions]


def find_run_record(workdir: str):
    """The record binding `workdir` (a dict), or None for a workdir without one and without
    checkpoints. A lost config.json is recovered from a copy (_record_copies); ConfigError
    when checkpoints exist and no copy is left: never guess the flags they were trained with,
    and for a record that is not one (config_lib.check_record: wrong types, no image_shape)."""
    path = os.path.join(workdir, RECORD_FILE)
    if tf.io.gfile.exists(path):
        return config_lib.check_record(fileio.read_json(path), path)
    if not has_checkpoints(workdir):
        return None
    for copy in _record_copies(workdir):
        if tf.io.gfile.exists(copy):
            logging.warning("%s is missing: the run's record is read from %s.", path, copy)
            return config_lib.check_record(fileio.read_json(copy), copy)
    raise ConfigError(
        f"{workdir} holds checkpoints but not {RECORD_FILE}, the record of the flags they were "
        f"trained with, nor a copy of it: restore {path} from a backup (or copy the run's "
        f"export's {EXPORT_RECORD} there), or start a new run with another --workdir.")


def check_run_record(workdir: str, config: Config, image_shape, write: bool) -> dict:
    """Refuse to resume a workdir whose checkpoints were made with other flags or data; return
    the run's record (config_lib.run_record of `config` with the run's identity).

    Only config_lib.RESUMABLE_FIELDS (training length, logging, saving, how to run) may differ
    from the record (find_run_record: config.json or a copy). A record without any checkpoint
    beside it (a start that failed) binds nothing: a new run's record replaces it. `write`:
    save_run_record.
    """
    expected = config_lib.run_record(config, image_shape)
    found = find_run_record(workdir) if has_checkpoints(workdir) else None
    if found is None:
        record = dict(expected, **config_lib.new_run_identity(workdir))
    else:
        _check_resume(workdir, expected, {**dataclasses.asdict(Config()), **found})
        record = dict(expected, **{k: found[k] for k in config_lib.RUN_IDENTITY if k in found})
    if write:
        save_run_record(workdir, record if found is None else found)
    return record


def _check_resume(workdir: str, expected: dict, found: dict) -> None:
    """ConfigError if a field outside RESUMABLE_FIELDS differs (a field missing from an older
    record had its default then); a warning naming the resumable ones that do."""
    fixed = [k for k in expected if k not in config_lib.RESUMABLE_FIELDS]
    diff = [k for k in fixed if k in found and found[k] != expected[k]]
    if diff:
        text = ", ".join(f"--{k}={expected[k]!r} (the run's: {found[k]!r})" for k in diff)
        raise ConfigError(
            f"{workdir} holds checkpoints trained with other flags: {text}. Resume with the "
            f"run's own flags (`python -m wae_tf.train --workdir={workdir}` takes them from its "
            f"{RECORD_FILE}), or start a new run with another --workdir.")
    changed = sorted(k for k in expected if k in found and found[k] != expected[k])
    if changed:
        logging.warning("Resuming %s with flags other than its %s: %s.", workdir, RECORD_FILE,
                        ", ".join(f"--{k}={expected[k]} (was {found[k]})" for k in changed))


def save_run_record(workdir: str, record: dict) -> None:
    """Write a new run's record to config.json and beside its checkpoints (RECORD_COPY); for a
    run with checkpoints, only the missing ones (a record is written once)."""
    fresh = not has_checkpoints(workdir)
    for name in (RECORD_FILE, RECORD_COPY):
        path = os.path.join(workdir, name)
        if fresh or not tf.io.gfile.exists(path):
            if not fresh:
                logging.warning("Restored %s.", path)
            tf.io.gfile.makedirs(os.path.dirname(path))
            fileio.write_json(path, record)


def read_run_record(workdir: str):
    """(Config, image_shape) of a training run, from its record (find_run_record)."""
    record = find_run_record(workdir)
    if record is None:
        raise ConfigError(f"{os.path.join(workdir, RECORD_FILE)} not found: expected a training "
                          "run's directory.")
    return config_lib.from_dict(record), config_lib.record_image_shape(record)
