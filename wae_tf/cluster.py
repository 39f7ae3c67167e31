"""The run's place in a cluster: the tf.distribute strategy, chief and worker roles and their
directories, workers agreeing on a value, and SIGTERM turned into a flag."""

import functools
import os
import signal
import threading

import tensorflow as tf
from absl import logging

from wae_tf import fileio
from wae_tf.config import Config
from wae_tf.errors import ConfigError


def configure_cpu_devices(count: int) -> None:
    """Split the CPU into `count` logical devices; must run before TensorFlow initialises."""
    if count <= 0:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as error:  # TF already initialised: only fine if the split matches.
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise ConfigError(f"--cpu_devices={count} must be applied before TensorFlow starts "
                              f"({error}).") from error


def create_strategy(config: Config) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by --strategy (auto: mirrored with more than one GPU).

    multi_worker reads TF_CONFIG and must be created before TensorFlow initialises (listing
    devices does), so before anything else.
    """
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    name = config.strategy
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or (not gpus and len(cpus) > 1) else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in (gpus or cpus)]
    return tf.distribute.MirroredStrategy(devices)


# ----------------------------------------------------------------------------- roles

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
            # <directory>/worker_tmp, once no worker uses it
            fileio.remove_if_empty(os.path.dirname(path))


# ----------------------------------------------------------------- SIGTERM and agreement


class SigtermFlag:
    """While entered (in the main thread), SIGTERM sets `received` instead of killing."""

    def __init__(self):
        self.received, self._installed, self._previous = False, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True
        logging.warning("SIGTERM received: saving a checkpoint after the current step, then exit.")

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


def all_workers(strategy, value: float) -> list:
    """`value` of every replica of a multi-worker run ([value] otherwise), by an all-gather.

    A collective: every worker must call it at the same point of the run.
    """
    if not is_multi_worker(strategy):
        return [value]
    return _gather_fn(strategy)(tf.constant(float(value))).numpy().tolist()


@functools.lru_cache(maxsize=None)
def _gather_fn(strategy):
    """A tf.function gathering a float32 scalar from every replica (eagerly it is far slower)."""
    @tf.function
    def gather(value):
        per_replica = strategy.run(lambda: tf.reshape(value, [1]))
        return strategy.gather(per_replica, axis=0)  # [replicas]
    return gather


def check_workers_agree(strategy, start: int) -> None:
    """Fail (on every worker) if the workers restored different steps: no shared workdir."""
    steps = all_workers(strategy, start)
    low, high = int(min(steps)), int(max(steps))
    if low != high:
        raise ConfigError(f"The workers resumed from steps {low} to {high}: every worker must "
                          "read the chief's --workdir (a shared file system such as NFS or gs://).")
