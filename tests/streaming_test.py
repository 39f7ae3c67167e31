"""Training data streamed from files (--in_memory=false, --cache_dir): the same batches as in
memory, resumable at any step, split across replicas, with the same handling of bad files; the
seeded subset read batch by batch equals the materialised one."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import mirrored_strategy, tiny_config
from tests.folders_test import _image, _write
from wae_tf import data, loop
from wae_tf.errors import ConfigError

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """13 JPEG and PNG files of 40x30 RGB in train/ (two classes) and 4 in test/."""
    root = tmp_path_factory.mktemp("stream")
    for i in range(13):
        fmt = "jpeg" if i % 2 else "png"
        _write(str(root / "train" / ("x" if i % 3 else "y") / f"{i}.{fmt[:3]}"), _image(i), fmt)
    for i in range(4):
        _write(str(root / "test" / f"{i}.png"), _image(70 + i))
    return str(root)


def _config(folder, **overrides):
    return tiny_config(dataset="folder", data_dir=folder, image_size=28, batch_size=4,
                       seed=3, **overrides)


def _batches(dataset, count):
    """The first `count` global batches of a distributed dataset, as numpy."""
    out = []
    for batch in dataset:
        parts = batch.values if hasattr(batch, "values") else (batch,)
        out.append(np.concatenate([p.numpy() for p in parts]))
        if len(out) == count:
            return out
    return out


@pytest.mark.slow
def test_streamed_batches_equal_the_in_memory_ones_and_resume_exactly(folder, tmp_path):
    memory = data.load_split(_config(folder, in_memory="true"), "train")
    streamed = data.load_split(_config(folder, in_memory="false"), "train")
    cached = data.load_split(_config(folder, in_memory="false", cache_dir=str(tmp_path)), "train")
    assert isinstance(memory, data.ImageData) and isinstance(streamed, data.ImageFiles)
    assert isinstance(cached, data.ImageRows)
    assert streamed.image_shape == memory.image_shape == (28, 28, 3)
    np.testing.assert_array_equal(streamed.labels, memory.labels)
    strategy = tf.distribute.get_strategy()
    # 13 images, batches of 4: 3 steps per epoch; 7 steps cross two epoch boundaries.
    expected = _batches(data.distribute(strategy, memory, 4, 3), 7)
    for source in (streamed, cached):
        np.testing.assert_array_equal(_batches(data.distribute(strategy, source, 4, 3), 7),
                                      expected)
        resumed = _batches(data.distribute(strategy, source, 4, 3, start_step=4), 3)
        np.testing.assert_array_equal(resumed, expected[4:])


def test_two_replicas_read_their_own_rows_of_each_global_batch(folder):
    streamed = data.load_split(_config(folder, in_memory="false"), "train")
    memory = data.load_split(_config(folder, in_memory="true"), "train")
    expected = _batches(data.distribute(tf.distribute.get_strategy(), memory, 4, 3), 4)
    np.testing.assert_array_equal(
        _batches(data.distribute(mirrored_strategy(), streamed, 4, 3), 4), expected)


def test_the_cache_is_written_once_and_names_bad_files(folder, tmp_path):
    config = _config(folder, in_memory="false", cache_dir=str(tmp_path / "cache"))
    data.load_split(config, "train")
    (manifest,) = [n for n in os.listdir(tmp_path / "cache") if n.endswith(".json")]
    written = os.path.getmtime(tmp_path / "cache" / manifest)
    data.load_split(config, "train")  # found again by its key: not rewritten
    assert os.path.getmtime(tmp_path / "cache" / manifest) == written
    bad = tmp_path / "bad"
    for i in range(5):
        _write(str(bad / "train" / f"{i}.png"), _image(i))
    (bad / "train" / "9.png").write_bytes(b"\x89PNG broken")
    _write(str(bad / "test" / "0.png"), _image(0))
    bad_config = _config(str(bad), in_memory="false", cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(ConfigError, match=r"9\.png.*--skip_bad_images"):
        data.load_split(bad_config, "train")
    kept = data.load_split(bad_config.replace(skip_bad_images=True), "train")
    memory = data.load_split(bad_config.replace(skip_bad_images=True, in_memory="true"), "train")
    assert kept.num_examples == memory.num_examples == 5
    np.testing.assert_array_equal(kept.read(np.arange(5)), memory.images)


def test_skip_bad_images_leaves_bad_files_out_of_a_stream_without_cache_dir(tmp_path, caplog):
    """Checked once before training: the stream then holds only the files that decode, the
    same batches as in memory, still resumable; the skipped files are listed in the log."""
    for i in range(9):
        _write(str(tmp_path / "train" / f"{i}.png"), _image(i))
    (tmp_path / "train" / "4.png").write_bytes(b"\x89PNG broken")
    _write(str(tmp_path / "test" / "0.png"), _image(0))
    config = _config(str(tmp_path), in_memory="false", skip_bad_images=True)
    streamed = data.load_split(config, "train")
    assert isinstance(streamed, data.ImageFiles) and streamed.num_examples == 8
    assert "4.png (" in caplog.text
    memory = data.load_split(config.replace(in_memory="true"), "train")
    strategy = tf.distribute.get_strategy()
    expected = _batches(data.distribute(strategy, memory, 4, 3), 5)  # 2 steps/epoch
    np.testing.assert_array_equal(_batches(data.distribute(strategy, streamed, 4, 3), 5), expected)
    np.testing.assert_array_equal(
        _batches(data.distribute(strategy, streamed, 4, 3, start_step=3), 2), expected[3:])


def test_the_subset_read_batch_by_batch_equals_the_materialised_one(folder, tmp_path):
    memory = data.load_split(_config(folder, in_memory="true"), "train")
    streamed = data.load_split(_config(folder, in_memory="false"), "train")
    cached = data.load_split(_config(folder, in_memory="false", cache_dir=str(tmp_path)), "train")
    assert memory.num_examples == 7  # the PNG files (".jpe" is not an image extension)
    expected = data.materialize(streamed, limit=5, seed=5).images  # uint8 [5, 28, 28, 3]
    for source in (memory, streamed, cached):
        batches = [b.numpy() for b in data.make_subset_dataset(source, 5, seed=5, batch=2)]
        assert [len(b) for b in batches] == [2, 2, 1]
        np.testing.assert_array_equal(np.round(np.concatenate(batches) * 255), expected)
    bad = tmp_path / "bad"
    for i in range(5):
        _write(str(bad / "train" / f"{i}.png"), _image(i))
    (bad / "train" / "2.png").write_bytes(b"\x89PNG broken")
    files = data.load_split(_config(str(bad), in_memory="false"), "train")
    batches = list(data.make_subset_dataset(files, 9, seed=5, batch=2))  # the bad file left out
    assert [len(b) for b in batches] == [2, 2]
    np.testing.assert_array_equal(np.round(np.concatenate(batches) * 255),
                                  data.materialize(files, limit=9, seed=5).images)


@pytest.mark.slow
def test_a_tfds_data_set_streams_from_its_decoded_copy(tmp_path):
    """TFDS records have no random access: streaming one reads its copy in --cache_dir, written
    once in TFDS's order; batches equal the in-memory ones and resume exactly."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    config = tiny_config(dataset="mnist", batch_size=4, seed=3)
    with tfds.testing.mock_data(num_examples=13):
        with pytest.raises(ConfigError, match="--cache_dir"):
            data.load_split(config.replace(in_memory="false"), "train")
        rows = data.load_split(config.replace(in_memory="false", cache_dir=str(tmp_path)),
                               "train")
        memory = data.load_split(config.replace(in_memory="true"), "train")
    assert isinstance(rows, data.ImageRows) and rows.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(rows.labels, memory.labels)
    strategy = tf.distribute.get_strategy()
    expected = _batches(data.distribute(strategy, memory, 4, 3), 5)
    np.testing.assert_array_equal(_batches(data.distribute(strategy, rows, 4, 3), 5), expected)
    np.testing.assert_array_equal(
        _batches(data.distribute(mirrored_strategy(), rows, 4, 3, start_step=2), 3), expected[2:])
    assert data.materialize(rows, limit=100).images.tolist() == memory.images.tolist()


@pytest.mark.slow
def test_training_streams_from_the_cache(folder, tmp_path):
    config = _config(folder, in_memory="false", cache_dir=str(tmp_path / "cache"),
                     train_steps=3)
    results = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["step"] == 3 and np.isfinite(results["train_loss"])


@pytest.mark.slow
def test_a_streamed_run_resumed_equals_an_uninterrupted_one(folder, tmp_path):
    config = _config(folder, in_memory="false", train_steps=4, checkpoint_every=2)
    straight = loop.train_and_evaluate(config, str(tmp_path / "a"))
    loop.train_and_evaluate(config.replace(train_steps=2), str(tmp_path / "b"))
    resumed = loop.train_and_evaluate(config, str(tmp_path / "b"))
    assert resumed["step"] == straight["step"] == 4
    for name in ("train_loss", "test_recon_cost"):
        assert resumed[name] == pytest.approx(straight[name], rel=1e-5), name


@pytest.mark.slow
def test_a_file_that_fails_to_decode_while_streaming_is_a_clear_error(tmp_path):
    """Without --cache_dir nothing checks the files before training: the failure mid-run names
    the way to find the bad ones, and no checkpoint is written after it."""
    for i in range(8):
        _write(str(tmp_path / "train" / f"{i}.png"), _image(i, (28, 28, 1)))
    (tmp_path / "train" / "3.png").write_bytes(b"\x89PNG truncated")
    _write(str(tmp_path / "test" / "0.png"), _image(9, (28, 28, 1)))
    config = _config(str(tmp_path), in_memory="false", train_steps=4)
    with pytest.raises(ConfigError, match="--cache_dir"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "results.json")
