"""A fitted latent sampler: a Gaussian mixture fitted to the training codes after training.

Decoding prior samples shows the regions of the latent space that Q_Z leaves empty; decoding
samples of a density fitted to the codes themselves gives sharper, more faithful images from the
same networks (ex-post density estimation: Ghosh et al. 2020; pythae's GMM sampler). EM runs as
batched float64 TF ops on the codes of at most 10,000 training images; sampling is stateless TF,
so one seed always draws the same code, in training, evaluation and serving alike.
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from wae_tf import fileio

FILE = "latent_sampler.json"  # in a training run's directory, beside config.json
# Added to every covariance's diagonal: keeps each component positive definite when it holds
# few or coinciding codes (as scikit-learn's reg_covar).
COVARIANCE_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """A full-covariance Gaussian mixture in the latent space."""
    weights: np.ndarray  # [K], summing to 1
    means: np.ndarray  # [K, d]
    covariances: np.ndarray  # [K, d, d]

    @property
    def cholesky(self) -> np.ndarray:
        return np.linalg.cholesky(self.covariances)  # [K, d, d], lower

    def log_likelihood(self, codes) -> float:
        """Mean log-density of codes [n, d] under the mixture."""
        log_p = _log_densities(tf.constant(codes, tf.float64), *as_tensors(self, tf.float64))
        return float(tf.reduce_mean(tf.reduce_logsumexp(log_p, axis=1)))

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": self.covariances.tolist()}

    @classmethod
    def from_dict(cls, values: dict) -> "GaussianMixture":
        return cls(*(np.asarray(values[k], np.float64)
                     for k in ("weights", "means", "covariances")))


@tf.function(autograph=False, reduce_retracing=True)
def _log_densities(x, log_weights, means, chol):
    """x [n, d], log weights [K], means [K, d], Cholesky factors [K, d, d] -> [n, K]."""
    d = tf.cast(tf.shape(x)[1], x.dtype)
    eye = tf.eye(tf.shape(x)[1], batch_shape=tf.shape(chol)[:1], dtype=x.dtype)
    inverse = tf.linalg.triangular_solve(chol, eye, lower=True)  # L^-1, [K, d, d]
    # L^-1 (x - mu) = L^-1 x - L^-1 mu: one batched matmul over the codes, [K, n, d].
    solved = (tf.einsum("kij,nj->kni", inverse, x)
              - tf.einsum("kij,kj->ki", inverse, means)[:, None])
    log_det = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)), axis=1)  # [K]
    log_p = (log_weights[:, None] - 0.5 * tf.reduce_sum(tf.square(solved), axis=2)
             - 0.5 * (d * np.log(2.0 * np.pi) + log_det)[:, None])  # [K, n]
    return tf.transpose(log_p)


@tf.function(autograph=False, reduce_retracing=True)
def _m_step_tf(x, resp):
    """Weights, means and covariances (+ COVARIANCE_FLOOR I) from responsibilities [n, K]."""
    counts = tf.reduce_sum(resp, axis=0) + 1e-10  # [K]
    means = tf.matmul(resp, x, transpose_a=True) / counts[:, None]  # [K, d]
    diff = x[None] - means[:, None]  # [K, n, d]
    weighted = diff * tf.transpose(resp)[:, :, None]
    covariances = tf.matmul(weighted, diff, transpose_a=True) / counts[:, None, None]
    eye = tf.eye(tf.shape(x)[1], dtype=x.dtype)
    return counts / tf.reduce_sum(counts), means, covariances + COVARIANCE_FLOOR * eye


@tf.function(autograph=False, reduce_retracing=True)
def _em_step(x, weights, means, covariances):
    """One E step and one M step; also the mean log-likelihood before it."""
    log_p = _log_densities(x, tf.math.log(weights), means, tf.linalg.cholesky(covariances))
    total = tf.reduce_logsumexp(log_p, axis=1)  # [n]
    return (*_m_step_tf(x, tf.exp(log_p - total[:, None])), tf.reduce_mean(total))


def _initial_means(x: np.ndarray, components: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance."""
    centres = [x[rng.integers(len(x))]]
    d2 = np.sum((x - centres[0]) ** 2, axis=1)
    for _ in range(1, components):
        total = d2.sum()
        index = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[index])
        d2 = np.minimum(d2, np.sum((x - x[index]) ** 2, axis=1))
    return np.stack(centres)


def fit_gmm(codes, components: int, seed: int, max_iterations: int = 100,
            tolerance: float = 1e-4) -> GaussianMixture:
    """EM for a full-covariance Gaussian mixture of `components` on codes [n, d] (float64 TF
    ops: batched triangular solves and matmuls).

    Starts from hard assignments to k-means++ centres (seeded), then alternates the E and M
    steps until the mean log-likelihood improves by less than `tolerance` (or max_iterations).
    The same codes and seed give the same mixture.
    """
    x = np.asarray(codes, np.float64)
    if x.ndim != 2 or len(x) < components:
        raise ValueError(f"Need at least {components} codes [n, d] to fit {components} "
                         f"components, got shape {x.shape}.")
    centres = _initial_means(x, components, np.random.default_rng(seed))
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    x_tf = tf.constant(x)
    params = _m_step_tf(x_tf, tf.constant(np.eye(components)[nearest]))
    previous = -np.inf
    for _ in range(max_iterations):
        *params, mean_log_likelihood = _em_step(x_tf, *params)
        if float(mean_log_likelihood) - previous < tolerance:
            break
        previous = float(mean_log_likelihood)
    return GaussianMixture(*(p.numpy() for p in params))


def sample(mixture_tensors, num, seed):
    """`num` codes [num, d] of a mixture given as (log weights [K], means [K, d], Cholesky
    factors [K, d, d]) float32 tensors; stateless: the same seed [2] gives the same codes."""
    log_weights, means, chol = mixture_tensors
    component_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    k = tf.random.stateless_categorical(log_weights[None], num, component_seed)[0]  # [num]
    eps = tf.random.stateless_normal([num, tf.shape(means)[1]], noise_seed)  # [num, d]
    return tf.gather(means, k) + tf.einsum("nij,nj->ni", tf.gather(chol, k), eps)


def as_tensors(mixture: GaussianMixture, dtype=tf.float32):
    """(log weights, means, Cholesky factors) as constants: float32 for `sample`."""
    return (tf.constant(np.log(np.maximum(mixture.weights, 1e-300)), dtype),
            tf.constant(mixture.means, dtype), tf.constant(mixture.cholesky, dtype))


def sample_per_seed(mixture_tensors, seeds):
    """One code per int64 seed [N] -> [N, d] (the `sample` signature's contract: a seed's code
    does not depend on the other seeds of the request)."""
    d = int(mixture_tensors[1].shape[1])

    def draw(one_seed):
        return sample(mixture_tensors, 1, tf.stack([one_seed, tf.ones_like(one_seed)]))[0]
    return tf.map_fn(draw, seeds, fn_output_signature=tf.TensorSpec([d], tf.float32))


def save(mixture: GaussianMixture, path: str, **metadata) -> None:
    """Write the mixture (and e.g. the step and number of codes it was fitted on) as JSON."""
    fileio.write_json(path, {**mixture.to_dict(), **metadata})


def maybe_load(path: str) -> Optional[GaussianMixture]:
    """The mixture stored at `path` by `save`, or None if there is none."""
    if not tf.io.gfile.exists(path):
        return None
    return GaussianMixture.from_dict(fileio.read_json(path))
