"""Tests of wae_tf.data.sources: IDX parsing, load_split by --dataset, TFDS wrapping."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import idx_bytes, make_idx_dir, tiny_config, write_idx
from wae_tf import data
from wae_tf.config import DEFAULT_FASHION_MNIST_DIR, Config
from wae_tf.data import images as images_lib
from wae_tf.data import sources
from wae_tf.errors import ConfigError

# ---------------------------------------------------------------------------------- IDX files.


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    result = data.read_idx(path)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, array)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    payload = struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes()
    path = tmp_path / "ints-idx1-ubyte"
    path.write_bytes(payload)
    np.testing.assert_array_equal(data.read_idx(str(path)), [1, -2, 70000])


@pytest.mark.parametrize("compress", [True, False])
def test_load_split_from_data_dir(tmp_path, compress):
    arrays = make_idx_dir(tmp_path, compress=compress)
    config = Config(data_dir=str(tmp_path))
    for split, n in (("train", 10), ("test", 7)):
        loaded = data.load_split(config, split)
        assert loaded.images.shape == (n, 28, 28, 1) and loaded.images.dtype == np.uint8
        assert loaded.labels.shape == (n,) and loaded.labels.dtype == np.int64
        assert loaded.num_examples == n and loaded.image_shape == (28, 28, 1)
        assert loaded.name == f"fashion_mnist/{split}"
        assert loaded.class_names[0] == "T-shirt/top" and len(loaded.class_names) == 10
        np.testing.assert_array_equal(loaded.images[..., 0], arrays[split][0])
        np.testing.assert_array_equal(loaded.labels, arrays[split][1])


def test_load_split_mnist_from_data_dir(tmp_path):
    make_idx_dir(tmp_path)
    loaded = data.load_split(Config(dataset="mnist", data_dir=str(tmp_path)), "test")
    assert loaded.name == "mnist/test" and loaded.images.shape == (7, 28, 28, 1)
    assert loaded.class_names == ()  # digits: the labels are their names


def test_load_split_resizes_to_image_size(tmp_path):
    make_idx_dir(tmp_path)
    loaded = data.load_split(Config(data_dir=str(tmp_path), image_size=64), "train")
    assert loaded.images.shape == (10, 64, 64, 1) and loaded.images.dtype == np.uint8


def test_truncated_file_raises(tmp_path):
    make_idx_dir(tmp_path)
    path = os.path.join(tmp_path, "train-images-idx3-ubyte.gz")
    payload = idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]
    with open(path, "wb") as f:
        f.write(gzip.compress(payload))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz.*truncated"):
        data.load_split(Config(data_dir=str(tmp_path)), "train")


def test_truncated_gzip_stream_raises(tmp_path):
    make_idx_dir(tmp_path)
    path = os.path.join(tmp_path, "train-labels-idx1-ubyte.gz")
    with open(path, "rb") as f:
        payload = f.read()
    with open(path, "wb") as f:
        f.write(payload[: len(payload) // 2])
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz"):
        data.load_split(Config(data_dir=str(tmp_path)), "train")


def test_wrong_magic_raises(tmp_path):
    make_idx_dir(tmp_path)
    path = os.path.join(tmp_path, "t10k-labels-idx1-ubyte.gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(b"\x12\x34\x08\x01" + struct.pack(">I", 7) + bytes(7)))
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte.gz.*magic"):
        data.load_split(Config(data_dir=str(tmp_path)), "test")


def test_count_mismatch_raises(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(os.path.join(tmp_path, "train-labels-idx1-ubyte.gz"), np.zeros(9, np.uint8))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz.*10 images.*9 labels"):
        data.load_split(Config(data_dir=str(tmp_path)), "train")


def test_labels_as_images_raises(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(os.path.join(tmp_path, "train-images-idx3-ubyte.gz"), np.zeros(10, np.uint8))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz.*3-D"):
        data.load_split(Config(data_dir=str(tmp_path)), "train")


def test_missing_explicit_data_dir_raises(tmp_path):
    missing = os.path.join(tmp_path, "nowhere")
    with pytest.raises(ConfigError) as info:
        data.load_split(Config(data_dir=missing), "train")
    message = str(info.value)
    assert os.path.join(missing, "train-images-idx3-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message


def test_unknown_split_raises(tmp_path):
    with pytest.raises(ConfigError, match="validation"):
        data.load_split(Config(data_dir=str(tmp_path)), "validation")


def test_real_fashion_mnist():
    if not os.path.exists(os.path.join(DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST not installed in {DEFAULT_FASHION_MNIST_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
    config = Config()
    for split, n in (("train", 60000), ("test", 10000)):
        loaded = data.load_split(config, split)
        assert loaded.images.shape == (n, 28, 28, 1) and loaded.images.dtype == np.uint8
        assert sorted(np.unique(loaded.labels).tolist()) == list(range(10))
        assert loaded.images.max() == 255 and loaded.images.min() == 0


# ---------------------------------------------------------------------------------------- TFDS.


@pytest.mark.slow
def test_tfds_mnist_with_mock_data():
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    with tfds.testing.mock_data(num_examples=12):
        loaded = data.load_split(Config(dataset="mnist"), "train")
    assert loaded.images.shape == (12, 28, 28, 1) and loaded.images.dtype == np.uint8
    assert loaded.labels.dtype == np.int64 and loaded.name == "mnist/train"


def test_tfds_celeb_a_with_mock_data():
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    with tfds.testing.mock_data(num_examples=5):
        loaded = data.load_split(Config(dataset="celeb_a"), "test")
    assert loaded.images.shape == (5, 64, 64, 3) and loaded.images.dtype == np.uint8
    np.testing.assert_array_equal(loaded.labels, np.zeros(5))


def test_a_folder_file_a_celeba_file_and_a_tfds_array_get_the_same_pixels(tmp_path):
    """One photograph (218 x 178, CelebA's shape, lossless PNG) as a folder's file, as CelebA's
    official file and as TFDS celeb_a's in-memory array: the same 140-pixel centre crop resized
    to 64 x 64, pixel for pixel."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    coarse = np.random.default_rng(0).integers(0, 256, (22, 18, 3), np.uint8)
    photo = np.repeat(np.repeat(coarse, 10, axis=0), 10, axis=1)[:218, :178]  # [218, 178, 3]
    png = tf.io.encode_png(photo).numpy()
    for path in ("folder/train/a.png", "folder/test/a.png", "celeba/img_align_celeba/000001.png"):
        os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
        (tmp_path / path).write_bytes(png)
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.png 0\n")
    folder = data.load_split(tiny_config(dataset="folder", data_dir=str(tmp_path / "folder"),
                                         image_size=64, crop=140), "train")
    celeba = data.load_split(tiny_config(dataset="celeb_a", data_dir=str(tmp_path / "celeba")),
                             "train")
    def as_dataset(*args, **kwargs):
        return tf.data.Dataset.from_tensor_slices({"image": photo[None]})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        from_tfds = data.load_split(tiny_config(dataset="celeb_a", in_memory="true"), "test")
    expected = images_lib.center_crop_and_resize(tf.constant(photo), 140, 64).numpy()
    for loaded in (folder, celeba, from_tfds):
        assert loaded.images.shape == (1, 64, 64, 3)
        np.testing.assert_array_equal(loaded.images[0], expected)


def test_unknown_tfds_name_raises():
    with pytest.raises(ConfigError) as info:
        data.load_split(Config(dataset="no_such_dataset_xyz"), "train")
    message = str(info.value)
    assert "no_such_dataset_xyz" in message and "tfds build" in message and "\n" not in message


def test_unprepared_tfds_data_set_raises(tmp_path):
    with pytest.raises(ConfigError, match=f"'mnist'.*{tmp_path}"):
        data.load_split(Config(dataset="mnist", tfds_data_dir=str(tmp_path),
                               tfds_download=False), "train")


def test_fashion_mnist_fallback_failure_names_both(tmp_path, monkeypatch):
    missing = os.path.join(tmp_path, "no_debian_package")
    monkeypatch.setattr(sources, "DEFAULT_FASHION_MNIST_DIR", missing)
    with pytest.raises(ConfigError) as info:
        data.load_split(Config(tfds_data_dir=str(tmp_path), tfds_download=False), "test")
    message = str(info.value)
    assert os.path.join(missing, "t10k-images-idx3-ubyte.gz") in message  # IDX paths tried
    assert "TFDS failed" in message and str(tmp_path) in message  # the TFDS failure
    assert "apt-get install dataset-fashion-mnist" in message and "tfds build" in message


def test_data_dir_with_tfds_dataset_raises(tmp_path):
    with pytest.raises(ConfigError, match="tfds_data_dir"):
        data.load_split(Config(dataset="cifar10", data_dir=str(tmp_path)), "train")
    # celeb_a reads its official files from --data_dir: their absence is named.
    with pytest.raises(ConfigError, match="img_align_celeba/ folder and list_eval_partition"):
        data.load_split(Config(dataset="celeb_a", data_dir=str(tmp_path)), "train")
