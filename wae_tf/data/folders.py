"""Folders of image files and CelebA's official files: listing, splits, class labels, bad files.

Layout, as keras.utils.image_dataset_from_directory reads it: files anywhere below DIR (regular
files, each once however many links reach it); if DIR/train and DIR/test exist they are the
splits, otherwise each file's split is fixed by a hash of (--seed, its path relative to DIR), so
adding files never moves another file between splits.
The first-level sub-folder names are the class labels when there are several, else every label is
0. Each image is decoded, centre cropped (--crop) and resized to --image_size by wae_tf.data.images.
"""

import dataclasses
import hashlib
import os
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf.config import Config
from wae_tf.data import images as images_lib
from wae_tf.errors import ConfigError, error_summary

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # tf.io.decode_image reads them
DEFAULT_SIZE = 64  # --image_size=0 on a folder: the paper's 64x64 networks
_HASH_BUCKETS = 10 ** 6
_LISTED = 10  # unreadable files named in the log line of those skipped
_WARNED = set()  # the non-regular files this process has warned of


def list_images(directory: str) -> List[str]:
    """Image file paths below `directory` (recursive, by extension), sorted; on a local disk only
    regular files (a FIFO named *.png blocks its reader for ever), each file once however many
    links reach it, and each directory once (a link loop such as `ln -s . d/loop` is walked
    once). A path that is not UTF-8 is a ConfigError naming it."""
    if not tf.io.gfile.isdir(directory):
        raise ConfigError(f"--data_dir={directory!r} is not a directory of images.")
    if "://" in directory:  # gs:// and the other file systems of tf.io.gfile: no links
        paths = [os.path.join(root, name) for root, _, names in tf.io.gfile.walk(directory)
                 for name in names if name.lower().endswith(EXTENSIONS)]
    else:
        paths, special = _walk_local(directory)
        if special and special[0] not in _WARNED:  # once, though each split lists the folder
            _WARNED.add(special[0])
            logging.warning("Left out %d file(s) named like images but not regular files (FIFO, "
                            "socket or device), e.g. %s.", len(special), special[0])
    for path in paths:
        _check_utf8(path)
    return sorted(paths)


def _walk_local(directory: str) -> Tuple[List[str], List[str]]:
    """(the image files below `directory`, the non-regular files named like images): depth
    first in name order, links followed, a directory entered once by its (st_dev, st_ino), a
    file kept under the first path of its real path."""
    found, special, entered, stack = {}, [], set(), [directory]
    while stack:
        root = stack.pop()
        try:
            status = os.stat(root)
            if (status.st_dev, status.st_ino) in entered:
                continue
            entered.add((status.st_dev, status.st_ino))
            with os.scandir(root) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            logging.warning("Cannot list %s (%s): the images below it are left out.", root,
                            error.strerror)
            continue
        real_root = os.path.realpath(root)
        subdirs = []
        for entry in entries:
            if entry.is_dir():  # follows links
                subdirs.append(entry.path)
            elif not entry.name.lower().endswith(EXTENSIONS):
                continue
            elif entry.is_file() or not os.path.exists(entry.path):  # a dangling link: named
                real = (os.path.realpath(entry.path) if entry.is_symlink()  # when decoded
                        else os.path.join(real_root, entry.name))
                found.setdefault(real, entry.path)
            else:
                special.append(entry.path)
        stack.extend(reversed(subdirs))
    return list(found.values()), special


def _check_utf8(path: str) -> None:
    """A ConfigError for a path whose bytes are not UTF-8 (Python holds them as surrogates; TF
    takes paths as UTF-8)."""
    try:
        path.encode()
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise ConfigError(f"The file name {shown} is not UTF-8: rename it (e.g. `convmv -f "
                          "latin1 -t utf8 -r --notest DIR`) or move it out of the "
                          "folder.") from None


def check_workdir(config: Config, workdir: str) -> None:
    """A ConfigError if `workdir` lies in a folder whose images --dataset=folder lists: the
    run's own PNGs (samples, reconstructions) would become its training and test images."""
    if config.dataset != "folder" or not workdir or "://" in config.data_dir + workdir:
        return
    splits = has_split_folders(config.data_dir)
    roots = [os.path.join(config.data_dir, s) for s in ("train", "test")] if splits else [
        config.data_dir]
    run = os.path.realpath(workdir)
    for root in roots:
        real = os.path.realpath(root)
        if os.path.commonpath([real, run]) == real:
            raise ConfigError(
                f"--workdir={workdir} is inside {root}, whose images are all read: the run's own "
                "PNGs would become training images. Put the run outside it, or the images in "
                "train/ and test/ sub-folders of --data_dir.")


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
        return error_summary(error)
    return ""


def _file_shape(path: str) -> Optional[Tuple[int, int, int]]:
    """(H, W, C) of an image file as stored; None if it cannot be read or decoded (decoding
    the split reports it)."""
    try:
        return tuple(tf.io.decode_image(tf.io.read_file(path), expand_animations=False).shape)
    except tf.errors.OpError:
        return None


def _sample_channels(paths: List[str], crop: int, sample: int = 64) -> int:
    """1 if the first `sample` files are all grayscale (gray or gray+alpha), else 3; a ConfigError
    if `crop` exceeds one of them (a crop is not padding)."""
    shapes = {p: shape for p in paths[:sample] if (shape := _file_shape(p))}  # [(H, W, C)]
    for path, (height, width, _) in shapes.items():
        if crop > min(height, width):
            raise ConfigError(f"--crop={crop} exceeds the size {height}x{width} of {path}: lower "
                              "--crop to at most the images' smaller side (0: the largest "
                              "centred square).")
    return 1 if shapes and all(shape[2] in (1, 2) for shape in shapes.values()) else 3


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
    # Both splits take the train split's channels: the networks' input is one shape.
    train = paths if split == "train" else split_files(config, "train")[1]
    sampled = _sample_channels(train or paths, config.crop)  # also checks --crop
    channels = config.channels or sampled
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
    ConfigError naming the first, or with `skip_bad` left out and listed in the log."""
    chunks, decoded = [], set()
    for paths, images in image_dataset(list(files.paths), files.size, files.channels,
                                       files.crop).batch(256):
        chunks.append(images.numpy())
        decoded.update(p.decode() for p in paths.numpy())
    kept = check_unreadable(files, set(files.paths) - decoded, skip_bad)
    if not chunks:  # check_unreadable raised already unless there were no files
        raise ConfigError(f"No image files in {files.name}.")
    return np.concatenate(chunks), kept


def readable_files(files: FileSplit) -> FileSplit:
    """`files` checked by one decoding pass that keeps no pixels (a stream without --cache_dir
    under --skip_bad_images): the unreadable ones left out and listed in the log."""
    logging.info("Decoding the %d files of %s once to find unreadable ones (--cache_dir keeps "
                 "the verdict).", len(files.paths), files.name)
    decoded = set()
    for paths, _ in image_dataset(list(files.paths), files.size, files.channels,
                                  files.crop).batch(256):
        decoded.update(p.decode() for p in paths.numpy())
    return check_unreadable(files, set(files.paths) - decoded, skip_bad=True)


def check_unreadable(files: FileSplit, bad: set, skip_bad: bool) -> FileSplit:
    """`files` without the unreadable ones if `skip_bad` (each listed in the log), else a
    ConfigError naming the first and why it failed."""
    if not bad:
        return files
    first = sorted(bad)[0]
    if not skip_bad:
        reason = decode_error(first, files)
        detail = f" ({reason})" if reason else ""
        raise ConfigError(f"Cannot decode {first}{detail}; {len(bad)} of {len(files.paths)} files "
                          "are unreadable: fix or remove them, or pass --skip_bad_images to leave "
                          "them out.")
    shown = sorted(bad)[:_LISTED]
    logging.warning("Skipped %d unreadable image files of %d: %s%s", len(bad), len(files.paths),
                    ", ".join(f"{p} ({decode_error(p, files)})" for p in shown),
                    ", ..." if len(bad) > len(shown) else ".")
    keep = [i for i, path in enumerate(files.paths) if path not in bad]
    if not keep:
        raise ConfigError(f"None of the {len(files.paths)} image files could be decoded.")
    return files.select(keep)
