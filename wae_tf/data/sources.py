"""Where a split comes from: IDX files, TFDS, folders or CelebA's files, chosen by --dataset.

Sources:
  * Fashion-MNIST / MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...), by default the Debian
    package `dataset-fashion-mnist` in DEFAULT_FASHION_MNIST_DIR;
  * a folder of your images (`--dataset=folder`), or CelebA's official files (wae_tf.data.folders);
  * any tensorflow-datasets image data set, downloaded and prepared by TFDS where there is network
    (`--tfds_download`, default) or already prepared in `--tfds_data_dir` (celeb_a is centre
    cropped to `celeba_crop` and resized to 64x64 as in the paper, by wae_tf.data.images).

A split is held in host memory as uint8 [N, H, W, C] (ImageData), or a train split larger than
memory (--in_memory) is streamed: from its files, decoded while training (ImageFiles), or from a
decoded copy written once to --cache_dir and read by rows (ImageRows, wae_tf.data.cache; the only
streaming form for TFDS, whose records have no random access). Never falls back to other or
random data.
"""

import dataclasses
import gzip
import os
import struct
import zlib
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from wae_tf.config import DEFAULT_FASHION_MNIST_DIR, Config
from wae_tf.data import cache, folders
from wae_tf.data import images as images_lib
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
_FIX_FASHION = ("install the Debian package (`sudo apt-get install dataset-fashion-mnist`), or "
                "pass "
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
    def class_names(self) -> Tuple[str, ...]:
        return self.files.class_names

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
        return cache.row_reader(self.path, self.image_shape)(indices)


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
        data = dataclasses.replace(data, images=images_lib.resize_array(data.images,
                                                                        config.image_size))
    return data


def _load_files(config: Config, split: str):
    """A folder's or CelebA's files: in memory (ImageData), or streamed (ImageFiles, or
    ImageRows with --cache_dir) for a train split that --in_memory says to stream."""
    files = folders.list_split(config, split)
    if split == "train" and streams(config, len(files.paths), files.image_shape):
        if not config.cache_dir:  # unchecked files stop the run at the first bad one
            return ImageFiles(folders.readable_files(files) if config.skip_bad_images else files)
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


def cached_files(files: folders.FileSplit, cache_dir: str, skip_bad: bool) -> ImageRows:
    """`files` read by rows from their decoded copy in `cache_dir` (written on first use):
    unreadable files are a ConfigError naming one, or with `skip_bad` left out."""
    path, kept = cache.decoded_files(files, cache_dir)
    files = folders.check_unreadable(
        files, set(files.paths) - set(files.paths[i] for i in kept), skip_bad)
    return ImageRows(path, files.labels, files.image_shape, files.name)


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
    """An images and a labels IDX file -> ImageData, checked against each other."""
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
    base = cache.cache_base(config.cache_dir, config.dataset,
                            [name, version, config.tfds_data_dir, shape, folders.crop_of(config)])
    path, labels = cache.decoded_batches(batches, base, name, shape)
    if labels.size == 0:
        raise ConfigError(f"TFDS data set {name!r} is empty.")
    return ImageRows(path, labels, tuple(shape), name)


def _tfds_preprocess(config: Config, image_shape: tf.TensorShape):
    """(the per-image uint8 [H, W, C] -> uint8 [H', W', C] map of a TFDS data set, (H', W', C))."""
    channels = int(image_shape[-1])
    if config.dataset == "celeb_a":
        size = config.image_size or CELEBA_SIZE
        return (lambda image: images_lib.center_crop_and_resize(image, config.celeba_crop, size),
                (size, size, channels))
    if image_shape.is_fully_defined() and config.image_size in (0, image_shape[0]) and (
            image_shape[0] == image_shape[1]):
        return lambda image: image, tuple(int(d) for d in image_shape)
    if not config.image_size:
        raise ConfigError(f"TFDS data set {config.dataset!r} has images of varying size "
                          f"{image_shape}: set --image_size.")
    size = config.image_size
    return lambda image: images_lib.resize_images(image, size), (size, size, channels)


def _to_numpy(batches) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, H, W, C], int64 [N]) from (images, labels) batches; empty arrays if none."""
    image_chunks, label_chunks = [], []
    for images, labels in batches:
        image_chunks.append(images)
        label_chunks.append(labels)
    if not image_chunks:
        return np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(image_chunks), np.concatenate(label_chunks).astype(np.int64)
