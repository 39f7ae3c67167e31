"""The run's place in a cluster: TF_CONFIG, waiting for the peers, the tf.distribute strategy,
chief and worker roles and their directories, workers agreeing on a value, and SIGTERM/SIGINT
turned into a clean stop."""

import contextlib
import functools
import json
import os
import signal
import socket
import threading
import time

import tensorflow as tf
from absl import logging
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context as tf_context

from wae_tf import fileio
from wae_tf.config import Config
from wae_tf.errors import ConfigError, Preempted


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
        tf_config = read_tf_config()
        wait_for_peers(tf_config, config.cluster_timeout)
        _configure_coordination(tf_config)
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


# A worker whose heartbeats stop this long counts as dead and fails the others (TF's default,
# 10 s, was exceeded by live workers on 2 busy CPU cores).
HEARTBEAT_TIMEOUT_S = 60


def _configure_coordination(tf_config: dict) -> None:
    """TF's coordination service as MultiWorkerMirroredStrategy would configure it (leader:
    the chief, else worker 0), with HEARTBEAT_TIMEOUT_S; the strategy then keeps it."""
    jobs = [job for job in ("chief", "worker") if job in tf_config["cluster"]]
    configured = tf_context.context().coordination_service is not None
    if configured or tf_config["task"]["type"] not in jobs:
        return
    tf_context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
            name=job, num_tasks=len(tf_config["cluster"][job])) for job in jobs],
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000)


# ----------------------------------------------------------------------------- TF_CONFIG


def read_tf_config(environ=None) -> dict:
    """TF_CONFIG, checked: {"cluster": {job: [address, ...]}, "task": {"type", "index"}}.

    Anything malformed is a one-line ConfigError naming TF_CONFIG (TF's own errors do not).
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        raise ConfigError("--strategy=multi_worker reads the cluster from the TF_CONFIG "
                          "environment variable, which is not set: set it on every worker "
                          "(README, 'Multi-worker'), or use --strategy=auto for one process.")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({error}): {text[:100]!r}.") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v for v in cluster.values()):
        raise ConfigError('TF_CONFIG has no "cluster": {"worker": ["host:port", ...]}.')
    task = tf_config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError('TF_CONFIG has no "task": {"type": "worker", "index": i} saying which '
                          "task this process is.")
    job, index = task["type"], task["index"]
    if job not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise ConfigError(f"TF_CONFIG's task {job}:{index} is not in its cluster "
                          f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items())} tasks); "
                          "indices count from 0.")
    return tf_config


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def wait_for_peers(tf_config: dict, timeout: float, poll: float = 0.5) -> None:
    """Wait until every other task of `tf_config` accepts connections, at most `timeout` s.

    TF's own wait for the cluster (in MultiWorkerMirroredStrategy()) has no bound and blocks
    signals, so this one runs first. This task listens on its own port meanwhile, so that the
    peers' waits see it; it closes it just before TF's server takes the port. SIGTERM and SIGINT
    stop the wait (Preempted, exit 143/130). ConfigError names the tasks still missing.
    """
    job, index = tf_config["task"]["type"], tf_config["task"]["index"]
    own = tf_config["cluster"][job][index]
    peers = {f"{j}:{i}": address for j, addresses in tf_config["cluster"].items()
             for i, address in enumerate(addresses) if (j, i) != (job, index)}
    deadline = time.monotonic() + timeout
    waiting = "while waiting for the cluster; nothing to save; rerun the same command to resume."
    with _listening(own), StopSignals(waiting):
        while True:
            peers = {name: a for name, a in peers.items() if not _reachable(a)}
            if not peers:
                return
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"TF_CONFIG's {', '.join(f'{n} ({a})' for n, a in peers.items())} did not "
                    f"start within --cluster_timeout={timeout:g} s: start the same command there "
                    "(each task with its own task index), or check the addresses and ports.")
            logging.log_every_n_seconds(logging.INFO, "Waiting for %s.", 30,
                                        ", ".join(peers))
            time.sleep(poll)


@contextlib.contextmanager
def _listening(address: str):
    """A socket listening on this task's port (if free) for the duration."""
    server = socket.socket(socket.AF_INET6 if address.startswith("[") else socket.AF_INET)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", int(address.rpartition(":")[2])))
        server.listen(16)
    except OSError as error:  # e.g. in use: TF's server will say so
        logging.warning("Cannot listen on %s while waiting (%s).", address, error)
    try:
        yield
    finally:
        server.close()


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While entered (in the main thread), SIGTERM and SIGINT stop the run cleanly.

    By default a signal raises Preempted(signum) at once, saying "<SIGNAL> <when>" (start-up,
    waiting: nothing to save; `when` may change as the run goes on). Inside `deferred()` it only
    sets `received` (the signal number), which the training loop checks between steps to save a
    checkpoint first. A Preempted raised inside a library call that wraps it (Keras adds the
    layer's call to the message, and drops the signal number) or swallows it (TF's saving)
    leaves the block as itself. A
    SIGINT that the launching shell ignores (a background job) stays ignored.
    """

    def __init__(self, when: str = "during start-up, before training; nothing to save; rerun "
                                   "the same command to resume."):
        self.received, self.when, self._deferring, self._previous = 0, when, False, {}
        self._raised = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        self.received = self.received or signum  # also if a library swallows what is raised:
        if not self._deferring:                  # the loop then stops before its next step
            self._raised = Preempted(f"{name} {self.when}", signum)
            raise self._raised
        logging.warning("%s received: saving a checkpoint after the current step, then exit.",
                        name)

    @contextlib.contextmanager
    def deferred(self):
        """Signals only set `received` inside this block."""
        self._deferring = True
        try:
            yield self
        except Preempted:  # the loop's, saying what it saved (also for a signal swallowed before)
            self._raised = None
            raise
        finally:
            self._deferring = False

    def __exit__(self, exc_type, exc_value, traceback):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if self._raised is not None and exc_value is not self._raised:
            # Wrapped by a library (Keras), or swallowed by one (TF's saving catches Exception
            # in places) and the block went on: the signal still stops the process.
            raise self._raised.with_traceback(None) from None
        return False


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
