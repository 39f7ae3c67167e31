"""Codes of every image in a folder from an exported SavedModel, through the training pipeline.

The images are decoded, cropped and resized as training did (wae_tf.data, with the settings
the export recorded in assets.extra/wae_config.json), then sent in batches to the export's
`encode` signature, so the codes equal what a served model returns for the same images. The
output's format follows its extension (FORMATS): .npz, .npy or .csv.
"""

import csv
import io
import os
import time
from typing import List

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import config as config_lib
from wae_tf import data, fileio
from wae_tf.errors import ConfigError
from wae_tf.serving import saved_model as saved_model_lib

PROGRESS_SECONDS = 10.0
# --out's extension -> what it holds.
FORMATS = {".npz": "codes, files, labels, split, classes and skipped (numpy arrays)",
           ".npy": "the codes alone, float32 [N, z_dim]",
           ".csv": "a header, then file,label,split,z0..z<N-1> per image"}


def check_out_path(out_path: str) -> str:
    """The output format of `out_path` (its extension), or a ConfigError naming --out."""
    ext = os.path.splitext(out_path)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"--out={out_path}: unknown format {ext or '(no extension)'!r}; use "
                          + "; ".join(f"{e} ({about})" for e, about in FORMATS.items()) + ".")
    return ext


def encode_folder(saved_model: str, images_dir: str, out_path: str, batch_size: int = 256,
                  skip_bad_images: bool = False) -> dict:
    """Write the codes float32 [N, z_dim] of the images below `images_dir` to `out_path` in the
    format its extension names (FORMATS), with each file's path relative to images_dir, its
    class label and its split; returns counts."""
    check_out_path(out_path)
    if batch_size <= 0:
        raise ConfigError(f"--batch_size must be positive, got {batch_size}.")
    if not tf.io.gfile.isdir(images_dir):
        raise ConfigError(f"--images={images_dir} is not a directory: name the folder of images.")
    path, record, loaded = saved_model_lib.load_export(saved_model)
    config = config_lib.from_dict(record)
    size, _, channels = config_lib.record_image_shape(record)
    encode = loaded.signatures["encode"]
    paths = data.list_images(images_dir)
    if not paths:
        raise ConfigError(f"No images ({', '.join(data.EXTENSIONS)}) under {images_dir!r}.")
    dataset = data.image_dataset(paths, size, channels, data.crop_of(config))
    names, codes, last_report = [], [], time.time()
    for batch_paths, images in dataset.batch(batch_size).prefetch(2):
        codes.append(encode(images=data.to_float(images))["z"].numpy())  # [b, z_dim]
        names.extend(p.decode() for p in batch_paths.numpy())
        if time.time() - last_report > PROGRESS_SECONDS:
            logging.info("Encoded %d of %d images.", len(names), len(paths))
            last_report = time.time()
    skipped = _skipped(paths, names, skip_bad_images)
    labels, splits, classes = labels_and_splits(images_dir, names, config)
    result = dict(codes=np.concatenate(codes) if codes else np.zeros((0, config.z_dim), np.float32),
                  files=_as_str([os.path.relpath(p, images_dir) for p in names]),
                  labels=labels, split=_as_str(splits), classes=_as_str(classes),
                  skipped=_as_str([os.path.relpath(p, images_dir) for p in skipped]))
    fileio.write_bytes(out_path, encode_output(result, check_out_path(out_path)))
    logging.info("Encoded %d images (%d skipped) into %s.", len(names), len(skipped), out_path)
    return dict(num_encoded=len(names), num_skipped=len(skipped), out=out_path,
                saved_model=path)


def _as_str(values) -> np.ndarray:
    """A numpy array of strings, str-typed even when empty."""
    return np.array(list(values), dtype=str)


def labels_and_splits(images_dir: str, paths: List[str], config: config_lib.Config):
    """(labels int64 [N], splits [N] of "train"/"test", class names) of the files as training on
    this folder saw them: DIR/train and DIR/test are the splits if both exist, otherwise the hash
    of (--seed, path) the export's run used; labels index the first-level class folders."""
    if data.has_split_folders(images_dir):
        splits = [os.path.relpath(p, images_dir).split(os.sep)[0] for p in paths]
        labels, classes = np.zeros(len(paths), np.int64), ()
        for split in ("train", "test"):
            base = os.path.join(images_dir, split)
            rows = [i for i, s in enumerate(splits) if s == split]
            names = data.class_names(base, [paths[i] for i in rows])
            classes = classes or names
            labels[rows] = data.class_labels(base, [paths[i] for i in rows])
        return labels, splits, classes
    splits = ["test" if data.in_test_split(os.path.relpath(p, images_dir), config.seed,
                                           config.test_fraction) else "train" for p in paths]
    return data.class_labels(images_dir, paths), splits, data.class_names(images_dir, paths)


def encode_output(result: dict, ext: str) -> bytes:
    """The bytes of the output file in format `ext` (FORMATS)."""
    buffer = io.BytesIO()
    if ext == ".npz":
        np.savez(buffer, **result)
    elif ext == ".npy":
        np.save(buffer, result["codes"])
    else:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        z_dim = result["codes"].shape[1]
        writer.writerow(["file", "label", "split"] + [f"z{i}" for i in range(z_dim)])
        classes = list(result["classes"])
        for name, label, split, code in zip(result["files"], result["labels"], result["split"],
                                            result["codes"]):
            shown = classes[label] if classes else int(label)
            writer.writerow([name, shown, split] + [repr(float(v)) for v in code])
        return text.getvalue().encode()
    return buffer.getvalue()


def _skipped(paths: List[str], decoded: List[str], skip_bad_images: bool) -> List[str]:
    """The files that were not decoded: a ConfigError naming the first unless skipping."""
    missing = sorted(set(paths) - set(decoded))
    if missing and not skip_bad_images:
        raise ConfigError(f"Cannot decode {missing[0]} ({len(missing)} of {len(paths)} files "
                          "unreadable): fix or remove them, or pass --skip_bad_images.")
    return missing
