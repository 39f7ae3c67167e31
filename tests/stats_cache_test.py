"""wae_tf.evaluation.stats_cache: features computed once per key and read back with their
statistics; another key, an unreadable file or an unwritable directory computes again."""

import os

import numpy as np
import pytest

from wae_tf.evaluation import stats_cache

KEY = dict(dataset="synthetic", split="test", num_test_images=6, space="custom")


def _counting(features):
    calls = []

    def compute():
        calls.append(1)
        return features
    return compute, calls


def test_features_are_computed_once_and_read_back_with_their_statistics(tmp_path):
    features = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    compute, calls = _counting(features)
    first = stats_cache.load_or_compute(str(tmp_path), KEY, compute)
    again = stats_cache.load_or_compute(str(tmp_path), KEY, compute)
    assert len(calls) == 1 and again.origin.startswith("read from")
    np.testing.assert_array_equal(again.features, features)
    np.testing.assert_allclose(again.mean, features.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(again.cov, np.cov(features.astype(np.float64), rowvar=False))
    assert first.origin.startswith("computed, cached in")
    stats_cache.load_or_compute(str(tmp_path), dict(KEY, num_test_images=5), compute)
    assert len(calls) == 2  # another key


def test_no_cache_dir_an_unreadable_file_or_an_unwritable_dir_compute_again(tmp_path):
    features = np.ones((4, 2), np.float32)
    compute, calls = _counting(features)
    assert stats_cache.load_or_compute(None, KEY, compute).origin == "computed"
    path = stats_cache.cache_file(str(tmp_path), dict(KEY, version=stats_cache.VERSION))
    with open(path, "wb") as f:
        f.write(b"not an npz")
    assert stats_cache.load_or_compute(str(tmp_path), KEY, compute).origin.startswith("computed")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = stats_cache.load_or_compute(str(blocker / "sub"), KEY, compute)
    assert unwritable.origin == "computed" and len(calls) == 3


def test_resolve_and_digest():
    assert stats_cache.resolve("auto", "/c") == os.path.join("/c", "feature_stats")
    assert stats_cache.resolve("", "/c") is None
    images = np.zeros((2, 3, 3, 1), np.uint8)
    assert stats_cache.images_digest(images) == stats_cache.images_digest(images.copy())
    changed = images.copy()
    changed[1, 2, 2, 0] = 1
    assert stats_cache.images_digest(changed) != stats_cache.images_digest(images)


@pytest.mark.parametrize("n", [2, 5])
def test_the_covariance_is_unbiased(tmp_path, n):
    features = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    real = stats_cache.load_or_compute(str(tmp_path), dict(KEY, n=n), lambda: features)
    centred = features - features.mean(axis=0)
    np.testing.assert_allclose(real.cov, centred.T @ centred / (n - 1))
