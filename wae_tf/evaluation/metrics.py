"""Sample-quality metrics as pure numpy/tf functions: FID, KID, precision/recall, sharpness, MMD.

Everything here takes arrays and returns numbers; which features, images and sample counts go in
is decided by wae_tf.evaluate, which records them beside each number.
"""

import math
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from wae_tf.model import regularizers

# The 3x3 Laplacian of the WAE paper's code (wae.py, `compute_blurriness`).
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
# ITU-R 601 luma weights, as tf.image.rgb_to_grayscale.
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float64)
# (scale, offset) taking [0, 1] pixels to each --pixel_range.
PIXEL_OFFSETS = {"unit": (1.0, 0.0), "symmetric": (2.0, -1.0)}


# ------------------------------------------------------------------------------------- FID


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix, by eigh.

    Eigenvalues that rounding pushed below zero are clipped to 0, so the result is real.
    """
    sym = 0.5 * (matrix + matrix.T)
    values, vectors = np.linalg.eigh(sym)  # [d], [d, d]
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr sqrt(cov1 cov2) for PSD cov1, cov2.

    cov1 cov2 is similar to the PSD matrix S cov2 S with S = sqrt(cov1) (conjugate by S), so its
    eigenvalues are real and non-negative, and tr sqrt(cov1 cov2) = sum_i sqrt(eig_i(S cov2 S)).
    Unlike scipy.linalg.sqrtm of the non-symmetric product, this never returns complex noise.
    """
    root = _sqrt_psd(cov1)
    inner = root @ cov2 @ root
    eigenvalues = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Fréchet (W2) distance of N(mu1, cov1) and N(mu2, cov2) (Heusel et al. 2017, eq. 6).

    d^2 = ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr sqrt(cov1 cov2).

    Args:
        mu1, mu2: Means, [d].
        cov1, cov2: Covariances, [d, d], symmetric PSD.

    Returns:
        The distance (>= 0 up to rounding; clipped at 0), a python float.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))  # [d] each
    cov1, cov2 = (np.atleast_2d(np.asarray(c, np.float64)) for c in (cov1, cov2))  # [d, d]
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(f"Mismatched shapes: mu {mu1.shape}, {mu2.shape}; cov {cov1.shape}, "
                         f"{cov2.shape}.")
    diff = mu1 - mu2
    value = (diff @ diff + np.trace(cov1) + np.trace(cov2)
             - 2.0 * _trace_sqrt_product(cov1, cov2))
    return max(float(value), 0.0)


def feature_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
    """Mean [d] and unbiased covariance [d, d] (float64) of features [n, d], n >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"Need features [n >= 2, d], got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(
        features.shape[1], features.shape[1])


def fid(features_a, features_b) -> float:
    """Fréchet Inception-style distance of two feature sets [n, d] and [m, d].

    Biased for finite n, m (it shrinks as they grow): compare numbers at equal sample counts.
    """
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


# ------------------------------------------------------------------------------------- KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for x [a, d], y [b, d] -> [a, b] (float64): KID's kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3) with polynomial_kernel.

    MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n),  for x [m, d], y [n, d], m, n >= 2.
    """
    m, n = x.shape[0], y.shape[0]
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)  # [m, m], [n, n]
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * polynomial_kernel(x, y).mean())


def kid(real_features, fake_features, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> Dict[str, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, section 3): unbiased MMD^2 between the
    feature sets with k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

    Each of `num_subsets` subsets draws s = min(subset_size, n, m) real and s fake points
    without replacement (as the paper and clean-fid: 100 subsets of 1000). Unlike FID, the
    estimate is unbiased whatever the sample count, so it can be negative near 0.

    Args:
        real_features: [n, d].
        fake_features: [m, d].
        num_subsets: How many subsets to average.
        subset_size: Points per subset and per set (capped by n and m).
        seed: Seed of the subsets.

    Returns:
        {"value": mean, "std": population std of the subset estimates, "subsets",
         "subset_size"}.
    """
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"Need features [n, d] and [m, d], got {real.shape}, {fake.shape}.")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 points per set, got {real.shape[0]} and "
                         f"{fake.shape[0]}.")
    rng = np.random.default_rng(seed)
    values = [unbiased_mmd2(real[rng.choice(real.shape[0], size, replace=False)],
                            fake[rng.choice(fake.shape[0], size, replace=False)])
              for _ in range(num_subsets)]
    return {"value": float(np.mean(values)), "std": float(np.std(values)),
            "subsets": num_subsets, "subset_size": size}


# --------------------------------------------------------------------------- precision/recall


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """||x_i - y_j||^2 for x [b, d], y [m, d] -> [b, m] (float64, clipped at 0)."""
    dots = x @ y.T
    d2 = np.sum(x * x, axis=1)[:, None] + np.sum(y * y, axis=1)[None, :] - 2.0 * dots
    return np.maximum(d2, 0.0)


def knn_radii(features, k: int, batch: int = 1000) -> np.ndarray:
    """Squared distance of each point [n, d] to its k-th nearest other point, [n].

    Rows are processed `batch` at a time, so memory is batch x n (1000 x 10000 float64 = 80 MB).
    """
    features = np.asarray(features, np.float64)
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} must be in [1, {n - 1}] for {n} points.")
    radii = np.empty(n)
    for start in range(0, n, batch):
        d2 = _squared_distances(features[start:start + batch], features)  # [b, n]
        # Index 0 of the sorted row is the point itself (distance 0): the k-th neighbour is at k.
        radii[start:start + batch] = np.partition(d2, k, axis=1)[:, k]
    return radii


def _fraction_inside(points, centres, radii, batch: int = 1000) -> float:
    """Fraction of points [n, d] inside at least one ball (centres [m, d], squared radii [m])."""
    points, centres = np.asarray(points, np.float64), np.asarray(centres, np.float64)
    inside = 0
    for start in range(0, points.shape[0], batch):
        d2 = _squared_distances(points[start:start + batch], centres)  # [b, m]
        inside += int(np.sum(np.any(d2 <= radii[None, :], axis=1)))
    return inside / points.shape[0]


def precision_recall(real_features, fake_features, k: int = 3,
                     batch: int = 1000) -> Dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2).

    The manifold of a set is the union of balls around its points with radius the distance to
    the k-th nearest neighbour in the same set. Precision = fraction of fake points inside the
    real manifold (sample quality); recall = fraction of real points inside the fake manifold
    (coverage). The paper uses k = 3.

    Args:
        real_features: [n, d].
        fake_features: [m, d].
        k: Neighbour rank of the radii.
        batch: Rows per distance block.

    Returns:
        {"precision": float, "recall": float}, each in [0, 1].
    """
    real_radii = knn_radii(real_features, k, batch)  # [n]
    fake_radii = knn_radii(fake_features, k, batch)  # [m]
    return {"precision": _fraction_inside(fake_features, real_features, real_radii, batch),
            "recall": _fraction_inside(real_features, fake_features, fake_radii, batch)}


# -------------------------------------------------------------------------------- sharpness


def to_grayscale(images) -> np.ndarray:
    """[N, H, W, C] (C = 1 or 3) -> float64 [N, H, W]; RGB by the ITU-R 601 luma weights."""
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Need images [N, H, W, 1 or 3], got shape {images.shape}.")
    return images[..., 0] if images.shape[-1] == 1 else images @ _LUMA


def laplacian_variance(images, pixel_range: str = "unit") -> np.ndarray:
    """Variance of the 3x3 Laplacian response of each image, [N] (float64).

    The WAE paper's sharpness (Table 1, code `compute_blurriness`): grayscale, convolve with
    [[0,1,0],[1,-4,1],[0,1,0]] over the valid (H-2) x (W-2) region, population variance per image.
    `images` are in [0, 1]; the variance is that of the pixels in `pixel_range`: "unit" [0, 1],
    or "symmetric" [-1, 1] (2x - 1, 4x the variance), the network's pixels on which the paper's
    code measures CelebA. Higher means sharper (blurry images have a flat Laplacian).
    """
    if pixel_range not in PIXEL_OFFSETS:
        raise ValueError(f"Unknown pixel range {pixel_range!r}; expected unit or symmetric.")
    scale, offset = PIXEL_OFFSETS[pixel_range]
    x = to_grayscale(scale * np.asarray(images, np.float64) + offset)  # [N, H, W]
    lap = (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]
           - 4.0 * x[:, 1:-1, 1:-1])  # [N, H-2, W-2]
    return lap.reshape(lap.shape[0], -1).var(axis=1)


def laplacian_sharpness(images, pixel_range: str = "unit") -> float:
    """Mean over images [N, H, W, C] in [0, 1] of `laplacian_variance` on `pixel_range`'s
    pixels: the paper's sharpness number."""
    return float(np.mean(laplacian_variance(images, pixel_range)))


# ------------------------------------------------------------------------- reconstruction


class ReconstructionMetrics:
    """Test reconstruction cost per image (the training cost c(x, G(E(x)))) and MSE per pixel,
    summed over batches of images [b, H, W, C] and their reconstructions; used by the training
    loop and by the evaluation alike."""

    def __init__(self, cost: str, pixel_scale: float = 1.0):
        self.cost, self.pixel_scale = cost, pixel_scale
        self._cost_sum, self._squared_sum, self.num_images, self._pixels = 0.0, 0.0, 0, 0

    def update(self, images, recon) -> None:
        self._cost_sum += float(tf.reduce_sum(
            regularizers.reconstruction_cost(images, recon, self.cost, self.pixel_scale)))
        self._squared_sum += float(tf.reduce_sum(tf.square(images - recon)))
        self.num_images += int(images.shape[0])
        self._pixels += int(np.prod(images.shape))

    def result(self) -> Dict[str, float]:
        if not self.num_images:
            raise ValueError("No images were reconstructed.")
        return {"test_recon_cost": self._cost_sum / self.num_images,
                "test_mse_per_pixel": self._squared_sum / self._pixels}


# -------------------------------------------------------------------------------------- MMD


def mmd_to_prior(codes, prior_samples, subset_size: int = 1000, kernel: str = "imq",
                 imq_base: float = 2.0) -> Dict[str, float]:
    """MMD^2(Q_Z, P_Z) estimated on disjoint subsets, with the training penalty's estimator.

    regularizers.mmd_penalty builds three [s, s] kernel blocks; on all 10,000 test codes each
    would be 10,000^2 float32 values (400 MB). Instead the codes [n, z_dim] and prior samples
    [n, z_dim] are cut into floor(n / s) disjoint pairs of subsets of s = min(subset_size, n)
    points; the mean of the unbiased subset estimates is unbiased, and its standard error is
    reported. `imq_base` is the IMQ kernel's base constant, as in training (E||z - z'||^2 under
    the prior: 2 * z_dim * s^2 for N(0, s^2 I)); RBF takes the training's median heuristic.

    Returns:
        {"value", "stderr" (None for a single subset), "num_subsets", "subset_size"}.
    """
    codes = np.asarray(codes, np.float32)
    prior_samples = np.asarray(prior_samples, np.float32)
    n = min(codes.shape[0], prior_samples.shape[0])
    size = min(subset_size, n)
    if size < 2:
        raise ValueError(f"Need at least 2 codes and prior samples, got {n}.")
    count = n // size
    values = [float(regularizers.mmd_penalty(
        tf.constant(codes[i * size:(i + 1) * size]),
        tf.constant(prior_samples[i * size:(i + 1) * size]), kernel, imq_base))
        for i in range(count)]
    stderr = float(np.std(values, ddof=1) / math.sqrt(count)) if count > 1 else None
    return {"value": float(np.mean(values)), "stderr": stderr, "num_subsets": count,
            "subset_size": size}
