"""The one image preprocessing: encoded bytes -> decoded, centre cropped, resized uint8 -> float."""

import os
import stat

import numpy as np
import tensorflow as tf

from wae_tf.errors import ConfigError


def decode(contents: tf.Tensor, channels: int) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, BMP, GIF, WebP) -> uint8 [H, W, channels]; a GIF's first frame,
    grayscale when channels == 1."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)  # [H, W, 3]
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)  # [H, W, 1]
    return image


def check_image_file(path: str, flag: str) -> None:
    """A ConfigError naming `flag` unless `path` is a regular file (or a link to one): reading a
    FIFO, a socket or a device named *.png would block for ever or never end."""
    if "://" in path:  # gs:// and the other file systems of tf.io.gfile: only files
        return
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise ConfigError(f"{flag}={path}: {error.strerror}; pass an image file.") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode)
                else "not a regular file (a FIFO, socket or device)")
        raise ConfigError(f"{flag}={path} is {kind}: pass an image file.")


def center_crop(images: tf.Tensor, crop: int) -> tf.Tensor:
    """uint8 [H, W, C] or [N, H, W, C] -> the centred crop x crop square [..., crop, crop, C];
    crop=0: the largest centred square.

    The top-left corner is ((H - crop) // 2, (W - crop) // 2): for CelebA (218 x 178) with
    crop=140 this keeps rows 39..178 and columns 19..158, as the paper's code does (PIL crop of the
    centre 140 x 140). A crop larger than the image is never padded: a ConfigError when the size
    is known as the graph is built, else an InvalidArgumentError when it runs (a decoded file,
    which its caller then names).
    """
    height, width = images.shape[-3], images.shape[-2]
    if crop and height is not None and width is not None and crop > min(height, width):
        raise ConfigError(f"The centre crop {crop} exceeds the image size {height}x{width}: "
                          "lower --crop (--celeba_crop for CelebA).")
    shape = tf.shape(images)
    if not crop:
        crop = tf.minimum(shape[-3], shape[-2])
    else:
        fits = tf.debugging.Assert(crop <= tf.minimum(shape[-3], shape[-2]), [tf.strings.format(
            "The centre crop {} exceeds the image size {}x{}: lower --crop (--celeba_crop for "
            "CelebA).", (crop, shape[-3], shape[-2]))])
        with tf.control_dependencies([fits]):
            images = tf.identity(images)
    return tf.image.resize_with_crop_or_pad(images, crop, crop)


def resize_images(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [H, W, C] or [N, H, W, C] -> uint8 [..., size, size, C], antialiased bilinear,
    rounded."""
    resized = tf.image.resize(tf.cast(images, tf.float32), [size, size], method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def center_crop_and_resize(images: tf.Tensor, crop: int, size: int) -> tf.Tensor:
    """uint8 [H, W, C] or [N, H, W, C] -> centre crop -> uint8 [..., size, size, C]: how every
    source (folders, CelebA's files, TFDS celeb_a, the REST client) prepares a photograph."""
    return resize_images(center_crop(images, crop), size)


def preprocess(size: int, channels: int, crop: int):
    """A function: encoded bytes -> uint8 [size, size, channels], decoded (decode), centre cropped
    to crop x crop (0: the largest centred square) and resized (antialiased)."""
    return lambda contents: center_crop_and_resize(decode(contents, channels), crop, size)


def resize_array(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """numpy uint8 [N, H, W, C] -> uint8 [N, size, size, C], in chunks to bound memory."""
    out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
    for start in range(0, images.shape[0], chunk):
        out[start:start + chunk] = resize_images(images[start:start + chunk], size).numpy()
    return out


def to_float(images_uint8: tf.Tensor) -> tf.Tensor:
    """uint8 images -> float32 in [0, 1] (x / 255), the networks' input range."""
    return tf.cast(images_uint8, tf.float32) / 255.0
