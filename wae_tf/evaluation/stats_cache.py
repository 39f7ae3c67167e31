"""The test images' features in a feature space, with their mean and covariance, computed once
and kept in --stats_cache_dir for later evaluations (one .npz per key).

The key names what determines the features: the data set, split, image shape, the selected
images (count, seed and a digest of their pixels), the feature space and its weights. The
features themselves (at most num_test_images x D) are kept because KID and precision/recall
need them, not only FID's mean and covariance.
"""

import dataclasses
import hashlib
import io
import json
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import fileio
from wae_tf.errors import ConfigError, error_summary
from wae_tf.evaluation import metrics

VERSION = 1  # of the file's layout and of the key


@dataclasses.dataclass(frozen=True)
class RealFeatures:
    features: np.ndarray  # float32 [n, D]
    mean: np.ndarray  # float64 [D]
    cov: np.ndarray  # float64 [D, D], unbiased
    origin: str  # "computed", "computed, cached in <file>" or "read from <file>"


def resolve(flag: str, root: str) -> Optional[str]:
    """--stats_cache_dir: auto -> <root>/feature_stats, '' -> None (no cache), else the path."""
    if flag == "auto":
        return os.path.join(root, "feature_stats")
    return os.path.expanduser(flag) if flag else None


def images_digest(images: np.ndarray) -> str:
    """sha256 of an image array's shape, dtype and bytes (the selected test images)."""
    digest = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def cache_file(cache_dir: str, key: dict) -> str:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, f"{key.get('space', 'features')}-{name}.npz")


def _read(path: str, key: dict) -> Optional[RealFeatures]:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            stored = np.load(io.BytesIO(f.read()), allow_pickle=False)
            if json.loads(str(stored["key"])) != key:  # a hash collision, or an old layout
                return None
            return RealFeatures(stored["features"], stored["mean"], stored["cov"],
                                f"read from {path}")
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        logging.warning("Ignoring the unreadable feature cache %s (%s).", path,
                        error_summary(error))
        return None


def _write(path: str, key: dict, real: RealFeatures) -> bool:
    buffer = io.BytesIO()
    np.savez(buffer, features=real.features, mean=real.mean, cov=real.cov,
             key=np.array(json.dumps(key, sort_keys=True)))
    try:
        tf.io.gfile.makedirs(os.path.dirname(path))
        fileio.write_bytes(path, buffer.getvalue())
    except (ConfigError, OSError, tf.errors.OpError) as error:
        logging.warning("Could not cache the test features in %s (%s); set --stats_cache_dir to "
                        "a writable directory or ''.", path, error_summary(error))
        return False
    return True


def load_or_compute(cache_dir: Optional[str], key: dict,
                    compute: Callable[[], np.ndarray]) -> RealFeatures:
    """The cached features of `key`, else compute() -> [n, D] and their statistics, cached."""
    key = dict(key, version=VERSION)
    path = cache_file(cache_dir, key) if cache_dir else None
    if path and tf.io.gfile.exists(path):
        cached = _read(path, key)
        if cached is not None:
            return cached
    features = np.asarray(compute(), np.float32)  # [n, D]
    mean, cov = metrics.feature_statistics(features)
    real = RealFeatures(features, mean, cov, "computed")
    if path and _write(path, key, real):
        real = dataclasses.replace(real, origin=f"computed, cached in {path}")
    return real
