"""Tests of wae_tf.data.images: decoding, the one centre crop and resize, uint8 -> float."""

import os

import numpy as np
import pytest
import tensorflow as tf

from wae_tf.data import images
from wae_tf.errors import ConfigError


def _ramp(height, width):
    """uint8 [height, width, 1], pixel (r, c) = 20 r + 6 c: a crop shows which pixels it kept."""
    rows, cols = np.mgrid[:height, :width]
    return (20 * rows + 6 * cols).astype(np.uint8)[..., np.newaxis]


def test_crop_then_resize_gives_hand_computed_pixels():
    image = _ramp(6, 4)
    # crop=2 of 6 x 4: rows (6 - 2) // 2 = 2..3, columns (4 - 2) // 2 = 1..2; a resize to the
    # same side changes nothing.
    np.testing.assert_array_equal(images.center_crop_and_resize(tf.constant(image), 2, 2)[..., 0],
                                  [[46, 52], [66, 72]])
    # Resized to 1 x 1 (antialiased bilinear, 2 -> 1): the mean (46 + 52 + 66 + 72) / 4.
    np.testing.assert_array_equal(images.center_crop_and_resize(tf.constant(image), 2, 1)[..., 0],
                                  [[59]])


def test_antialiased_resize_by_two_weighs_the_neighbours_by_a_triangle():
    # Each output pixel sees the inputs at distances 0.5, 0.5, 1.5 (in input pixels) with the
    # triangle weights 0.75, 0.75, 0.25 (the one beyond the edge dropped): (3a + 3b + c) / 7.
    ramp = np.tile(np.array([0, 70, 140, 210], np.uint8)[None, :, None], (4, 1, 1))  # [4, 4, 1]
    resized = images.resize_images(tf.constant(ramp), 2).numpy()[..., 0]
    left, right = (3 * 0 + 3 * 70 + 140) / 7, (70 + 3 * 140 + 3 * 210) / 7  # 50, 160
    np.testing.assert_array_equal(resized, [[left, right], [left, right]])


def test_crop_zero_is_the_largest_centred_square_also_when_the_size_is_known_only_when_run():
    image = _ramp(6, 4)
    expected = image[1:5]  # side min(6, 4) = 4, from row (6 - 4) // 2 = 1
    np.testing.assert_array_equal(images.center_crop(tf.constant(image), 0), expected)
    np.testing.assert_array_equal(images.center_crop(tf.constant(image[np.newaxis]), 0),
                                  expected[np.newaxis])
    unknown = tf.function(lambda x: images.center_crop(x, 0),
                          input_signature=[tf.TensorSpec([None, None, 1], tf.uint8)])
    np.testing.assert_array_equal(unknown(tf.constant(image)), expected)


def test_a_crop_larger_than_the_image_is_an_error_never_zero_padding():
    image = _ramp(6, 4)
    with pytest.raises(ConfigError, match="crop 5 exceeds the image size 6x4"):
        images.center_crop(tf.constant(image), 5)
    unknown = tf.function(lambda x: images.center_crop(x, 6),  # a decoded file's size
                          input_signature=[tf.TensorSpec([None, None, 1], tf.uint8)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="crop 6 exceeds the image size 6x4"):
        unknown(tf.constant(image))
    np.testing.assert_array_equal(unknown(tf.constant(_ramp(8, 6))), _ramp(8, 6)[1:7])


def test_only_a_regular_file_is_an_image_file(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"--image=.*fifo.png is not a regular file"):
        images.check_image_file(str(fifo), "--image")
    with pytest.raises(ConfigError, match="is a directory"):
        images.check_image_file(str(tmp_path), "--image")
    with pytest.raises(ConfigError, match="No such file"):
        images.check_image_file(str(tmp_path / "missing.png"), "--image")
    (tmp_path / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    images.check_image_file(str(tmp_path / "link.png"), "--image")  # a link to a file is one


def test_center_crop_keeps_only_the_centre():
    # CelebA geometry: 218 x 178; the central 140 x 140 (rows 39..178, cols 19..158) is 200, the
    # border 0 (rows) and 255 (columns): any leak would move the resized pixels away from 200.
    image = np.zeros((218, 178, 3), np.uint8)
    image[:, :19] = 255
    image[:, 159:] = 255
    image[39:179, 19:159] = 200
    result = images.center_crop_and_resize(tf.constant(image), 140, 64).numpy()
    assert result.shape == (64, 64, 3) and result.dtype == np.uint8
    np.testing.assert_array_equal(result, np.full((64, 64, 3), 200, np.uint8))
    # One pixel more of crop includes the border.
    wider = images.center_crop_and_resize(tf.constant(image), 142, 64).numpy()
    assert (wider != 200).any()


def test_center_crop_orientation():
    # Left half dark, right half bright: the crop must keep the orientation (no transpose/flip).
    image = np.zeros((2, 218, 178, 3), np.uint8)
    image[:, :, 89:] = 255
    result = images.center_crop_and_resize(tf.constant(image), 140, 64).numpy()
    assert result.shape == (2, 64, 64, 3)
    assert result[:, :, :16].max() == 0 and result[:, :, 48:].min() == 255


def test_preprocess_decodes_gray_or_rgb_then_crops_and_resizes():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    encoded = tf.io.encode_png(rgb)
    np.testing.assert_array_equal(images.preprocess(16, 3, 20)(encoded),
                                  images.center_crop_and_resize(tf.constant(rgb), 20, 16))
    gray = tf.image.rgb_to_grayscale(rgb)  # [30, 40, 1]
    np.testing.assert_array_equal(images.preprocess(16, 1, 0)(encoded),
                                  images.center_crop_and_resize(gray, 0, 16))


def test_resize_array_in_chunks_equals_one_resize():
    batch = np.random.default_rng(1).integers(0, 256, (5, 12, 12, 3), np.uint8)
    np.testing.assert_array_equal(images.resize_array(batch, 8, chunk=2),
                                  images.resize_images(tf.constant(batch), 8))


def test_to_float():
    values = tf.constant([0, 51, 255], tf.uint8)
    np.testing.assert_allclose(images.to_float(values).numpy(), [0.0, 0.2, 1.0], rtol=1e-6)
