"""Tests of wae_tf.data.pipeline: the training streams' order, resume and options, the
evaluation pass, and the seeded subset read batch by batch."""

import numpy as np
import pytest
import tensorflow as tf

from wae_tf import data
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
    def stream(seed):
        return batch_indices(take(data.make_train_dataset(source, 8, seed), 10))

    assert stream(7) == stream(7)
    assert stream(7) != stream(8)


@pytest.mark.parametrize("start_step", [1, 3, 4, 7, 10])
def test_resume_equals_uninterrupted_stream(start_step):
    source = image_data(10)  # batch 3 -> 3 steps per epoch: 3, 7 and 10 cross epoch boundaries
    full = batch_indices(take(data.make_train_dataset(source, 3, seed=5), 14))
    resumed = batch_indices(take(
        data.make_train_dataset(source, 3, seed=5, start_step=start_step), 4))
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



def test_the_subset_is_seeded_sorted_and_read_in_batches():
    source = image_data(25)
    keep = data.subset_indices(25, 10, seed=3)
    assert len(keep) == 10 and list(keep) == sorted(set(keep))
    np.testing.assert_array_equal(data.subset_indices(25, 10, seed=3), keep)  # same seed
    assert not np.array_equal(data.subset_indices(25, 10, seed=4), keep)
    np.testing.assert_array_equal(data.subset_indices(7, 10, seed=3), np.arange(7))  # all
    batches = list(data.make_subset_dataset(source, 10, seed=3, batch=4))
    assert [b.shape[0] for b in batches] == [4, 4, 2] and batches[0].dtype == tf.float32
    assert sum(batch_indices(batches), []) == keep.tolist()
    everything = list(data.make_subset_dataset(source, 100, seed=3, batch=8))
    assert sum(batch_indices(everything), []) == list(range(25))
    with pytest.raises(ConfigError, match="positive"):
        data.make_subset_dataset(source, 10, seed=3, batch=0)
