"""The tf.data streams of a split: resumable training batches per replica, one evaluation pass,
and one pass over a seeded subset (the fitted sampler's codes).

Training takes global batches in the order of index_batches, which depends only on --seed and the
epoch (starting at step k equals the uninterrupted stream from its k-th batch on); each worker
reads and decodes a streamed split (ImageFiles, ImageRows) for its own replicas only.
"""

import numpy as np
import tensorflow as tf

from wae_tf.data import folders, sources
from wae_tf.data import images as images_lib
from wae_tf.errors import ConfigError


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Full global batches per epoch; the remainder of each epoch's permutation is dropped."""
    return int(num_examples) // int(global_batch)


def index_batches(num_examples: int, global_batch: int, seed: int,
                  start_step: int) -> tf.data.Dataset:
    """int32 [global_batch] example indices of every step from `start_step` on.

    Epoch e visits the examples in the order of a permutation that depends only on (seed, e)
    (stateless shuffle), cut into steps_per_epoch(N, global_batch) batches (the remainder is
    dropped, so each epoch skips a different subset of at most global_batch - 1 examples).
    Starting at step k equals the uninterrupted stream from its k-th batch on: whole epochs are
    skipped arithmetically and the rest on index batches, before any image work.
    """
    steps = steps_per_epoch(num_examples, global_batch)
    if global_batch <= 0 or steps == 0:
        raise ConfigError(f"--batch_size={global_batch} must be in [1, {num_examples}] "
                          "(the number of training images).")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    seed = int(seed)

    def epoch_batches(epoch):  # int64 scalar -> dataset of int32 [global_batch] index batches
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        order = tf.reshape(order[:steps * global_batch], [steps, global_batch])
        return tf.data.Dataset.from_tensor_slices(order)

    first_epoch, skip = divmod(int(start_step), steps)
    return tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches).skip(skip)


def make_train_dataset(data: sources.ImageData, global_batch: int, seed: int,
                       start_step: int = 0) -> tf.data.Dataset:
    """An infinite stream of float32 [global_batch, H, W, C] image batches in [0, 1], in the
    order of index_batches (deterministic from --seed, resumable at any step)."""
    images = tf.constant(data.images)  # uint8 [N, H, W, C], captured once by the map below
    dataset = index_batches(data.num_examples, global_batch, seed, start_step)
    dataset = dataset.map(lambda index: images_lib.to_float(tf.gather(images, index)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_train_options())


def make_replica_stream(data, global_batch: int, seed: int, start_step: int,
                        context: tf.distribute.InputContext) -> tf.data.Dataset:
    """float32 [local_batch, H, W, C] batches of the replicas this input pipeline (worker)
    feeds, in replica order: the rows of index_batches that N replicas take from a global
    batch, so each worker reads and decodes only its share of the files."""
    replicas = context.num_replicas_in_sync
    local = context.get_per_replica_batch_size(global_batch)
    per_pipeline = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * per_pipeline
    rows = index_batches(data.num_examples, global_batch, seed, start_step).map(
        lambda index: tf.reshape(index, [replicas, local])[first:first + per_pipeline]).unbatch()
    shape = data.image_shape
    if isinstance(data, sources.ImageRows):
        images = rows.map(lambda index: tf.ensure_shape(
            tf.numpy_function(data.read, [index], tf.uint8, stateful=False), [local, *shape]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        paths, decode = tf.constant(list(data.files.paths)), folders.decoder(data.files)
        images = rows.unbatch().map(lambda i: decode(tf.gather(paths, i)),
                                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        images = images.batch(local, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return images.map(images_lib.to_float).prefetch(tf.data.AUTOTUNE).with_options(options)


def distribute(strategy: tf.distribute.Strategy, data, global_batch: int, seed: int,
               start_step: int = 0):
    """The training stream of `data` (ImageData, ImageFiles or ImageRows) as the strategy's
    distributed dataset: every replica gets its consecutive rows of each global batch."""
    if isinstance(data, sources.STREAMED):
        return strategy.distribute_datasets_from_function(
            lambda context: make_replica_stream(data, global_batch, seed, start_step, context))
    return strategy.experimental_distribute_dataset(
        make_train_dataset(data, global_batch, seed, start_step))


def subset_indices(num_examples: int, limit: int, seed: int) -> np.ndarray:
    """The sorted indices of a seeded subset of at most `limit` of `num_examples` examples (all
    of them if there are no more): the same seed picks the same subset."""
    if num_examples <= limit:
        return np.arange(num_examples)
    return np.sort(np.random.default_rng(seed).choice(num_examples, limit, replace=False))


def materialize(data, limit: int, seed: int = 0) -> sources.ImageData:
    """`data` in memory: ImageData as it is, a streamed split as a seeded subset of at most
    `limit` images (e.g. to train the evaluation's classifier on it)."""
    if isinstance(data, sources.ImageData):
        return data
    keep = subset_indices(data.num_examples, limit, seed)
    if isinstance(data, sources.ImageRows):
        return sources.ImageData(images=data.read(keep), labels=data.labels[keep], name=data.name)
    images, files = folders.decode_split(data.files.select(list(keep)), skip_bad=True)
    return sources.ImageData(images=images, labels=files.labels, name=files.name)


def _train_options() -> tf.data.Options:
    """Deterministic order, sharded by element across workers (one in-memory array, no files)."""
    options = tf.data.Options()
    options.experimental_deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def make_eval_dataset(data: sources.ImageData, batch: int) -> tf.data.Dataset:
    """One ordered pass: (float32 [b, H, W, C] in [0, 1], int64 [b]) with b = batch, the last
    batch holding the remainder."""
    if batch <= 0:
        raise ConfigError(f"Evaluation batch size must be positive, got {batch}.")
    images = tf.constant(data.images)  # uint8 [N, H, W, C]
    labels = tf.constant(data.labels, tf.int64)  # [N]
    dataset = tf.data.Dataset.range(data.num_examples).batch(batch)
    dataset = dataset.map(lambda index: (images_lib.to_float(tf.gather(images, index)),
                                         tf.gather(labels, index)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_deterministic = True
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def make_subset_dataset(data, limit: int, seed: int, batch: int) -> tf.data.Dataset:
    """One ordered pass over the images subset_indices(N, limit, seed) of `data` (ImageData,
    ImageFiles or ImageRows): float32 [b, H, W, C] batches in [0, 1] with b <= batch, read and
    decoded batch by batch, so only the batches in flight are held, never the subset. Files that
    fail to decode are left out (as materialize does)."""
    if batch <= 0:
        raise ConfigError(f"Batch size must be positive, got {batch}.")
    keep = subset_indices(data.num_examples, limit, seed)
    if isinstance(data, sources.ImageFiles):
        paths, decode = [data.files.paths[i] for i in keep], folders.decoder(data.files)
        images = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        images = images.ignore_errors().batch(batch)
    else:
        read = data.read if isinstance(data, sources.ImageRows) else data.images.__getitem__
        shape = data.image_shape
        images = tf.data.Dataset.from_tensor_slices(keep).batch(batch).map(
            lambda index: tf.ensure_shape(
                tf.numpy_function(read, [index], tf.uint8, stateful=False), [None, *shape]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_deterministic = True
    return images.map(images_lib.to_float).prefetch(1).with_options(options)
