"""Codes of every image in a folder from an exported SavedModel, through the training pipeline.

The images are decoded, cropped and resized as training did (wae_tf.data, with the settings
the export recorded in assets.extra/wae_config.json), then sent in batches to the export's
`encode` signature, so the codes equal what a served model returns for the same images.
"""

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


def encode_folder(saved_model: str, images_dir: str, out_path: str, batch_size: int = 256,
                  skip_bad_images: bool = False) -> dict:
    """Write `out_path` (.npz): codes float32 [N, z_dim], files [N] (paths relative to
    images_dir) and skipped (files that could not be decoded); returns counts."""
    path = saved_model_lib.latest_version(saved_model)
    record = fileio.read_json(os.path.join(path, saved_model_lib.CONFIG_ASSET))
    config = config_lib.from_dict(record)
    size, _, channels = record["image_shape"]
    encode = tf.saved_model.load(path).signatures["encode"]
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
    relative = [os.path.relpath(p, images_dir) for p in names]
    result = dict(codes=np.concatenate(codes) if codes else np.zeros((0, config.z_dim), np.float32),
                  files=np.array(relative), skipped=np.array(
                      [os.path.relpath(p, images_dir) for p in skipped]))
    buffer = io.BytesIO()
    np.savez(buffer, **result)
    fileio.write_bytes(out_path, buffer.getvalue())
    logging.info("Encoded %d images (%d skipped) into %s.", len(names), len(skipped), out_path)
    return dict(num_encoded=len(names), num_skipped=len(skipped), out=out_path,
                saved_model=path)


def _skipped(paths: List[str], decoded: List[str], skip_bad_images: bool) -> List[str]:
    """The files that were not decoded: a ConfigError naming the first unless skipping."""
    missing = sorted(set(paths) - set(decoded))
    if missing and not skip_bad_images:
        raise ConfigError(f"Cannot decode {missing[0]} ({len(missing)} of {len(paths)} files "
                          "unreadable): fix or remove them, or pass --skip_bad_images.")
    return missing
