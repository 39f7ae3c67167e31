"""FID, KID, Fréchet distance, precision/recall, sharpness and MMD against hand-computed values
and independent computations (numpy in float64; SciPy is not a dependency)."""

import numpy as np
import pytest

from wae_tf.evaluation import metrics


def test_frechet_distance_of_1d_gaussians_is_the_closed_form():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2 = (m1-m2)^2 + (s1-s2)^2.
    m1, s1, m2, s2 = 0.3, 2.0, -1.2, 0.5
    expected = (m1 - m2) ** 2 + s1 ** 2 + s2 ** 2 - 2 * s1 * s2  # 2.25 + 2.25 = 4.5
    got = metrics.frechet_distance([m1], [[s1 ** 2]], [m2], [[s2 ** 2]])
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_commuting_covariances_is_the_closed_form():
    # Diagonal covariances commute: tr sqrt(C1 C2) = sum sqrt(c1_i c2_i).
    c1, c2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.array([1.0, 0.0, 0.0]), np.zeros(3)
    expected = 1.0 + np.sum(c1) + np.sum(c2) - 2 * np.sum(np.sqrt(c1 * c2))  # 1 + 14 + 5 - 8
    got = metrics.frechet_distance(mu1, np.diag(c1), mu2, np.diag(c2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_is_zero_for_equal_singular_gaussians():
    # A rank-1 covariance: the eigh-based square root stays real and the distance exactly ~0.
    v = np.array([[1.0], [2.0], [-1.0]])
    cov = v @ v.T
    assert metrics.frechet_distance(np.ones(3), cov, np.ones(3), cov) == pytest.approx(0, abs=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16))  # correlated [2000, 16]
    assert metrics.fid(features, features) == pytest.approx(0.0, abs=1e-6)
    values = [metrics.fid(features, features + s * rng.normal(size=features.shape))
              for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] > 0


def _fid_by_eigenvalues(a: np.ndarray, b: np.ndarray) -> float:
    """FID as TTUR writes it, with tr sqrtm(C1 C2) from the eigenvalues of the non-symmetric
    product (real, >= 0 for PSD C1, C2), instead of metrics' symmetric square roots."""
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    c1 = (a - mu1).T @ (a - mu1) / (len(a) - 1)
    c2 = (b - mu2).T @ (b - mu2) / (len(b) - 1)
    eigenvalues = np.linalg.eigvals(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2)
                 - 2 * np.sum(np.sqrt(np.clip(eigenvalues.real, 0, None))))


def test_fid_matches_an_independent_computation():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))  # correlated [500, 12]
    b = 0.7 * rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 0.3  # [400, 12]
    assert metrics.fid(a, b) == pytest.approx(_fid_by_eigenvalues(a, b), rel=1e-9)


def _mmd2_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, one pair at a time."""
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_on_whole_sets_is_the_unbiased_mmd_computed_by_hand():
    # Subsets of all 30 points are permutations: every subset's estimate is the same number.
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 0.5
    result = metrics.kid(real, fake, num_subsets=4, subset_size=1000, seed=1)
    assert result["value"] == pytest.approx(_mmd2_by_loops(real, fake), rel=1e-10)
    assert result["std"] == pytest.approx(0.0, abs=1e-12)
    assert (result["subsets"], result["subset_size"]) == (4, 30)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(600, 8))
    same = metrics.kid(real, rng.normal(size=(600, 8)), num_subsets=20, subset_size=200)
    assert abs(same["value"]) < 3 * same["std"] + 1e-3  # unbiased: centred on 0, may be < 0
    shifted = [metrics.kid(real, rng.normal(size=(600, 8)) + s, num_subsets=20,
                           subset_size=200)["value"] for s in (0.25, 0.5, 1.0)]
    assert same["value"] < shifted[0] < shifted[1] < shifted[2], shifted
    assert same["subset_size"] == 200 and same["std"] > 0


def test_kid_of_constant_features_is_zero_and_subsets_are_seeded():
    constant = np.ones((50, 3))
    assert metrics.kid(constant, constant, num_subsets=5)["value"] == pytest.approx(0, abs=1e-12)
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(100, 4)), rng.normal(size=(80, 4))
    assert metrics.kid(real, fake, 5, 20, seed=7) == metrics.kid(real, fake, 5, 20, seed=7)
    assert metrics.kid(real, fake, 5, 20, seed=7) != metrics.kid(real, fake, 5, 20, seed=8)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kid(real[:1], fake)


def test_precision_recall_of_identical_sets_is_one():
    features = np.random.default_rng(1).normal(size=(500, 8))
    assert metrics.precision_recall(features, features, k=3) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_of_disjoint_far_apart_sets_is_zero():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(300, 8))
    fake = rng.normal(size=(200, 8)) + 100.0
    assert metrics.precision_recall(real, fake, k=3) == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_separates_quality_from_coverage():
    # Fakes on half of the real data: all inside the real manifold (precision ~1) but covering
    # only half of it (recall ~0.5).
    rng = np.random.default_rng(3)
    real = rng.uniform(-1, 1, size=(2000, 2))
    fake = real[real[:, 0] > 0][:800] + 1e-3 * rng.normal(size=(800, 2))
    result = metrics.precision_recall(real, fake, k=3, batch=128)  # batch < n: blocks agree
    assert result["precision"] > 0.97
    assert 0.4 < result["recall"] < 0.6


def test_knn_radii_match_brute_force():
    points = np.random.default_rng(4).normal(size=(50, 3))
    d2 = np.sum((points[:, None] - points[None]) ** 2, axis=-1)
    expected = np.sort(d2, axis=1)[:, 3]  # column 0 is the point itself
    np.testing.assert_allclose(metrics.knn_radii(points, 3, batch=7), expected, rtol=1e-9)


def test_sharpness_of_a_constant_image_is_zero():
    assert metrics.laplacian_sharpness(np.full((2, 8, 8, 1), 0.7)) == pytest.approx(0.0, abs=1e-12)


def test_sharpness_of_a_checkerboard_is_sixteen():
    # On a 0/1 checkerboard every valid pixel's four neighbours differ from it: the Laplacian is
    # 4 * (1 - c) - 4 * c = +4 at c = 0 and -4 at c = 1, half each -> mean 0, variance 16.
    board = (np.indices((6, 6)).sum(axis=0) % 2).astype(np.float64)[None, :, :, None]
    assert metrics.laplacian_sharpness(board) == pytest.approx(16.0)
    # RGB goes through the luma weights (sum 0.9999), scaling the variance by their sum squared.
    rgb = np.repeat(board, 3, axis=-1)
    assert metrics.laplacian_sharpness(rgb) == pytest.approx(16.0 * 0.9999 ** 2)


def test_sharpness_on_symmetric_pixels_is_four_times_that_on_unit_pixels():
    """The paper's code measures CelebA on [-1, 1] pixels (2x - 1): the Laplacian doubles and
    its variance quadruples; the offset -1 is flat, so the Laplacian does not see it."""
    images = np.random.default_rng(7).uniform(size=(3, 12, 10, 3))
    unit = metrics.laplacian_variance(images)
    np.testing.assert_allclose(metrics.laplacian_variance(images, "symmetric"), 4 * unit,
                               rtol=1e-12)
    assert metrics.laplacian_sharpness(images, "symmetric") == pytest.approx(
        4 * metrics.laplacian_sharpness(images, "unit"), rel=1e-12)
    # The 0/1 checkerboard becomes -1/1: Laplacians of +-8, variance 64.
    board = (np.indices((6, 6)).sum(axis=0) % 2).astype(np.float64)[None, :, :, None]
    assert metrics.laplacian_sharpness(board, "symmetric") == pytest.approx(64.0)
    with pytest.raises(ValueError, match="pixel range"):
        metrics.laplacian_sharpness(board, "wide")


def test_blurring_lowers_sharpness():
    rng = np.random.default_rng(5)
    images = rng.uniform(size=(4, 16, 16, 1))
    blurred = (images + np.roll(images, 1, 1) + np.roll(images, 1, 2)
               + np.roll(images, (1, 1), (1, 2))) / 4
    assert metrics.laplacian_sharpness(blurred) < metrics.laplacian_sharpness(images)


def test_mmd_to_prior_is_small_for_prior_codes_and_counts_subsets():
    rng = np.random.default_rng(6)
    prior = rng.normal(size=(2500, 4)).astype(np.float32)
    same = metrics.mmd_to_prior(rng.normal(size=(2500, 4)), prior, subset_size=1000)
    shifted = metrics.mmd_to_prior(rng.normal(size=(2500, 4)) + 1.0, prior, subset_size=1000)
    assert (same["num_subsets"], same["subset_size"]) == (2, 1000)  # floor(2500 / 1000)
    assert abs(same["value"]) < 0.01 < shifted["value"]
