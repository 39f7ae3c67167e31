"""The conv plans `convs.tune` timed, kept in a JSON file across processes (--conv_plan_cache).

Why: timing every form of every part takes minutes for the wide 64x64 networks on a CPU
(docs/performance.md), and a run would pay it again at each start and each resume.
An entry is reused only on the same machine, software and code: its key holds the CPU, the
thread counts, TF's version, the oneDNN and allocator settings, a hash of the conv forms' source
and the layer's shape, so a changed machine or form is timed afresh. A damaged or unwritable
file never stops a run: it is reported, ignored and rewritten.
"""

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import platform
from typing import Dict, Optional

import tensorflow as tf
from absl import logging

from wae_tf import fileio
from wae_tf.errors import ConfigError
from wae_tf.perf import hardware

FORMAT = 1
MAX_ENTRIES = 1000  # the oldest go first: a cache of every shape ever timed stays small
_ENVIRONMENT = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC",
                "OMP_NUM_THREADS")
_SOURCES = ("convs.py", "winograd.py")


def default_path() -> str:
    """fileio.cache_root()/conv_plans.json."""
    return os.path.join(fileio.cache_root(), "conv_plans.json")


def resolve(flag: str) -> Optional[str]:
    """--conv_plan_cache: auto -> default_path(), empty -> None (no cache), else the path."""
    if flag == "auto":
        return default_path()
    return os.path.expanduser(flag) if flag else None


def _cpu() -> str:
    """The CPU's model name and instruction-set flags (Linux), else what platform knows."""
    flags = hardware.cpu_flags()
    if flags is None:
        return f"{platform.machine()} {platform.processor()}"
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    return f"{hardware.cpu_model()} [{digest}]"


@functools.lru_cache(maxsize=None)
def _source_hash() -> str:
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _SOURCES:
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def machine_key() -> str:
    """What a timing depends on besides the layer: CPU, cores and threads, TF, settings, code."""
    threads = (os.cpu_count(), tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    settings = ",".join(f"{name}={os.environ.get(name, '')}" for name in _ENVIRONMENT)
    return f"{_cpu()}|threads {threads}|tf {tf.__version__}|{settings}|code {_source_hash()}"


def entry_key(shape, dtype_name: str) -> str:
    """The cache key of one layer shape (a dataclass) and compute dtype on this machine."""
    layer = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(shape).items())
    return hashlib.sha256(f"{machine_key()}|{layer}|{dtype_name}".encode()).hexdigest()


def _read(path: str) -> Dict[str, dict]:
    """The file's entries; {} for a missing file, and for a damaged one (with a warning)."""
    if not tf.io.gfile.exists(path):
        return {}
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            content = json.load(f)
        if content.get("format") != FORMAT or not isinstance(content.get("plans"), dict):
            raise ValueError(f"not a format-{FORMAT} plan cache")
        return content["plans"]
    except (ValueError, AttributeError, tf.errors.OpError, OSError) as error:
        logging.warning("Ignoring the conv plan cache %s (%s): the layers are timed again and "
                        "the file rewritten.", path, error)
        return {}


def lookup(path: str, key: str) -> Optional[dict]:
    """The entry stored under `key` ({"plan": {part: impl}, "seconds": ..., "timed": ...})."""
    entry = _read(path).get(key)
    return entry if isinstance(entry, dict) and isinstance(entry.get("plan"), dict) else None


def store(path: str, key: str, plan: Dict[str, str], seconds: Dict[str, dict],
          description: str) -> None:
    """Add one entry (read again just before, so other processes' entries are kept; written
    atomically). A failure to write is a warning: the run goes on with the plan it timed."""
    plans = _read(path)
    plans[key] = dict(plan=plan, seconds=seconds, layer=description, cpu=_cpu(),
                      timed=datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"))
    if len(plans) > MAX_ENTRIES:
        newest = sorted(plans, key=lambda k: str(plans[k].get("timed", "")))[-MAX_ENTRIES:]
        plans = {k: plans[k] for k in newest}
    try:
        tf.io.gfile.makedirs(os.path.dirname(path) or ".")
        fileio.write_json(path, dict(format=FORMAT, plans=plans))
    except (ConfigError, tf.errors.OpError, OSError) as error:
        logging.warning("Could not write the conv plan cache %s (%s); set --conv_plan_cache to "
                        "a writable file, or to '' to time the layers in every process.",
                        path, error)
