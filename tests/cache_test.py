"""Tests of wae_tf.data.cache: the decoded copy is keyed, written once with its manifest last, and
read back by rows."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf.data import cache, folders
from wae_tf.errors import ConfigError


def _batches(count, shape=(2, 3, 1)):
    """`count` batches of 2 rows (uint8 [2, *shape], int64 labels [2]); row i is all i."""
    for start in range(0, 2 * count, 2):
        rows = np.arange(start, start + 2, dtype=np.uint8).reshape(2, 1, 1, 1)
        yield np.broadcast_to(rows, (2, *shape)), np.arange(start, start + 2, dtype=np.int64)


def test_the_key_names_the_copy():
    base = cache.cache_base("/c", "mnist", ["mnist/train", "3.0.1", [28, 28, 1]])
    assert base == cache.cache_base("/c", "mnist", ["mnist/train", "3.0.1", [28, 28, 1]])
    assert base != cache.cache_base("/c", "mnist", ["mnist/train", "3.0.1", [32, 32, 1]])
    assert os.path.dirname(base) == "/c" and os.path.basename(base).startswith("mnist-")


def test_rows_are_read_back_in_any_order_with_their_labels(tmp_path):
    base = cache.cache_base(str(tmp_path), "toy", ["toy/train"])
    path, labels = cache.decoded_batches(_batches(3), base, "toy/train", (2, 3, 1))
    np.testing.assert_array_equal(labels, np.arange(6))
    rows = cache.row_reader(path, (2, 3, 1))(np.array([4, 0, 4]))  # uint8 [3, 2, 3, 1]
    assert rows.shape == (3, 2, 3, 1)
    np.testing.assert_array_equal(rows[:, 0, 0, 0], [4, 0, 4])
    assert cache.read_manifest(base)["image_shape"] == [2, 3, 1]


def test_a_copy_without_its_manifest_is_written_again(tmp_path):
    base = cache.cache_base(str(tmp_path), "toy", ["toy/train"])

    def interrupted():
        yield next(_batches(1))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.decoded_batches(interrupted(), base, "toy/train", (2, 3, 1))
    assert not os.path.exists(base + ".json")
    path, labels = cache.decoded_batches(_batches(2), base, "toy/train", (2, 3, 1))
    assert labels.tolist() == [0, 1, 2, 3] and os.path.getsize(path) == 4 * 6


def test_a_folders_copy_is_written_once_and_holds_only_the_files_that_decode(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / "train").mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (20, 16, 3), np.uint8)
        (tmp_path / "train" / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    (tmp_path / "train" / "2.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "test").mkdir()
    config = tiny_config(dataset="folder", data_dir=str(tmp_path), image_size=28)
    files = folders.list_split(config, "train")
    path, kept = cache.decoded_files(files, str(tmp_path / "cache"))
    assert kept == [0, 1, 3]
    written = os.path.getmtime(path[:-len(".u8")] + ".json")
    assert cache.decoded_files(files, str(tmp_path / "cache")) == (path, kept)  # found again
    assert os.path.getmtime(path[:-len(".u8")] + ".json") == written
    decoded, _ = folders.decode_split(files, skip_bad=True)  # uint8 [3, 28, 28, 3]
    np.testing.assert_array_equal(cache.row_reader(path, files.image_shape)(np.arange(3)), decoded)


def _folder_files(root, count=4):
    """`count` PNGs of 20x16 RGB noise in root/train (and root/test), listed as training does."""
    rng = np.random.default_rng(0)
    for i in range(count):
        _png(root / "train" / f"{i}.png", rng.integers(0, 256, (20, 16, 3), np.uint8))
    (root / "test").mkdir(exist_ok=True)
    return folders.list_split(tiny_config(dataset="folder", data_dir=str(root), image_size=28,
                                          channels=3), "train")


def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def test_an_image_replaced_under_its_name_is_decoded_again(tmp_path):
    files = _folder_files(tmp_path)
    path, _ = cache.decoded_files(files, str(tmp_path / "cache"))
    _png(tmp_path / "train" / "1.png", np.full((20, 16, 3), 200, np.uint8))  # same name, size
    path, kept = cache.decoded_files(files, str(tmp_path / "cache"))
    assert kept == [0, 1, 2, 3]
    rows = cache.row_reader(path, files.image_shape)(np.arange(4))  # uint8 [4, 28, 28, 3]
    assert (rows[1] == 200).all()
    np.testing.assert_array_equal(rows, folders.decode_split(files, skip_bad=False)[0])


def test_a_fixed_bad_file_is_accepted_and_the_copy_of_unchanged_files_kept(tmp_path):
    files = _folder_files(tmp_path)
    (tmp_path / "train" / "2.png").write_bytes(b"\x89PNG broken")
    path, kept = cache.decoded_files(files, str(tmp_path / "cache"))
    assert kept == [0, 1, 3]
    written = os.stat(path).st_mtime_ns
    assert cache.decoded_files(files, str(tmp_path / "cache")) == (path, kept)
    assert os.stat(path).st_mtime_ns == written  # unchanged files: the copy is trusted
    _png(tmp_path / "train" / "2.png", np.zeros((20, 16, 3), np.uint8))  # fixed as told
    assert cache.decoded_files(files, str(tmp_path / "cache")) == (path, [0, 1, 2, 3])


def test_a_copy_whose_rewrite_was_interrupted_is_not_trusted(tmp_path, monkeypatch):
    files = _folder_files(tmp_path)
    cache.decoded_files(files, str(tmp_path / "cache"))
    _png(tmp_path / "train" / "0.png", np.full((20, 16, 3), 7, np.uint8))
    with monkeypatch.context() as patch:
        patch.setattr(folders, "image_dataset", lambda *args: (_ for _ in ()).throw(
            KeyboardInterrupt))  # stopped while decoding the changed files again
        with pytest.raises(KeyboardInterrupt):
            cache.decoded_files(files, str(tmp_path / "cache"))
    assert not [n for n in os.listdir(tmp_path / "cache") if n.endswith(".json")]
    path, _ = cache.decoded_files(files, str(tmp_path / "cache"))
    assert (cache.row_reader(path, files.image_shape)([0]) == 7).all()


def test_an_unwritable_cache_dir_is_one_line_naming_the_flag(tmp_path):
    files = _folder_files(tmp_path)
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(ConfigError, match=r"--cache_dir=.*file/cache is not writable \(.*not a "
                                          r"directory\)"):
        cache.decoded_files(files, str(tmp_path / "file" / "cache"))
    if os.geteuid() == 0:
        pytest.skip("run as root: a directory of mode 555 is still writable")
    (tmp_path / "read_only").mkdir(mode=0o555)
    with pytest.raises(ConfigError, match=r"--cache_dir=.*read_only is not writable"):
        cache.decoded_files(files, str(tmp_path / "read_only"))
