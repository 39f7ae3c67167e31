"""Image grids for TensorBoard and PNG files."""

import numpy as np
import tensorflow as tf


def image_grid(images, columns: int = 8, dtype=np.float32) -> np.ndarray:
    """Tile images [N,H,W,C] in [0,1] (or uint8 with dtype=np.uint8) into one
    [rows*H, columns*W, C] array of `dtype`."""
    images = np.asarray(images, dtype=dtype)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w, c), dtype)
    padded[:n] = images
    grid = padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * h, columns * w, c)


def side_by_side(originals, reconstructions, columns: int = 8) -> np.ndarray:
    """Grid whose odd columns are originals and even columns their reconstructions."""
    pairs = np.stack([np.asarray(originals), np.asarray(reconstructions)], axis=1)
    return image_grid(pairs.reshape((-1,) + pairs.shape[2:]), columns=2 * columns)


def save_png(path: str, grid) -> None:
    """Write a [H,W,C] float image in [0,1] (or uint8) as an 8-bit PNG (through tf.io.gfile)."""
    if getattr(grid, "dtype", None) == np.uint8:
        pixels = grid
    else:
        pixels = tf.cast(tf.round(tf.clip_by_value(grid, 0.0, 1.0) * 255.0), tf.uint8)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(pixels).numpy())



def read_png(path: str) -> np.ndarray:
    """A PNG file as a [H,W,C] float32 image in [0,1]."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return tf.io.decode_png(f.read()).numpy().astype(np.float32) / 255.0


def hstack(images, gap: int = 8) -> np.ndarray:
    """Images [H_i,W_i,C] side by side on white, top-aligned, `gap` pixels apart."""
    height = max(image.shape[0] for image in images)
    channels = max(image.shape[2] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = np.ones((height, width, channels), np.float32)
    left = 0
    for image in images:
        canvas[:image.shape[0], left:left + image.shape[1]] = image  # gray broadcasts to RGB
        left += image.shape[1] + gap
    return canvas
