"""python -m wae_tf.encode: codes of a folder equal the served `encode` of the same images."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, tiny_config
from tests.folders_test import _image, _write
from wae_tf import data, loop
from wae_tf.data import folders
from wae_tf.errors import ConfigError
from wae_tf.serving import encoding


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny WAE trained 2 steps on a folder of 40x30 RGB PNG/JPEG files, exported."""
    root = tmp_path_factory.mktemp("enc")
    images = str(root / "images")
    for i in range(12):
        _write(os.path.join(images, "a" if i % 2 else "b/deeper", f"{i}.png"), _image(i))
        _write(os.path.join(images, "jpegs", f"{i}.jpg"), _image(50 + i), "jpeg")
    config = tiny_config(dataset="folder", data_dir=images, image_size=32, crop=24,
                         batch_size=4, train_steps=2, export=True)
    loop.train_and_evaluate(config, str(root / "run"))
    return dict(images=images, export=str(root / "run" / "export"), root=root)


@pytest.mark.slow
def test_the_entry_point_writes_codes_equal_to_the_served_encode(trained, tmp_path):
    out = str(tmp_path / "codes.npz")
    result = subprocess.run(
        [sys.executable, "-m", "wae_tf.encode", f"--saved_model={trained['export']}",
         f"--images={trained['images']}", f"--out={out}", "--batch_size=5"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = np.load(out)
    paths = folders.list_images(trained["images"])
    assert list(saved["files"]) == [os.path.relpath(p, trained["images"]) for p in paths]
    assert saved["codes"].shape == (24, 4) and saved["codes"].dtype == np.float32
    assert saved["skipped"].size == 0
    # The training pipeline's images (24-pixel centre crop, 32x32 RGB) through the export.
    files = folders.FileSplit(tuple(paths), np.zeros(len(paths), np.int64), "x", 32, 3, 24)
    images, _ = folders.decode_split(files, skip_bad=False)
    served = tf.saved_model.load(os.path.join(trained["export"], "2")).signatures["encode"]
    expected = served(images=data.to_float(images))["z"].numpy()
    np.testing.assert_allclose(saved["codes"], expected, rtol=1e-5, atol=1e-6)


def test_unreadable_files_are_named_or_skipped(trained, tmp_path):
    images = str(tmp_path / "with_bad")
    for i in range(3):
        _write(os.path.join(images, f"{i}.png"), _image(i))
    with open(os.path.join(images, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff not really a JPEG")
    out = str(tmp_path / "codes.npz")
    with pytest.raises(ConfigError, match="broken.jpg.*--skip_bad_images"):
        encoding.encode_folder(trained["export"], images, out)
    assert not os.path.exists(out)
    result = encoding.encode_folder(trained["export"], images, out, skip_bad_images=True)
    assert (result["num_encoded"], result["num_skipped"]) == (3, 1)
    assert list(np.load(out)["skipped"]) == ["broken.jpg"]


def test_the_output_format_follows_the_extension(trained, tmp_path):
    """.npz holds codes, files, labels (first-level folders: a, b, jpegs), split and classes;
    .npy the codes alone; .csv a header and one row per image, with the same codes."""
    npz = encoding.encode_folder(trained["export"], trained["images"], str(tmp_path / "c.npz"))
    saved = np.load(npz["out"])
    assert list(saved["classes"]) == ["a", "b", "jpegs"]
    files = list(saved["files"])
    assert [saved["classes"][label] for label in saved["labels"]] == [
        f.split(os.sep)[0] for f in files]
    assert set(saved["split"]) <= {"train", "test"} and len(saved["split"]) == len(files)
    assert saved["skipped"].dtype.kind == "U" and saved["labels"].dtype == np.int64
    npy = encoding.encode_folder(trained["export"], trained["images"], str(tmp_path / "c.npy"))
    np.testing.assert_array_equal(np.load(npy["out"]), saved["codes"])
    csv_path = encoding.encode_folder(trained["export"], trained["images"],
                                      str(tmp_path / "c.csv"))["out"]
    with open(csv_path) as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    assert rows[0] == ["file", "label", "split", "z0", "z1", "z2", "z3"]
    assert [r[0] for r in rows[1:]] == files
    assert [r[1] for r in rows[1:]] == [f.split(os.sep)[0] for f in files]
    assert [r[2] for r in rows[1:]] == list(saved["split"])
    np.testing.assert_array_equal(np.array([r[3:] for r in rows[1:]], np.float32),
                                  saved["codes"])


def test_train_and_test_folders_are_the_splits_of_the_output(trained, tmp_path):
    images = tmp_path / "split"
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _write(str(images / split / ("cat" if i % 2 else "dog") / f"{i}.png"), _image(i))
    result = encoding.encode_folder(trained["export"], str(images), str(tmp_path / "s.npz"))
    saved = np.load(result["out"])
    assert [f.split(os.sep)[0] for f in saved["files"]] == list(saved["split"])
    assert list(saved["classes"]) == ["cat", "dog"]
    assert [saved["classes"][label] for label in saved["labels"]] == [
        f.split(os.sep)[1] for f in saved["files"]]


@pytest.mark.parametrize("out", ["codes.zip", "codes", "codes.json"])
def test_an_unknown_extension_is_refused_before_any_work(out, tmp_path):
    with pytest.raises(ConfigError, match=r"--out=.*unknown format.*\.npz.*\.npy.*\.csv"):
        encoding.encode_folder(str(tmp_path / "no_export"), str(tmp_path), str(tmp_path / out))
