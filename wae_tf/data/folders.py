"""Folders of image files and CelebA's official files: listing, splits, class labels, bad files.

Layout, as keras.utils.image_dataset_from_directory reads it: files anywhere below DIR; if
DIR/train and DIR/test exist they are the splits, otherwise each file's split is fixed by a hash
of (--seed, its path relative to DIR), so adding files never moves another file between splits.
The first-level sub-folder names are the class labels when there are several, else every label is
0. Each image is decoded, centre cropped (--crop) and resized to --image_size by wae_tf.data.images.
"""

import dataclasses
import hashlib
import os
from typing import List, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf.config import Config
from wae_tf.data import images as images_lib
from wae_tf.errors import ConfigError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # tf.io.decode_image reads them
DEFAULT_SIZE = 64  # --image_size=0 on a folder: the paper's 64x64 networks
_HASH_BUCKETS = 10 ** 6


def list_images(directory: str) -> List[str]:
    """Image file paths below `directory` (recursive, by extension), sorted."""
    if not tf.io.gfile.isdir(directory):
        raise ConfigError(f"--data_dir={directory!r} is not a directory of images.")
    paths = [os.path.join(root, name) for root, _, names in tf.io.gfile.walk(directory)
             for name in names if name.lower().endswith(EXTENSIONS)]
    return sorted(paths)


def in_test_split(relative_path: str, seed: int, test_fraction: float) -> bool:
    """Whether a file belongs to the held-out split: a hash of (seed, path) below the fraction."""
    digest = hashlib.sha256(f"{seed}/{relative_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _HASH_BUCKETS < test_fraction * _HASH_BUCKETS


def has_split_folders(root: str) -> bool:
    """Whether `root` holds train/ and test/, which then are the splits."""
    return all(tf.io.gfile.isdir(os.path.join(root, name)) for name in ("train", "test"))


def split_files(config: Config, split: str) -> Tuple[str, List[str]]:
    """(the directory labels are relative to, the files of `split`)."""
    root = config.data_dir
    if has_split_folders(root):
        base = os.path.join(root, split)
        return base, list_images(base)
    files = list_images(root)
    held_out = split == "test"
    return root, [p for p in files if in_test_split(
        os.path.relpath(p, root), config.seed, config.test_fraction) == held_out]


def _class_folders(base: str, paths: List[str]) -> List[str]:
    """Each file's first-level sub-folder below `base` ("" for a file directly in it)."""
    return [os.path.relpath(p, base).split(os.sep)[0] if os.sep in os.path.relpath(p, base)
            else "" for p in paths]


def class_names(base: str, paths: List[str]) -> Tuple[str, ...]:
    """The classes, sorted: the first-level sub-folders when there are several, else ()."""
    names = sorted(set(_class_folders(base, paths)))
    return tuple(names) if len(names) > 1 else ()


def class_labels(base: str, paths: List[str]) -> np.ndarray:
    """int64 [N]: the index of each file's first-level sub-folder in class_names (0 if none)."""
    index = {name: i for i, name in enumerate(class_names(base, paths))}
    return np.array([index.get(f, 0) for f in _class_folders(base, paths)], np.int64)


def decoder(files: "FileSplit"):
    """path (string tensor) -> uint8 [size, size, channels], as training decodes `files`."""
    fn = images_lib.preprocess(files.size, files.channels, files.crop)
    return lambda path: fn(tf.io.read_file(path))


def crop_of(config: Config) -> int:
    """The centre crop training applied to files: --celeba_crop for CelebA, else --crop."""
    return config.celeba_crop if config.dataset == "celeb_a" else config.crop


def image_dataset(paths: List[str], size: int, channels: int, crop: int) -> tf.data.Dataset:
    """(path, uint8 [size, size, channels]) per readable file, in order, decoded in parallel;
    files that cannot be decoded are left out (compare the paths to find them)."""
    fn = images_lib.preprocess(size, channels, crop)
    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: (p, fn(tf.io.read_file(p))), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    return dataset.ignore_errors()


def decode_error(path: str, files: "FileSplit") -> str:
    """Why one file cannot be decoded (TF's message, shortened), for the error naming it."""
    try:
        decoder(files)(tf.constant(path))
    except (tf.errors.OpError, ValueError) as error:
        return " ".join(str(error).split())[:200]
    return ""


def _file_channels(path: str) -> int:
    """1 for a grayscale file (gray or gray+alpha), 3 otherwise; 0 if it cannot be decoded
    (decode_split reports it)."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        return 0
    return 1 if image.shape[-1] in (1, 2) else 3


@dataclasses.dataclass(frozen=True, eq=False)
class FileSplit:
    """One split's image files and how training decodes them."""
    paths: Tuple[str, ...]
    labels: np.ndarray  # int64 [N]
    name: str
    size: int  # side of the decoded images
    channels: int
    crop: int  # centre crop before resizing; 0: the largest centred square
    class_names: Tuple[str, ...] = ()  # label l is the sub-folder class_names[l]

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    def select(self, keep: List[int]) -> "FileSplit":
        """The files at positions `keep` (e.g. those that decode)."""
        return dataclasses.replace(self, paths=tuple(self.paths[i] for i in keep),
                                   labels=self.labels[keep])


def list_split(config: Config, split: str) -> FileSplit:
    """The files of one split: --dataset=folder, or CelebA's official files in --data_dir."""
    size = config.image_size or DEFAULT_SIZE
    if config.dataset == "celeb_a":
        paths = celeba_files(config.data_dir, split)
        if not paths:
            raise ConfigError(f"{CELEBA_PARTITION} in {config.data_dir!r} lists no {split} "
                              "images.")
        return FileSplit(tuple(paths), np.zeros(len(paths), np.int64),
                         f"celeb_a {config.data_dir} ({split})", size, 3, config.celeba_crop)
    base, paths = split_files(config, split)
    if not paths:
        raise ConfigError(f"No {split} images ({', '.join(EXTENSIONS)}) under {base!r}: check "
                          "--data_dir (and --test_fraction if it has no train/ and test/).")
    channels = config.channels or max(_file_channels(p) for p in paths[:64]) or 3
    return FileSplit(tuple(paths), class_labels(base, paths), f"folder {base} ({split})", size,
                     channels, config.crop, class_names(base, paths))


# The official CelebA files (mmlab.ie.cuhk.edu.hk/projects/CelebA.html), downloaded by hand.
CELEBA_IMAGES = "img_align_celeba"
CELEBA_PARTITION = "list_eval_partition.txt"
_CELEBA_PARTS = {"train": "0", "validation": "1", "test": "2"}


def celeba_files(data_dir: str, split: str) -> List[str]:
    """The official split's aligned images: list_eval_partition.txt lines `<file> <0|1|2>`."""
    partition = os.path.join(data_dir, CELEBA_PARTITION)
    if not tf.io.gfile.exists(partition) or not tf.io.gfile.isdir(
            os.path.join(data_dir, CELEBA_IMAGES)):
        raise ConfigError(f"--data_dir={data_dir!r} must hold CelebA's {CELEBA_IMAGES}/ folder and "
                          f"{CELEBA_PARTITION} (the official aligned images and split).")
    with tf.io.gfile.GFile(partition) as f:
        rows = [line.split() for line in f if line.strip()]
    bad = [row for row in rows if len(row) != 2 or row[1] not in _CELEBA_PARTS.values()]
    if bad:
        raise ConfigError(f"{partition}: expected lines '<file> <0|1|2>', "
                          f"got {' '.join(bad[0])!r}.")
    return [os.path.join(data_dir, CELEBA_IMAGES, name) for name, part in rows
            if part == _CELEBA_PARTS[split]]


def decode_split(files: FileSplit, skip_bad: bool) -> Tuple[np.ndarray, FileSplit]:
    """(uint8 [N, size, size, channels], the files decoded) in memory: unreadable files are a
    ConfigError naming the first, or with `skip_bad` left out and counted in the log."""
    chunks, decoded = [], set()
    for paths, images in image_dataset(list(files.paths), files.size, files.channels,
                                       files.crop).batch(256):
        chunks.append(images.numpy())
        decoded.update(p.decode() for p in paths.numpy())
    bad = set(files.paths) - decoded
    kept = check_unreadable(files, bad, skip_bad, decode_error(min(bad), files) if bad else "")
    if not chunks:  # check_unreadable raised already unless there were no files
        raise ConfigError(f"No image files in {files.name}.")
    return np.concatenate(chunks), kept


def check_unreadable(files: FileSplit, bad: set, skip_bad: bool, reason: str = "") -> FileSplit:
    """`files` without the unreadable ones if `skip_bad` (logged), else a ConfigError naming one."""
    if not bad:
        return files
    first = sorted(bad)[0]
    if not skip_bad:
        detail = f" ({reason})" if reason else ""
        raise ConfigError(f"Cannot decode {first}{detail}; {len(bad)} of {len(files.paths)} files "
                          "are unreadable: fix or remove them, or pass --skip_bad_images to leave "
                          "them out.")
    logging.warning("Skipped %d unreadable image files of %d, e.g. %s.", len(bad),
                    len(files.paths), first)
    keep = [i for i, path in enumerate(files.paths) if path not in bad]
    if not keep:
        raise ConfigError(f"None of the {len(files.paths)} image files could be decoded.")
    return files.select(keep)
