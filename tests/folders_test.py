"""Folders of real PNG/JPEG files: splits, labels, channels, crops, bad files, CelebA's layout."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf import data, loop
from wae_tf.data import folders
from wae_tf.errors import ConfigError


def _write(path, image, fmt="png"):
    """Write uint8 [H, W, C] as a real PNG or JPEG file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=95)
    with open(path, "wb") as f:
        f.write(encoded.numpy())
    return path


def _image(seed, shape=(40, 30, 3)):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(shape[0] // 10, shape[1] // 10, shape[2]), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 10, axis=0), 10, axis=1)


@pytest.fixture
def two_classes(tmp_path):
    """cats/ (PNG, one nested deeper) and dogs/ (JPEG), 30 RGB files of 40x30, plus a text file."""
    root = tmp_path / "pets"
    for i in range(15):
        sub = "cats/indoor" if i % 3 == 0 else "cats"
        _write(str(root / sub / f"c{i}.png"), _image(i))
        _write(str(root / "dogs" / f"d{i}.jpg"), _image(100 + i), "jpeg")
    (root / "README.txt").write_text("not an image")
    return str(root)


def _config(data_dir, **overrides):
    return tiny_config(dataset="folder", data_dir=data_dir, image_size=28, **overrides)


def test_a_folder_loads_with_classes_a_stable_split_and_the_networks_size(two_classes):
    train = data.load_split(_config(two_classes, test_fraction=0.3), "train")
    test = data.load_split(_config(two_classes, test_fraction=0.3), "test")
    assert train.num_examples + test.num_examples == 30 and test.num_examples > 0
    assert train.image_shape == test.image_shape == (28, 28, 3)
    assert train.images.dtype == np.uint8
    assert set(train.labels) == {0, 1}  # cats (nested ones too) and dogs
    assert train.class_names == test.class_names == ("cats", "dogs")  # label l names l
    # The split of a file depends on its path alone: new files move no other file.
    before = set(folders.split_files(_config(two_classes, test_fraction=0.3), "test")[1])
    _write(os.path.join(two_classes, "dogs", "new.png"), _image(999))
    after = set(folders.split_files(_config(two_classes, test_fraction=0.3), "test")[1])
    assert before <= after and len(after - before) <= 1


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    for split, count in (("train", 5), ("test", 3)):
        for i in range(count):
            _write(str(tmp_path / split / f"{i}.png"), _image(i, (28, 28, 1)))
    config = _config(str(tmp_path))
    assert data.load_split(config, "train").num_examples == 5
    test = data.load_split(config, "test")
    assert test.num_examples == 3 and test.image_shape == (28, 28, 1)  # grayscale files
    assert not test.labels.any() and test.class_names == ()  # one folder: unlabeled
    forced = data.load_split(_config(str(tmp_path), channels=3), "test")
    assert forced.image_shape == (28, 28, 3)


def test_images_are_centre_cropped_then_resized(tmp_path):
    image = _image(5, (60, 40, 3))  # 60 high, 40 wide
    _write(str(tmp_path / "train" / "a.png"), image)
    _write(str(tmp_path / "test" / "a.png"), image)
    loaded = data.load_split(_config(str(tmp_path)), "train").images[0]
    expected = data.center_crop_and_resize(tf.constant(image), 40, 28).numpy()  # 40x40 square
    np.testing.assert_array_equal(loaded, expected)
    cropped = data.load_split(_config(str(tmp_path), crop=20), "train").images[0]
    expected = data.center_crop_and_resize(tf.constant(image), 20, 28).numpy()
    np.testing.assert_array_equal(cropped, expected)


@pytest.mark.slow
def test_an_unreadable_file_is_named_or_skipped_and_counted(two_classes, caplog):
    bad = os.path.join(two_classes, "dogs", "d3.jpg")
    with open(bad, "r+b") as f:
        f.truncate(100)  # a truncated JPEG
    with open(os.path.join(two_classes, "cats", "notes.png"), "w") as f:
        f.write("text, not a PNG")
    config = _config(two_classes, test_fraction=0.5)
    loaded = {}
    for split in ("train", "test"):
        try:
            data.load_split(config, split)
        except ConfigError as error:
            loaded[split] = str(error)
    message = " ".join(loaded.values())
    assert "d3.jpg" in message or "notes.png" in message, message
    assert "--skip_bad_images" in message
    skipped = [data.load_split(config.replace(skip_bad_images=True), s).num_examples
               for s in ("train", "test")]
    assert sum(skipped) == 29  # 30 images + 1 fake, 2 unreadable
    assert "Skipped" in caplog.text


def test_a_folder_with_no_images_and_a_missing_dir_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="No train images"):
        data.load_split(_config(str(tmp_path / "empty")), "train")
    with pytest.raises(ConfigError, match="not a directory"):
        data.load_split(_config(str(tmp_path / "missing")), "train")
    with pytest.raises(ConfigError, match="--data_dir"):
        tiny_config(dataset="folder")


def test_celeba_from_its_official_files(tmp_path):
    """img_align_celeba/*.jpg (218x178) and list_eval_partition.txt: the official splits, the
    paper's 140-pixel centre crop resized to 64x64."""
    lines = []
    for i in range(7):
        name = f"{i + 1:06d}.jpg"
        _write(str(tmp_path / "img_align_celeba" / name), _image(i, (218, 178, 3)), "jpeg")
        lines.append(f"{name} {0 if i < 4 else (1 if i == 4 else 2)}")
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    config = tiny_config(dataset="celeb_a", data_dir=str(tmp_path))
    train, test = data.load_split(config, "train"), data.load_split(config, "test")
    assert (train.num_examples, test.num_examples) == (4, 2)
    assert train.image_shape == (64, 64, 3)
    decoded = tf.io.decode_jpeg(tf.io.read_file(str(tmp_path / "img_align_celeba" / "000001.jpg")))
    expected = data.center_crop_and_resize(decoded, 140, 64).numpy()
    np.testing.assert_array_equal(train.images[0], expected)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg train\n")
    with pytest.raises(ConfigError, match="list_eval_partition.txt"):
        data.load_split(config, "train")


@pytest.mark.slow
def test_training_runs_on_a_folder(two_classes, tmp_path):
    config = _config(two_classes, test_fraction=0.3, batch_size=4, train_steps=2)
    results = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["step"] == 2 and np.isfinite(results["test_recon_cost"])


def test_bmp_gif_and_webp_files_decode_like_png(tmp_path):
    """Every extension folders.EXTENSIONS lists decodes (lossless encodings: the same pixels as
    the PNG of the same image); the files are written with Pillow where it is installed."""
    image_module = pytest.importorskip("PIL.Image")
    pixels = _image(5, (40, 40, 1))[4:36, 4:36]
    _write(str(tmp_path / "train" / "a.png"), pixels)
    gray = image_module.fromarray(pixels[..., 0], mode="L")
    gray.save(tmp_path / "train" / "b.bmp")
    gray.save(tmp_path / "train" / "c.gif")
    gray.save(tmp_path / "train" / "d.webp", lossless=True)
    _write(str(tmp_path / "test" / "0.png"), pixels)
    loaded = data.load_split(tiny_config(dataset="folder", data_dir=str(tmp_path),
                                         image_size=32, channels=1), "train")
    assert loaded.num_examples == 4
    for image in loaded.images:
        np.testing.assert_array_equal(image, pixels)


def _as_root() -> bool:
    """Whether this process reads any file whatever its mode (root, CAP_DAC_OVERRIDE)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_a_link_loop_is_walked_once_and_a_file_reached_twice_is_listed_once(tmp_path):
    root = tmp_path / "d"
    for i in range(6):
        _write(str(root / ("sub" if i % 2 else "") / f"{i}.png"), _image(i, (20, 20, 1)))
    os.symlink(".", root / "loop")  # d/loop/loop/... without end
    os.symlink("..", root / "sub" / "up")
    os.symlink(os.path.join("sub", "1.png"), root / "alias.png")
    listed = folders.list_images(str(root))
    assert sorted(os.path.realpath(p) for p in listed) == sorted(
        str(p) for p in root.rglob("*.png") if not p.is_symlink() and "loop" not in p.parts)
    assert len(listed) == 6
    config = _config(str(root), test_fraction=0.5)
    train, test = (set(folders.split_files(config, s)[1]) for s in ("train", "test"))
    assert len(train) + len(test) == 6 and not train & test


def test_only_regular_files_are_listed(tmp_path, caplog):
    _write(str(tmp_path / "a.png"), _image(1, (20, 20, 1)))
    os.mkfifo(tmp_path / "fifo.png")  # reading it would block for ever
    assert folders.list_images(str(tmp_path)) == [str(tmp_path / "a.png")]
    assert "fifo.png" in caplog.text and "not regular files" in caplog.text


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    _write(str(tmp_path / "a.png"), _image(1, (20, 20, 1)))
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), "wb") as f:
        f.write(b"not read")
    with pytest.raises(ConfigError, match=r"caf\\xe9\.png is not UTF-8: rename it"):
        folders.list_images(str(tmp_path))


def test_both_splits_take_the_channels_of_the_train_split(tmp_path):
    """A colour file among grayscale ones decides for both splits, or for neither: the networks'
    input has one depth (else 'Depth of input (1) is not a multiple of ... (3)')."""
    for i in range(3):
        _write(str(tmp_path / "train" / f"{i}.png"), _image(i, (20, 20, 1)))
        _write(str(tmp_path / "test" / f"{i}.png"), _image(9 + i, (20, 20, 1)))
    _write(str(tmp_path / "train" / "colour.png"), _image(7, (20, 20, 3)))
    config = _config(str(tmp_path))
    assert [data.load_split(config, s).image_shape for s in ("train", "test")] == [(28, 28, 3)] * 2
    os.rename(tmp_path / "train" / "colour.png", tmp_path / "test" / "colour.png")
    shapes = [data.load_split(config, s).image_shape for s in ("train", "test")]
    assert shapes == [(28, 28, 1)] * 2  # the colour file converted to grayscale


def test_a_crop_larger_than_the_images_is_refused_not_padded(two_classes):
    with pytest.raises(ConfigError, match=r"--crop=31 exceeds the size 40x30 of .*: lower --crop"):
        data.load_split(_config(two_classes, crop=31), "train")
    files = folders.list_split(_config(two_classes, crop=30), "train")
    with pytest.raises(ConfigError, match=r"Cannot decode .* \(.*crop 35 exceeds the image size"):
        folders.decode_split(dataclasses.replace(files, crop=35), skip_bad=False)


def test_an_unreadable_file_is_named_or_skipped_and_listed(tmp_path, caplog):
    if _as_root():
        pytest.skip("run as root: a file of mode 000 is still readable")
    for i in range(4):
        _write(str(tmp_path / "train" / f"{i}.png"), _image(i, (20, 20, 1)))
    _write(str(tmp_path / "test" / "0.png"), _image(9, (20, 20, 1)))
    os.chmod(tmp_path / "train" / "2.png", 0)
    with pytest.raises(ConfigError, match=r"Cannot decode .*2\.png \(.*Permission denied"):
        data.load_split(_config(str(tmp_path)), "train")
    assert data.load_split(_config(str(tmp_path), skip_bad_images=True), "train").num_examples == 3
    assert "2.png (" in caplog.text and "Permission denied" in caplog.text


def test_a_workdir_inside_the_listed_images_is_refused_before_it_is_written(tmp_path):
    for i in range(3):
        _write(str(tmp_path / "d" / f"{i}.png"), _image(i, (20, 20, 1)))
    workdir = tmp_path / "d" / "runs" / "x"
    with pytest.raises(ConfigError, match=r"--workdir=.*runs/x is inside .*/d, whose images"):
        loop.train_and_evaluate(_config(str(tmp_path / "d")), str(workdir))
    assert not workdir.exists()
    for split in ("train", "test"):
        _write(str(tmp_path / "d" / split / "0.png"), _image(0, (20, 20, 1)))
    config = _config(str(tmp_path / "d"))
    folders.check_workdir(config, str(workdir))  # beside train/ and test/: not read
    with pytest.raises(ConfigError, match="inside .*train"):
        folders.check_workdir(config, str(tmp_path / "d" / "train" / "run"))
