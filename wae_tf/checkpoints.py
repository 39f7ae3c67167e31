"""Checkpoint managers, resuming past unreadable checkpoints, and the run's record (config.json)
that a resume must match."""

import dataclasses
import os

import tensorflow as tf
from absl import logging

from wae_tf import cluster
from wae_tf import config as config_lib
from wae_tf import fileio
from wae_tf.config import Config
from wae_tf.errors import ConfigError

RECORD_FILE = "config.json"


def create_manager(checkpoint: tf.train.Checkpoint, workdir: str, config: Config,
                   strategy) -> tf.train.CheckpointManager:
    directory = cluster.write_dir(os.path.join(workdir, "checkpoints"), strategy)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=config.keep_checkpoints)


def restore_latest(manager: tf.train.CheckpointManager, directory: str = "") -> str:
    """Restore the newest readable checkpoint, skipping (and reporting) corrupt ones.

    `directory` (default: the manager's) lets every worker restore from the chief's checkpoints.
    Returns the restored path, or "" for a fresh start.
    """
    directory = directory or manager.directory
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths) if state else []
    for path in reversed(paths):
        try:
            manager.checkpoint.restore(path).assert_existing_objects_matched()
        # Truncated files raise IndexError ("Read less bytes than requested") or DataLossError.
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError) as error:
            logging.error("Checkpoint %s is unreadable (%s); trying the previous one.", path,
                          str(error).splitlines()[0])
            continue
        logging.info("Resumed from %s.", path)
        return path
    if paths:
        raise ConfigError(f"No checkpoint in {directory} could be read; move the directory away "
                          "to start afresh.")
    return ""


def check_run_record(workdir: str, config: Config, image_shape, write: bool) -> None:
    """Refuse to resume a workdir whose checkpoints were made with other model flags or data;
    a new run's record (config_lib.run_record) is written once, to <workdir>/config.json."""
    path = os.path.join(workdir, RECORD_FILE)
    expected = config_lib.run_record(config, image_shape)
    if not tf.io.gfile.exists(path):
        if write:
            fileio.write_json(path, expected)
        return
    # A field missing from an older record had its default then.
    found = {**dataclasses.asdict(Config()), **fileio.read_json(path)}
    keys = config_lib.MODEL_FIELDS + ("image_shape",)
    diff = {k: (found.get(k), expected[k]) for k in keys if found.get(k) != expected[k]}
    if diff:
        text = ", ".join(f"--{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"{workdir} holds a run with other model flags ({text}); use "
                          "another --workdir or the original flags.")
    changed = sorted(k for k in expected if k in found and found[k] != expected[k])
    if changed:
        logging.warning("Resuming %s with flags other than its %s: %s.", workdir, RECORD_FILE,
                        ", ".join(f"--{k}={expected[k]} (was {found[k]})" for k in changed))


def read_run_record(workdir: str):
    """(Config, image_shape) of a training run, from its config.json."""
    record = fileio.read_json(os.path.join(workdir, RECORD_FILE))
    return config_lib.from_dict(record), tuple(record["image_shape"])
