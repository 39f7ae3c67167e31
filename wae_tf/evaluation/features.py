"""The feature spaces of FID, KID, precision and recall (--fid_features): the Inception graph as
TTUR feeds it, wae_tf's own classifier, or a user's SavedModel, each seen as a FeatureSpace.

`inception` is the standard: pool3 (2048-d) of the 2015-12-05 Inception graph, the features of
TTUR's fid.py, which pytorch-fid, clean-fid's legacy mode and torch-fidelity port. The graph is
fetched once into the cache (`fileio.cache_root()`/inception) and its checksum checked, or read from
--inception_path. `classifier` (wae_tf.evaluation.classifier) is fast and offline, but its
numbers compare only within wae_tf. A SavedModel maps float32 images [N, H, W, C] in [0, 1] to
features [N, D] for a domain of the user's own.
"""

import dataclasses
import functools
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from wae_tf import fileio
from wae_tf.config import FEATURE_SPACES
from wae_tf.errors import ConfigError, error_summary

INCEPTION_URL = "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"
INCEPTION_PB = "classify_image_graph_def.pb"
# No checksum is published for the .tgz: TTUR's fid.py, pytorch-fid and clean-fid fetch it
# unchecked (pytorch-fid and torch-fidelity publish hashes of their PyTorch ports only). This is
# the md5 of the .pb in it as pinned for OpenAI's copy of the same file (guided-diffusion's
# evaluator fetches openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/
# classify_image_graph_def.pb; pinned, with its size, by a third-party benchmark), whose size,
# 95,673,916 bytes, is the one the .tgz lists for its member.
INCEPTION_MD5 = "e6bb154e85f5d4331c22abcddb5dcf31"
INCEPTION_INPUT = "ExpandDims:0"  # [1, h, w, 3] pixels 0..255 in the graph; TTUR feeds batches
INCEPTION_OUTPUT = "pool_3:0"  # [b, 1, 1, 2048]
INCEPTION_BATCH = 50  # TTUR's default
INCEPTION_PREPROCESSING = (
    "images in [0, 1] times 255, rounded (as 8-bit PNGs), grayscale repeated to RGB, fed to "
    f"{INCEPTION_INPUT} with a free batch dimension (TTUR's fix); TTUR: bilinear resize to "
    f"299x299 inside the graph; {INCEPTION_OUTPUT} squeezed to [N, 2048]")
_DOWNLOAD_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
    """A feature extractor and what the metrics record of it."""
    name: str  # inception | classifier | custom: the suffix of the metric keys
    preprocessing: str  # what happens to the images on their way to the features
    source: str  # the URL, file or directory the extractor comes from
    fingerprint: str  # identifies the extractor's weights (the stats cache's key)
    embed_batch: Callable  # float32 [b, H, W, C] in [0, 1] -> float [b, D]
    batch: int = 500
    info: dict = dataclasses.field(default_factory=dict)  # e.g. the classifier's accuracy

    def embed(self, images) -> np.ndarray:
        """float32 images [N, H, W, C] in [0, 1] -> float32 features [N, D], `batch` at a time."""
        chunks = [np.asarray(self.embed_batch(np.asarray(images[i:i + self.batch], np.float32)),
                             np.float32) for i in range(0, len(images), self.batch)]
        features = np.concatenate(chunks)
        if features.ndim != 2 or features.shape[0] != len(images):
            raise ConfigError(f"The {self.name} features of {self.source} have shape "
                              f"{features.shape} for {len(images)} images: expected [N, D].")
        return features

    def describe(self, dim: int) -> dict:
        """metrics.json's "feature_space"."""
        return dict(name=self.name, dim=int(dim), preprocessing=self.preprocessing,
                    source=self.source)


def space_name(fid_features: str, has_labels: bool) -> str:
    """The space --fid_features names: auto is the classifier where the data set has class
    labels to train it on, else inception; a path is `custom`."""
    if fid_features == "auto":
        return "classifier" if has_labels else "inception"
    return fid_features if fid_features in FEATURE_SPACES else "custom"


# -------------------------------------------------------------------------- the Inception graph


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(path: str, md5: str, origin: str, remove: bool = False) -> None:
    """ConfigError unless the md5 of `path` is `md5`; `remove` deletes it then (our copies)."""
    got = _md5(path)
    if got != md5:
        if remove:
            fileio.remove_quietly(path)
        raise ConfigError(f"{origin} has md5 {got}, not {md5}, the checksum of {INCEPTION_PB} "
                          "(the 2015-12-05 Inception graph): refusing it (a partial download or "
                          "another file).")


def _extract_pb(archive: str, target: str, md5: str, origin: str) -> None:
    """Write the archive's classify_image_graph_def.pb to `target` if its md5 is `md5`."""
    tmp = fileio.temporary_sibling(target)
    try:
        with tf.io.gfile.GFile(archive, "rb") as f, tarfile.open(fileobj=f, mode="r|gz") as tar:
            member = next((m for m in tar if os.path.basename(m.name) == INCEPTION_PB), None)
            if member is None:
                raise ConfigError(f"{origin} holds no {INCEPTION_PB}: not the Inception "
                                  "archive.")
            with tf.io.gfile.GFile(tmp, "wb") as out:
                shutil.copyfileobj(tar.extractfile(member), out)
        _check_md5(tmp, md5, f"The {INCEPTION_PB} in {origin}")
        tf.io.gfile.rename(tmp, target, overwrite=True)
    except (tarfile.TarError, EOFError, OSError, tf.errors.OpError) as error:
        raise ConfigError(f"{origin} is not a readable .tgz "
                          f"({error_summary(error)}).") from None
    finally:
        fileio.remove_quietly(tmp)


def _download(url: str, target: str) -> None:
    """`url` to the local file `target`, through a temporary name (removed if anything fails)."""
    tmp = fileio.temporary_sibling(target)
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, \
                open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    finally:
        fileio.remove_quietly(tmp)


def inception_graph_path(inception_path: str = "", cache_dir: str = "", url: str = "",
                         md5: str = "") -> str:
    """The checked classify_image_graph_def.pb: --inception_path's (a .pb, or a .tgz extracted
    into the cache), else the cache's, else fetched from `url` into the cache once.

    Defaults: `cache_dir` fileio.cache_root()/inception (a .tgz put there is extracted too), `url`
    INCEPTION_URL, `md5` INCEPTION_MD5 (read when called, so tests can replace them).
    """
    cache_dir = cache_dir or os.path.join(fileio.cache_root(), "inception")
    url, md5 = url or INCEPTION_URL, md5 or INCEPTION_MD5
    cached = os.path.join(cache_dir, INCEPTION_PB)
    if inception_path:
        if not tf.io.gfile.exists(inception_path):
            raise ConfigError(f"--inception_path={inception_path} does not exist: give the "
                              f"{INCEPTION_PB} or the .tgz of {url}.")
        if not inception_path.endswith((".tgz", ".tar.gz")):
            _check_md5(inception_path, md5, f"--inception_path={inception_path}")
            return inception_path
        tf.io.gfile.makedirs(cache_dir)
        _extract_pb(inception_path, cached, md5, f"--inception_path={inception_path}")
        return cached
    if tf.io.gfile.exists(cached):
        _check_md5(cached, md5, f"{cached} (removed: rerun to fetch it again)", remove=True)
        return cached
    archive = os.path.join(cache_dir, os.path.basename(url))
    tf.io.gfile.makedirs(cache_dir)
    if not tf.io.gfile.exists(archive):
        try:
            _download(url, archive)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error_summary(error)
            raise ConfigError(
                f"The Inception graph of --fid_features=inception is not in {cache_dir} and "
                f"could not be fetched from {url} ({reason}): download that file elsewhere and "
                f"put it (or its {INCEPTION_PB}) in {cache_dir}, or pass "
                "--inception_path=FILE.") from None
    try:
        _extract_pb(archive, cached, md5, archive)
    finally:
        fileio.remove_quietly(archive)  # only the .pb is kept
    return cached


class InceptionGraph:
    """pool_3 of the GraphDef, fed as TTUR's fid.py feeds it, run in a TF1 session.

    The 2015 graph's batch norms are BatchNormWithGlobalNormalization ops, removed at GraphDef
    version 9: they run only in a graph that keeps the imported (older) GraphDef version, as a
    tf.Graph does, not in a tf.function (tf.compat.v1.wrap_function fails with "not available
    in GraphDef version"). The input's batch dimension is 1 in the graph; TTUR clears it from
    the static shapes, here a placeholder [None, None, None, 3] replaces the input tensor.
    """

    def __init__(self, graph_def):
        nodes = {node.name: node for node in graph_def.node}
        for name in (INCEPTION_INPUT, INCEPTION_OUTPUT):
            if name.split(":")[0] not in nodes:
                raise ConfigError(f"The Inception graph has no tensor {name}: not the 2015-12-05 "
                                  "graph.")
        in_dtype = tf.dtypes.as_dtype(nodes[INCEPTION_INPUT.split(":")[0]].attr["T"].type)
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])  # 0..255
            (pool3,) = tf.graph_util.import_graph_def(
                graph_def, input_map={INCEPTION_INPUT: tf.cast(self._images, in_dtype)},
                return_elements=[INCEPTION_OUTPUT], name="inception")
            self._features = tf.squeeze(pool3, axis=[1, 2])  # [b, 2048]
        self._session = tf.compat.v1.Session(graph=self._graph)

    def __call__(self, images) -> np.ndarray:
        """float32 images [b, H, W, 1 or 3] in [0, 1] -> float32 pool3 features [b, 2048]."""
        pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.float32)
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)  # [b, H, W, 3]
        return self._session.run(self._features, {self._images: pixels})


@functools.lru_cache(maxsize=2)
def _load_inception(path: str) -> InceptionGraph:
    with tf.io.gfile.GFile(path, "rb") as f:
        graph_def = tf.compat.v1.GraphDef.FromString(f.read())
    return InceptionGraph(graph_def)


def inception_space(inception_path: str = "", cache_dir: str = "", url: str = "",
                    md5: str = "") -> FeatureSpace:
    """The standard FID space (see inception_graph_path for where the graph comes from)."""
    url, md5 = url or INCEPTION_URL, md5 or INCEPTION_MD5
    path = inception_graph_path(inception_path, cache_dir, url, md5)
    return FeatureSpace("inception", INCEPTION_PREPROCESSING,
                        f"{url} ({INCEPTION_PB}, md5 {md5}, read from {path})", f"md5:{md5}",
                        _load_inception(path), INCEPTION_BATCH)


# ------------------------------------------------------------------- classifier and SavedModel


def classifier_space(clf, directory: str) -> FeatureSpace:
    """wae_tf's classifier (a classifier.FeatureClassifier) cached in `directory`."""
    info = clf.info
    shape = "x".join(str(d) for d in info["image_shape"])
    dim = info.get("feature_dim", 128)
    preprocessing = (f"float32 images in [0, 1] at the data's own size ({shape}); the {dim} "
                     "ReLU units of the penultimate layer of wae_tf's CNN trained on "
                     f"{info['dataset']} ({info['epochs']} epoch{'s' * (info['epochs'] != 1)}, "
                     f"test accuracy {info['test_accuracy']:.4f})")
    fingerprint = hashlib.sha256(repr(sorted(info.items())).encode()).hexdigest()[:16]
    return FeatureSpace("classifier", preprocessing, directory, f"{directory}:{fingerprint}",
                        clf.embed, info=info)


def _saved_model_fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        if tf.io.gfile.exists(os.path.join(path, name)):
            with tf.io.gfile.GFile(os.path.join(path, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def _features_of(outputs, path: str):
    """The features tensor of a signature's or callable's outputs."""
    if isinstance(outputs, dict):
        if "features" in outputs:
            return outputs["features"]
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        raise ConfigError(f"The SavedModel {path} returns {sorted(outputs)}: return one tensor, "
                          "or name the features 'features'.")
    return outputs


def saved_model_space(path: str) -> FeatureSpace:
    """A user's SavedModel: its serving_default signature (one input) or the loaded object
    called on float32 images [N, H, W, C] in [0, 1], returning features [N, D]."""
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise ConfigError(f"--fid_features={path} is none of {', '.join(FEATURE_SPACES)} and no "
                          "SavedModel (no saved_model.pb in it).")
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures.get("serving_default")
    embed: Optional[Callable] = None
    if signature is not None:
        inputs = list(signature.structured_input_signature[1])
        if len(inputs) != 1:
            raise ConfigError(f"The serving_default signature of {path} takes {inputs}: it "
                              "should take the images alone.")
        embed = lambda images: _features_of(signature(**{inputs[0]: tf.constant(images)}),  # noqa: E731
                                            path)
        how = "its serving_default signature"
    elif callable(loaded):
        embed = lambda images: _features_of(loaded(tf.constant(images)), path)  # noqa: E731
        how = "the loaded object called"
    else:
        raise ConfigError(f"The SavedModel {path} has no serving_default signature and is not "
                          "callable: export a function of the images.")
    preprocessing = f"float32 images [N, H, W, C] in [0, 1] at the model's size, fed to {how}"
    return FeatureSpace("custom", preprocessing, path, f"{path}:{_saved_model_fingerprint(path)}",
                        embed)
