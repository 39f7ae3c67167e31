"""Shared fixtures: two logical CPU devices (for MirroredStrategy), tiny configs and data."""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from wae_tf import data  # noqa: E402
from wae_tf.config import Config  # noqa: E402

# Must run before TensorFlow initialises its devices: conftest is imported before any test.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "numerics: compares numbers across code paths, replica counts or runs; CI "
        "runs these again with oneDNN held to AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2).")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def tiny_config(**overrides) -> Config:
    """A network small enough for a step in milliseconds; defaults of the paper otherwise."""
    values = dict(width_divisor=32, z_dim=4, batch_size=8, train_steps=2, log_every=1,
                  image_every=1000, checkpoint_every=1000, export=False, strategy="default")
    values.update(overrides)
    return Config(**values).validate()


def make_images(num: int, size: int = 28, channels: int = 1, seed: int = 0) -> data.ImageData:
    """Blobby synthetic images (smoothed noise), uint8, with labels 0..9."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num, size // 4, size // 4, channels))
    images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.uint8)
    return data.ImageData(images=images, labels=np.arange(num, dtype=np.int64) % 10,
                          name=f"synthetic{size}/{num}")


@pytest.fixture
def tiny_data():
    return make_images(32), make_images(16, seed=1)


@functools.lru_cache(maxsize=None)
def mirrored_strategy():
    """One MirroredStrategy per process: a second one would reuse collective instance keys."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
