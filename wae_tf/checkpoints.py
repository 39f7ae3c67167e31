"""Checkpoint managers, resuming, chief-only writing and the workdir's model signature."""

import collections
import json
import os
import shutil

import tensorflow as tf
from absl import logging

from wae_tf import config as config_lib
from wae_tf import networks
from wae_tf.config import Config, ConfigError

SIGNATURE_FILE = "model.json"
WORKER_TMP = "worker_tmp"


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, resolver.task_id


def is_chief(strategy) -> bool:
    """True for single-process runs, the 'chief' task, or worker 0 of a cluster without chief."""
    task_type, task_id = _task(strategy)
    if task_type is None or task_type == "chief":
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def write_dir(directory: str, strategy) -> str:
    """`directory` for the chief; a per-worker temporary directory for the other workers.

    Multi-worker saving is collective (every worker must save) but only the chief's files count,
    as the tf.distribute multi-worker guide prescribes.
    """
    if is_chief(strategy):
        return directory
    task_type, task_id = _task(strategy)
    return os.path.join(directory, WORKER_TMP, f"{task_type}_{task_id}")


def is_multi_worker(strategy) -> bool:
    return _task(strategy)[0] is not None


def cleanup_worker_dirs(directories, strategy) -> None:
    """Remove this non-chief worker's temporary copies of `directories` (checkpoints, export)."""
    if not is_chief(strategy):
        for directory in directories:
            path = write_dir(directory, strategy)
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)
            parent = os.path.dirname(path)  # <directory>/worker_tmp, once no worker uses it
            if tf.io.gfile.exists(parent) and not tf.io.gfile.listdir(parent):
                tf.io.gfile.rmtree(parent)


def create_manager(checkpoint: tf.train.Checkpoint, workdir: str, config: Config,
                   strategy) -> tf.train.CheckpointManager:
    directory = write_dir(os.path.join(workdir, "checkpoints"), strategy)
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


def write_json(path: str, value: dict) -> None:
    """Write JSON to a temporary file renamed over `path`: a kill never leaves half a file."""
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path: str) -> dict:
    """A JSON file of the workdir, or ConfigError naming it."""
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{path} not found: expected a training run's directory.")
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is corrupt ({error}).") from error


def read_model_signature(workdir: str) -> dict:
    return read_json(os.path.join(workdir, SIGNATURE_FILE))


def check_model_signature(workdir: str, config: Config, image_shape, write: bool) -> None:
    """Refuse to resume a workdir whose checkpoints were made with other model flags or data."""
    path = os.path.join(workdir, SIGNATURE_FILE)
    expected = dict(config.model_signature(), image_shape=[int(d) for d in image_shape])
    if tf.io.gfile.exists(path):
        found = read_json(path)
        diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        if diff:
            text = ", ".join(f"--{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(f"{workdir} holds a run with other model flags ({text}); use "
                              "another --workdir or the original flags.")
    elif write:
        write_json(path, expected)


def replace_directory(tmp_dir: str, final_dir: str) -> None:
    """Move a fully written `tmp_dir` to `final_dir`, replacing any old one only at the end."""
    old = None
    if os.path.exists(final_dir):
        old = final_dir + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(final_dir, old)
    os.rename(tmp_dir, final_dir)
    if old:
        shutil.rmtree(old)


TrainedModels = collections.namedtuple(
    "TrainedModels", "config image_shape encoder decoder step checkpoint_path")


def restore_trained_models(workdir: str) -> TrainedModels:
    """Rebuild the encoder and decoder of a training run and restore its latest checkpoint."""
    signature = read_model_signature(workdir)
    config = config_lib.from_dict(read_json(os.path.join(workdir, "config.json")))
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest is None:
        raise ConfigError(f"No checkpoint in {os.path.join(workdir, 'checkpoints')}.")
    image_shape = tuple(signature["image_shape"])
    encoder = networks.make_encoder(config, image_shape)
    decoder = networks.make_decoder(config, image_shape)
    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(encoder=encoder, decoder=decoder, step=step).restore(
        latest).expect_partial().assert_existing_objects_matched()
    return TrainedModels(config, image_shape, encoder, decoder, int(step.numpy()), latest)
