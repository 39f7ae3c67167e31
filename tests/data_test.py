"""Tests of wae_tf.data: IDX parsing, loading, TFDS wrapping, and the tf.data streams."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import idx_bytes, make_idx_dir, write_idx
from wae_tf import data
from wae_tf.data import sources
from wae_tf.config import DEFAULT_FASHION_MNIST_DIR, Config
from wae_tf.errors import ConfigError


def image_data(n=10, shape=(4, 4, 1)):
    # Pixel values encode the example index so batches can be traced back to indices.
    images = np.broadcast_to(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), (n,) + shape)
    return data.ImageData(images=np.ascontiguousarray(images), labels=np.arange(n, dtype=np.int64),
                          name="toy/train")


def batch_indices(batches):
    """Batch of float images made by image_data -> the example indices (pixel * 255)."""
    return [np.round(b.numpy()[:, 0, 0, 0] * 255).astype(int).tolist() for b in batches]


def take(dataset, count):
    return list(dataset.take(count))


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


def test_center_crop_keeps_only_the_centre():
    # CelebA geometry: 218 x 178; the central 140 x 140 (rows 39..178, cols 19..158) is 200, the
    # border 0 (rows) and 255 (columns): any leak would move the resized pixels away from 200.
    image = np.zeros((218, 178, 3), np.uint8)
    image[:, :19] = 255
    image[:, 159:] = 255
    image[39:179, 19:159] = 200
    result = data.center_crop_and_resize(tf.constant(image), 140, 64).numpy()
    assert result.shape == (64, 64, 3) and result.dtype == np.uint8
    np.testing.assert_array_equal(result, np.full((64, 64, 3), 200, np.uint8))
    # One pixel more of crop includes the border.
    wider = data.center_crop_and_resize(tf.constant(image), 142, 64).numpy()
    assert (wider != 200).any()


def test_center_crop_orientation():
    # Left half dark, right half bright: the crop must keep the orientation (no transpose/flip).
    image = np.zeros((2, 218, 178, 3), np.uint8)
    image[:, :, 89:] = 255
    result = data.center_crop_and_resize(tf.constant(image), 140, 64).numpy()
    assert result.shape == (2, 64, 64, 3)
    assert result[:, :, :16].max() == 0 and result[:, :, 48:].min() == 255


def test_unknown_tfds_name_raises():
    with pytest.raises(ConfigError) as info:
        data.load_split(Config(dataset="no_such_dataset_xyz"), "train")
    message = str(info.value)
    assert "no_such_dataset_xyz" in message and "tfds build" in message and "\n" not in message


def test_unprepared_tfds_data_set_raises(tmp_path):
    with pytest.raises(ConfigError, match=f"'mnist'.*{tmp_path}"):
        data.load_split(Config(dataset="mnist", tfds_data_dir=str(tmp_path), tfds_download=False), "train")


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


# ------------------------------------------------------------------------------------- Streams.


def test_steps_per_epoch():
    assert data.steps_per_epoch(60000, 100) == 600
    assert data.steps_per_epoch(10, 3) == 3
    assert data.steps_per_epoch(2, 3) == 0


def test_train_batches_are_scaled_source_images():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(10, 5, 5, 3), dtype=np.uint8)
    source = data.ImageData(images=images, labels=np.zeros(10, np.int64), name="toy/train")
    dataset = data.make_train_dataset(source, global_batch=4, seed=3)
    assert dataset.element_spec.shape == (4, 5, 5, 3)
    assert dataset.element_spec.dtype == tf.float32
    scaled = images.astype(np.float32) / np.float32(255)
    for batch in take(dataset, 5):
        batch = batch.numpy()
        assert batch.min() >= 0.0 and batch.max() <= 1.0
        for image in batch:  # each image equals one source image / 255
            assert any(np.array_equal(image, s) for s in scaled)


def test_epochs_are_distinct_permutations():
    n, batch = 10, 3  # 3 steps per epoch, 9 of 10 examples kept per epoch
    epochs = [sum(batch_indices(take(data.make_train_dataset(image_data(n), batch, seed=0), 12)
                                [3 * e:3 * e + 3]), []) for e in range(4)]
    for order in epochs:
        assert len(order) == 9 and len(set(order)) == 9 and set(order) <= set(range(n))
    assert len({tuple(order) for order in epochs}) == 4


def test_same_seed_same_stream_different_seed_different_stream():
    source = image_data(50)
    stream = lambda seed: batch_indices(take(data.make_train_dataset(source, 8, seed), 10))
    assert stream(7) == stream(7)
    assert stream(7) != stream(8)


@pytest.mark.parametrize("start_step", [1, 3, 4, 7, 10])
def test_resume_equals_uninterrupted_stream(start_step):
    source = image_data(10)  # batch 3 -> 3 steps per epoch: 3, 7 and 10 cross epoch boundaries
    full = batch_indices(take(data.make_train_dataset(source, 3, seed=5), 14))
    resumed = batch_indices(take(data.make_train_dataset(source, 3, seed=5, start_step=start_step), 4))
    assert resumed == full[start_step:start_step + 4]


def test_train_dataset_options():
    options = data.make_train_dataset(image_data(10), 3, seed=0).options()
    assert options.deterministic
    assert (options.experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.DATA)


def test_train_dataset_rejects_batch_larger_than_data():
    with pytest.raises(ConfigError, match="batch_size"):
        data.make_train_dataset(image_data(5), 6, seed=0)


def test_train_dataset_under_distribution_strategy():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    source = image_data(10)
    dist = strategy.experimental_distribute_dataset(data.make_train_dataset(source, 4, seed=2))
    expected = batch_indices(take(data.make_train_dataset(source, 4, seed=2), 3))
    iterator = iter(dist)
    got = [strategy.experimental_local_results(next(iterator))[0] for _ in range(3)]
    assert batch_indices(got) == expected


def test_eval_dataset_covers_all_in_order_with_remainder():
    source = image_data(10)
    batches = list(data.make_eval_dataset(source, 4))
    assert [images.shape[0] for images, _ in batches] == [4, 4, 2]
    assert batch_indices([images for images, _ in batches]) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(10))
    assert batches[0][0].dtype == tf.float32


def test_to_float():
    values = tf.constant([0, 51, 255], tf.uint8)
    np.testing.assert_allclose(data.to_float(values).numpy(), [0.0, 0.2, 1.0], rtol=1e-6)
