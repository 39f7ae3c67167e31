"""Shared fixtures: two logical CPU devices (for MirroredStrategy), tiny configs and data."""

import functools
import gzip
import os
import shutil
import struct
import subprocess
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# --conv_plan_cache=auto lives under $XDG_CACHE_HOME: the tests (and the commands they start)
# neither read nor fill the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="wae_tf_tests_cache_")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from wae_tf import data  # noqa: E402
from wae_tf.config import Config  # noqa: E402

# Must run before TensorFlow initialises its devices: conftest is imported before any test.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

def pytest_unconfigure(config):
    shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "numerics: compares numbers across code paths, replica counts or runs; CI "
        "runs these again with oneDNN held to AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2).")
    config.addinivalue_line(
        "markers", "slow: trains, exports or starts processes for seconds; `-m \"not slow\"` "
        "leaves them out of the edit-test loop (CI runs everything).")


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 2-step tiny WAE (with its export and fitted latent sampler) and a 1-epoch classifier on
    synthetic images: what the evaluation and TensorBoard tests evaluate."""
    from wae_tf import loop
    from wae_tf.evaluation import classifier  # pylint: disable=import-outside-toplevel
    root = tmp_path_factory.mktemp("tiny_run")
    workdir = str(root / "run")
    train, test = make_images(48), make_images(24, seed=1)
    config = tiny_config(export=True)
    loop.train_and_evaluate(config, workdir, data_override=(train, test))
    classifier_dir = str(root / "classifier")
    classifier.load_or_train(classifier_dir, "synthetic", lambda: (train, test), epochs=1)
    return dict(workdir=workdir, test=test, classifier_dir=classifier_dir, config=config,
                export=os.path.join(workdir, "export", str(config.train_steps)))


def run_concurrently(commands: dict, timeout: float = 300, **popen_kwargs) -> dict:
    """Runs independent commands {name: argv} at once (each one mostly TF's start-up, which
    leaves a core idle); returns {name: subprocess.CompletedProcess} with text output."""
    processes = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, **popen_kwargs)
                 for name, argv in commands.items()}
    results = {}
    for name, process in processes.items():
        with process:
            stdout, stderr = process.communicate(timeout=timeout)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout,
                                                    stderr)
    return results


@functools.lru_cache(maxsize=None)
def mirrored_strategy():
    """One MirroredStrategy per process: a second one would reuse collective instance keys."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


# ----------------------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray) -> bytes:
    """A valid IDX file: magic 0x0000 0x08 <ndim> (uint8) then big-endian uint32 sizes."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=True):
    payload = idx_bytes(array)
    if compress:
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)
    return str(path)


def make_idx_dir(directory, num_train=10, num_test=7, size=28, compress=True, seed=0):
    """Writes train/t10k images and labels; returns {split: (images [N,H,W], labels [N])}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n in (("train", "train", num_train), ("test", "t10k", num_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        ext = ".gz" if compress else ""
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{ext}"), images, compress)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{ext}"), labels, compress)
        arrays[split] = (images, labels)
    return arrays


# ------------------------------------------------------------------ Inception stand-in


def inception_stand_in(seed: int = 0, dim: int = 2048):
    """A GraphDef with the tensor names of the 2015-12-05 Inception graph (DecodeJpeg ->
    Cast -> ExpandDims [1, h, w, 3] -> ResizeBilinear to 299 -> (x - 128) / 128 -> a
    BatchNormWithGlobalNormalization op at GraphDef version 8, as in the real graph -> spatial
    mean -> pool_3 [b, 1, 1, dim]) and the numbers it computes: pool_3 = bn(mean RGB) @ w. A
    smaller `dim` keeps FID's [dim, dim] matrix algebra quick.

    Returns (graph_def, weights w [3, dim], bn(m) for m [.., 3])."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, dim)).astype(np.float32)
    mean, var, beta, gamma = (np.array(v, np.float32) for v in (
        [0.1, -0.2, 0.0], [1.0, 4.0, 0.25], [0.5, 0.0, -0.5], [2.0, 1.0, 3.0]))
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
        pixels = tf.cast(tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg"), tf.float32,
                         name="Cast")
        batch = tf.expand_dims(pixels, 0, name="ExpandDims")
        resized = tf.compat.v1.image.resize_bilinear(batch, [299, 299], name="ResizeBilinear")
        scaled = tf.multiply(tf.subtract(resized, 128.0, name="Sub"), 1 / 128.0, name="Mul")
        for name, value in (("mean", mean), ("var", var), ("beta", beta), ("gamma", gamma)):
            tf.constant(value, name=f"conv/batchnorm/{name}")
        normed = tf.identity(scaled, name="conv/batchnorm")  # becomes the old op below
        pooled = tf.cast(tf.reduce_mean(tf.cast(normed, tf.float64), axis=[1, 2], keepdims=True),
                         tf.float32)  # [b, 1, 1, 3]; float64: a float32 sum of 299^2 drifts
        tf.nn.conv2d(pooled, weights[None, None], 1, "VALID", name="pool_3")
    graph_def = graph.as_graph_def()
    node = next(n for n in graph_def.node if n.name == "conv/batchnorm")
    node.op = "BatchNormWithGlobalNormalization"
    del node.input[:]
    node.input.extend(["Mul"] + [f"conv/batchnorm/{n}" for n in ("mean", "var", "beta", "gamma")])
    node.attr["variance_epsilon"].f = 0.001
    node.attr["scale_after_normalization"].b = True
    graph_def.versions.producer = 8  # the op was removed at version 9

    def batchnorm(m):
        return (m - mean) / np.sqrt(var + 0.001) * gamma + beta
    return graph_def, weights, batchnorm
