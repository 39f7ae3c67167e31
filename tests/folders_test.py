"""Folders of real PNG/JPEG files: splits, labels, channels, crops, bad files, CelebA's layout."""

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
