"""Data sets -> in-memory uint8 images -> deterministic, resumable tf.data streams of global batches.

Sources:
  * Fashion-MNIST / MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...), by default the Debian
    package `dataset-fashion-mnist` in DEFAULT_FASHION_MNIST_DIR;
  * a folder of your images (`--dataset=folder`), or CelebA's official files (wae_tf.data.folders);
  * any tensorflow-datasets image data set, downloaded and prepared by TFDS where there is network
    (`--tfds_download`, default) or already prepared in `--tfds_data_dir` (celeb_a is centre
    cropped to `celeba_crop` and resized to 64x64 as in the paper).

A split is held in host memory as uint8 [N, H, W, C] (ImageData; Fashion-MNIST train: 60000 x
784 B = 47 MB), or a train split larger than memory (--in_memory) is streamed: from its files,
decoded while training (ImageFiles), or from a decoded copy written once to --cache_dir and read
by rows (ImageRows; the only streaming form for TFDS, whose records have no random access).
Every stream is deterministic from --seed and resumes at any step. Never falls back to other or
random data.
"""

import dataclasses
import gzip
import hashlib
import json
import os
import struct
import zlib
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import fileio
from wae_tf.data import folders
from wae_tf.config import DEFAULT_FASHION_MNIST_DIR, Config
from wae_tf.errors import ConfigError

SPLITS = ("train", "test")
# The classes of labels 0..9 of the data sets read from IDX files (Fashion-MNIST's README).
CLASS_NAMES = {"fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                 "Shirt", "Sneaker", "Bag", "Ankle boot")}
# File name prefix of each split in the IDX distribution of (Fashion-)MNIST.
_IDX_PREFIX = {"train": "train", "test": "t10k"}
# IDX type code (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
CELEBA_SIZE = 64  # The paper's CelebA resolution.
_FIX_FASHION = ("install the Debian package (`sudo apt-get install dataset-fashion-mnist`), or pass "
                "--data_dir=DIR holding the IDX files, or prepare the TFDS copy on a machine with "
                "network (`tfds build fashion_mnist --data_dir=DIR`) and pass --tfds_data_dir=DIR")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageData:
    """One split in memory, at the networks' resolution."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]; zeros when the data set has no labels (celeb_a)
    name: str  # e.g. "fashion_mnist/train"
    class_names: Tuple[str, ...] = ()  # label l is class_names[l]; () where unnamed or unknown

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # (H, W, C)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFiles:
    """One split streamed from its image files (data larger than memory): each batch is
    decoded while training runs."""

    files: folders.FileSplit

    @property
    def num_examples(self) -> int:
        return len(self.files.paths)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self.files.image_shape

    @property
    def labels(self) -> np.ndarray:
        return self.files.labels

    @property
    def name(self) -> str:
        return self.files.name


@dataclasses.dataclass(frozen=True, eq=False)
class ImageRows:
    """One split streamed from its decoded copy in --cache_dir (uint8 rows [N, H, W, C] in one
    file), read by rows while training runs: data larger than memory, decoded only once."""

    path: str
    labels: np.ndarray  # int64 [N]
    image_shape: Tuple[int, int, int]
    name: str

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def read(self, indices) -> np.ndarray:
        """uint8 [len(indices), H, W, C]: the rows at `indices`."""
        return _row_reader(self.path, self.image_shape)(indices)


STREAMED = (ImageFiles, ImageRows)


# ----------------------------------------------------------------------------------------------
# Loading.


def load_split(config: Config, split: str):
    """Load `split` ("train" or "test") of `config.dataset` into memory as uint8 NHWC
    (ImageData), or, for a train split that --in_memory says to stream, as ImageFiles (decoded
    while training) or ImageRows (the decoded copy in --cache_dir).

    If `config.image_size` is set and differs from the data's own side, the images are resized to
    image_size x image_size (antialiased bilinear, rounded back to uint8); e.g. 28 -> 64 lets the
    64x64 networks train on Fashion-MNIST. Raises ConfigError for missing or corrupt data.
    """
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    if config.dataset in ("fashion_mnist", "mnist"):
        data = _load_mnist_like(config, split)
    elif config.dataset == "folder" or (config.dataset == "celeb_a" and config.data_dir):
        return _load_files(config, split)
    else:
        if config.data_dir:
            raise ConfigError(f"--data_dir={config.data_dir!r} is for IDX files, folders of "
                              f"images and CelebA's files; --dataset={config.dataset} is read "
                              "from TFDS: pass --tfds_data_dir instead.")
        data = _load_tfds(config, split)
    if config.image_size and data.image_shape[:2] != (config.image_size, config.image_size):
        data = dataclasses.replace(data, images=_resize_array(data.images, config.image_size))
    return data


def _load_files(config: Config, split: str):
    """A folder's or CelebA's files: in memory (ImageData), or streamed (ImageFiles, or
    ImageRows with --cache_dir) for a train split that --in_memory says to stream."""
    files = folders.list_split(config, split)
    if split == "train" and streams(config, len(files.paths), files.image_shape):
        if not config.cache_dir:
            return ImageFiles(files)
        return cached_files(files, config.cache_dir, config.skip_bad_images)
    images, files = folders.decode_split(files, config.skip_bad_images)
    return ImageData(images=images, labels=files.labels, name=files.name,
                     class_names=files.class_names)


def streams(config: Config, num_examples: int, image_shape) -> bool:
    """--in_memory: false streams; auto streams when the decoded split would take more than a
    quarter of this machine's memory."""
    if config.in_memory != "auto":
        return config.in_memory == "false"
    decoded = int(num_examples) * int(np.prod(image_shape))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return decoded > memory // 4


def _cache_base(cache_dir: str, kind: str, key) -> str:
    """<cache_dir>/<kind>-<hash of key>: one decoded copy per source and preprocessing."""
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{kind}-{digest}")


def _write_rows(batches, base: str, manifest) -> None:
    """Write uint8 image batches into <base>.u8 (rows in order), then manifest(...) as
    <base>.json, last: a copy without its .json is incomplete and is rebuilt. `batches` yields
    (uint8 [b, H, W, C], extra); manifest gets the list of every extra."""
    os.makedirs(os.path.dirname(base), exist_ok=True)
    tmp, extras = f"{base}.u8.tmp{os.getpid()}", []
    with open(tmp, "wb") as out:
        for images, extra in batches:
            out.write(np.ascontiguousarray(images, np.uint8).tobytes())
            extras.append(extra)
    os.replace(tmp, base + ".u8")
    fileio.write_json(base + ".json", manifest(extras))


def cached_files(files: folders.FileSplit, cache_dir: str, skip_bad: bool) -> ImageRows:
    """The decoded copy of `files` in `cache_dir`, written on first use (one decoding pass, in
    order, never the whole split in memory) and found again by its content key."""
    base = _cache_base(cache_dir, files.name.split(":")[0],
                       [files.paths, files.image_shape, files.crop])
    if not os.path.exists(base + ".json"):
        logging.info("Decoding %d images of %s into %s.u8 (once).", len(files.paths),
                     files.name, base)
        position = {path: i for i, path in enumerate(files.paths)}
        batches = ((images.numpy(), [position[p.decode()] for p in paths.numpy()])
                   for paths, images in folders.image_dataset(
                       list(files.paths), files.size, files.channels, files.crop
                   ).batch(256).prefetch(2))
        _write_rows(batches, base, lambda kept: {"kept": sum(kept, []),
                                                 "image_shape": files.image_shape})
    with open(base + ".json") as f:
        kept = json.load(f)["kept"]
    logging.info("Reading %d decoded images of %s from %s.u8.", len(kept), files.name, base)
    files = folders.check_unreadable(
        files, set(files.paths) - set(files.paths[i] for i in kept), skip_bad)
    return ImageRows(base + ".u8", files.labels, files.image_shape, files.name)


def _load_mnist_like(config: Config, split: str) -> ImageData:
    """IDX files from --data_dir (or the Debian default for fashion_mnist), else TFDS."""
    data_dir = config.data_dir
    if not data_dir and config.dataset == "fashion_mnist":
        data_dir = DEFAULT_FASHION_MNIST_DIR
    if not data_dir:  # mnist without --data_dir
        return _load_tfds(config, split)
    paths, tried = _find_idx_files(data_dir, split)
    if paths:
        return dataclasses.replace(_load_idx_split(*paths, name=f"{config.dataset}/{split}"),
                                   class_names=CLASS_NAMES.get(config.dataset, ()))
    if config.data_dir:
        raise ConfigError(f"No {config.dataset} IDX files for split {split!r}: tried "
                          f"{', '.join(tried)}. Fix: pass --data_dir=DIR holding them (for "
                          "fashion_mnist, `sudo apt-get install dataset-fashion-mnist` installs "
                          f"them in {DEFAULT_FASHION_MNIST_DIR}, the default), or drop --data_dir "
                          "to read the data set from TFDS (--tfds_data_dir).")
    try:
        return _load_tfds(config, split)
    except ConfigError as error:
        raise ConfigError(f"No Fashion-MNIST data: IDX files not found (tried {', '.join(tried)}) "
                          f"and TFDS failed ({error}). Fix: {_FIX_FASHION}.") from error


def _find_idx_files(data_dir: str, split: str) -> Tuple[Optional[Tuple[str, str]], List[str]]:
    """Returns ((images_path, labels_path) or None, every path tried)."""
    prefix = _IDX_PREFIX[split]
    found, tried = [], []
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [os.path.join(data_dir, f"{prefix}-{kind}-ubyte{ext}") for ext in (".gz", "")]
        tried.extend(candidates)
        existing = [path for path in candidates if tf.io.gfile.exists(path)]
        if existing:
            found.append(existing[0])
    return (tuple(found) if len(found) == 2 else None), tried


def _load_idx_split(images_path: str, labels_path: str, name: str) -> ImageData:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    fix = "reinstall (`sudo apt-get install --reinstall dataset-fashion-mnist`) or re-download it"
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(f"{images_path}: expected 3-D uint8 images (N, H, W), got "
                          f"{images.ndim}-D {images.dtype}; {fix}.")
    if labels.ndim != 1:
        raise ConfigError(f"{labels_path}: expected 1-D labels, got {labels.ndim}-D; {fix}.")
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                          f"{labels.shape[0]} labels; {fix}.")
    return ImageData(images=images[..., np.newaxis], labels=labels.astype(np.int64), name=name)


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or raw) into a native-endian numpy array.

    Format (yann.lecun.com/exdb/mnist): magic = 0x00 0x00 <type code> <ndim>, then ndim big-endian
    uint32 sizes, then the data in row-major big-endian order. Raises ConfigError naming the file if
    it is missing, not gzip-valid, has a wrong magic number or a size not matching its header.
    """
    fix = "reinstall or re-download it"
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file name says
            raw = gzip.decompress(raw)
    except tf.errors.NotFoundError as error:
        raise ConfigError(f"IDX file {path} not found.") from error
    except (OSError, EOFError, zlib.error, tf.errors.OpError) as error:
        raise ConfigError(f"Cannot read IDX file {path} ({error}); {fix}.") from error
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ConfigError(f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'}, "
                          f"expected 000008<ndim> for uint8); {fix}.")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{path} is truncated inside its header; {fix}.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(f"{path} has {len(raw)} bytes but its header {shape} implies {expected} "
                          f"(truncated or corrupt); {fix}.")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _load_tfds(config: Config, split: str):
    """A TFDS split -> ImageData, or ImageRows (its decoded copy in --cache_dir) for a train
    split that --in_memory says to stream; TFDS failures (no network, unknown name) become
    ConfigError."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel; slow import

    name, data_dir = config.dataset, config.tfds_data_dir or None
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    try:
        dataset, info = tfds.load(name, split=split, data_dir=data_dir,
                                  download=config.tfds_download, with_info=True)
    except Exception as error:  # pylint: disable=broad-except; TFDS raises many unrelated types
        message = " ".join(str(error).split())
        raise ConfigError(
            f"TFDS data set {name!r} split {split!r} is not available in {where}: "
            f"{type(error).__name__}: {message[:300]}. Fix: check --dataset, then prepare it on a "
            f"machine with network (`tfds build {name} --data_dir=DIR`) and pass "
            "--tfds_data_dir=DIR.") from error
    if not isinstance(dataset.element_spec, dict) or "image" not in dataset.element_spec:
        raise ConfigError(f"TFDS data set {name!r} has no 'image' feature; it is not an image "
                          "data set.")
    preprocess, shape = _tfds_preprocess(config, dataset.element_spec["image"].shape)
    has_label = "label" in dataset.element_spec

    def select(example):
        label = tf.cast(example["label"], tf.int64) if has_label else tf.constant(0, tf.int64)
        return preprocess(example["image"]), label

    dataset = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = tfds.as_numpy(dataset.batch(1024))
    if split == "train" and streams(config, _tfds_size(info, split), shape):
        if not config.cache_dir:
            raise ConfigError(f"Streaming TFDS data set {name!r} (--in_memory) reads its decoded "
                              "copy: pass --cache_dir=DIR (a local directory with room for it), "
                              "or --in_memory=true.")
        return _tfds_rows(batches, config, split, shape, str(info.version))
    images, labels = _to_numpy(batches)
    if images.shape[0] == 0:
        raise ConfigError(f"TFDS data set {name!r} split {split!r} in {where} is empty.")
    names = getattr(info.features["label"], "names", None) if has_label else None
    return ImageData(images=images, labels=labels, name=f"{name}/{split}",
                     class_names=tuple(names or ()))


def _tfds_size(info, split: str) -> int:
    """The number of examples TFDS's metadata records for `split` (0 when it has none)."""
    try:
        return int(info.splits[split].num_examples)
    except KeyError:
        return 0


def _tfds_rows(batches, config: Config, split: str, shape, version: str) -> ImageRows:
    """The decoded copy of a TFDS split in --cache_dir, written on first use in TFDS's order."""
    name = f"{config.dataset}/{split}"
    base = _cache_base(config.cache_dir, config.dataset,
                       [name, version, config.tfds_data_dir, shape, folders.crop_of(config)])
    if not os.path.exists(base + ".json"):
        logging.info("Writing the decoded images of %s into %s.u8 (once).", name, base)
        _write_rows(batches, base, lambda labels: {
            "labels": np.concatenate(labels).tolist() if labels else [], "image_shape": shape})
    with open(base + ".json") as f:
        labels = np.array(json.load(f)["labels"], np.int64)
    if labels.size == 0:
        raise ConfigError(f"TFDS data set {name!r} is empty.")
    logging.info("Reading %d decoded images of %s from %s.u8.", labels.size, name, base)
    return ImageRows(base + ".u8", labels, tuple(shape), name)


def _tfds_preprocess(config: Config, image_shape: tf.TensorShape):
    """(the per-image uint8 [H, W, C] -> uint8 [H', W', C] map of a TFDS data set, (H', W', C))."""
    channels = int(image_shape[-1])
    if config.dataset == "celeb_a":
        size = config.image_size or CELEBA_SIZE
        return (lambda image: center_crop_and_resize(image, config.celeba_crop, size),
                (size, size, channels))
    if image_shape.is_fully_defined() and config.image_size in (0, image_shape[0]) and (
            image_shape[0] == image_shape[1]):
        return lambda image: image, tuple(int(d) for d in image_shape)
    if not config.image_size:
        raise ConfigError(f"TFDS data set {config.dataset!r} has images of varying size "
                          f"{image_shape}: set --image_size.")
    size = config.image_size
    return lambda image: folders.resize_images(image, size), (size, size, channels)


def _to_numpy(batches) -> Tuple[np.ndarray, np.ndarray]:
    image_chunks, label_chunks = [], []
    for images, labels in batches:
        image_chunks.append(images)
        label_chunks.append(labels)
    if not image_chunks:
        return np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(image_chunks), np.concatenate(label_chunks).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Image preprocessing (tf ops, uint8 in and out).


def center_crop_and_resize(images: tf.Tensor, crop: int, size: int) -> tf.Tensor:
    """uint8 [..., H, W, C] -> central crop x crop square -> uint8 [..., size, size, C].

    For CelebA (218 x 178) with crop=140 this keeps rows 39..178 and columns 19..158, as the
    paper's code does (PIL crop of the centre 140 x 140, then an antialiased resize to 64 x 64).
    """
    height, width = images.shape[-3], images.shape[-2]
    if crop > height or crop > width:
        raise ConfigError(f"--celeba_crop={crop} exceeds the image size {height}x{width}.")
    top, left = (height - crop) // 2, (width - crop) // 2
    cropped = images[..., top:top + crop, left:left + crop, :]
    return folders.resize_images(cropped, size)


def _resize_array(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """numpy uint8 [N, H, W, C] -> uint8 [N, size, size, C], in chunks to bound memory."""
    out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
    for start in range(0, images.shape[0], chunk):
        out[start:start + chunk] = folders.resize_images(images[start:start + chunk],
                                                         size).numpy()
    return out


def to_float(images_uint8: tf.Tensor) -> tf.Tensor:
    """uint8 images -> float32 in [0, 1] (x / 255), the networks' input range."""
    return tf.cast(images_uint8, tf.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# tf.data streams.


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Full global batches per epoch; the remainder of each epoch's permutation is dropped."""
    return int(num_examples) // int(global_batch)


def _index_batches(num_examples: int, global_batch: int, seed: int,
                   start_step: int) -> tf.data.Dataset:
    """int32 [global_batch] example indices of every step from `start_step` on.

    Epoch e visits the examples in the order of a permutation that depends only on (seed, e)
    (stateless shuffle), cut into steps_per_epoch(N, global_batch) batches (the remainder is
    dropped, so each epoch skips a different subset of at most global_batch - 1 examples).
    Starting at step k equals the uninterrupted stream from its k-th batch on: whole epochs are
    skipped arithmetically and the rest on index batches, before any image work.
    """
    steps = steps_per_epoch(num_examples, global_batch)
    if global_batch <= 0 or steps == 0:
        raise ConfigError(f"--batch_size={global_batch} must be in [1, {num_examples}] "
                          "(the number of training images).")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    seed = int(seed)

    def epoch_batches(epoch):  # int64 scalar -> dataset of int32 [global_batch] index batches
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        order = tf.reshape(order[:steps * global_batch], [steps, global_batch])
        return tf.data.Dataset.from_tensor_slices(order)

    first_epoch, skip = divmod(int(start_step), steps)
    return tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches).skip(skip)


def make_train_dataset(data: ImageData, global_batch: int, seed: int,
                       start_step: int = 0) -> tf.data.Dataset:
    """An infinite stream of float32 [global_batch, H, W, C] image batches in [0, 1], in the
    order of _index_batches (deterministic from --seed, resumable at any step)."""
    images = tf.constant(data.images)  # uint8 [N, H, W, C], captured once by the map below
    dataset = _index_batches(data.num_examples, global_batch, seed, start_step)
    dataset = dataset.map(lambda index: to_float(tf.gather(images, index)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_train_options())


def make_replica_stream(data, global_batch: int, seed: int, start_step: int,
                        context: tf.distribute.InputContext) -> tf.data.Dataset:
    """float32 [local_batch, H, W, C] batches of the replicas this input pipeline (worker)
    feeds, in replica order: the rows of _index_batches that N replicas take from a global
    batch, so each worker reads and decodes only its share of the files."""
    replicas = context.num_replicas_in_sync
    local = context.get_per_replica_batch_size(global_batch)
    per_pipeline = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * per_pipeline
    rows = _index_batches(data.num_examples, global_batch, seed, start_step).map(
        lambda index: tf.reshape(index, [replicas, local])[first:first + per_pipeline]).unbatch()
    shape = data.image_shape
    if isinstance(data, ImageRows):
        images = rows.map(lambda index: tf.ensure_shape(
            tf.numpy_function(data.read, [index], tf.uint8, stateful=False), [local, *shape]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        paths, decode = tf.constant(list(data.files.paths)), folders.decoder(data.files)
        images = rows.unbatch().map(lambda i: decode(tf.gather(paths, i)),
                                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        images = images.batch(local, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return images.map(to_float).prefetch(tf.data.AUTOTUNE).with_options(options)


def _row_reader(path: str, shape):
    """indices [b] -> uint8 [b, *shape]: rows of a cache file read with pread (page cache, not
    this process's memory)."""
    row = int(np.prod(shape))

    def read(indices):
        out = np.empty((len(indices), row), np.uint8)
        with open(path, "rb") as f:  # one open per batch: no descriptor outlives the stream
            for k, i in enumerate(indices):
                out[k] = np.frombuffer(os.pread(f.fileno(), row, int(i) * row), np.uint8)
        return out.reshape((len(indices), *shape))
    return read


def distribute(strategy: tf.distribute.Strategy, data, global_batch: int, seed: int,
               start_step: int = 0):
    """The training stream of `data` (ImageData, ImageFiles or ImageRows) as the strategy's
    distributed dataset: every replica gets its consecutive rows of each global batch."""
    if isinstance(data, STREAMED):
        return strategy.distribute_datasets_from_function(
            lambda context: make_replica_stream(data, global_batch, seed, start_step, context))
    return strategy.experimental_distribute_dataset(
        make_train_dataset(data, global_batch, seed, start_step))


def materialize(data, limit: int, seed: int = 0) -> ImageData:
    """`data` in memory: ImageData as it is, a streamed split as a seeded subset of at most
    `limit` images (e.g. to train the evaluation's classifier on it)."""
    if isinstance(data, ImageData):
        return data
    keep = np.arange(data.num_examples)
    if data.num_examples > limit:
        keep = np.sort(np.random.default_rng(seed).choice(data.num_examples, limit, replace=False))
    if isinstance(data, ImageRows):
        return ImageData(images=data.read(keep), labels=data.labels[keep], name=data.name)
    images, files = folders.decode_split(data.files.select(list(keep)), skip_bad=True)
    return ImageData(images=images, labels=files.labels, name=files.name)


def _train_options() -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_deterministic = True
    # Shard by element for tf.distribute multi-worker input (there are no files to shard).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def make_eval_dataset(data: ImageData, batch: int) -> tf.data.Dataset:
    """One ordered pass: (float32 [b, H, W, C] in [0, 1], int64 [b]) with b = batch, the last
    batch holding the remainder."""
    if batch <= 0:
        raise ConfigError(f"Evaluation batch size must be positive, got {batch}.")
    images = tf.constant(data.images)  # uint8 [N, H, W, C]
    labels = tf.constant(data.labels, tf.int64)  # [N]
    dataset = tf.data.Dataset.range(data.num_examples).batch(batch)
    dataset = dataset.map(lambda index: (to_float(tf.gather(images, index)),
                                         tf.gather(labels, index)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_deterministic = True
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
