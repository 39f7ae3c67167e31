"""A fitted latent sampler: a Gaussian mixture fitted to the training codes after training.

Decoding prior samples shows the regions of the latent space that Q_Z leaves empty; decoding
samples of a density fitted to the codes themselves gives sharper, more faithful images from the
same networks (ex-post density estimation: Ghosh et al. 2020; pythae's GMM sampler). EM runs in
NumPy (float64) on at most a few tens of thousands of codes; sampling is stateless TF, so one
seed always draws the same code, in training, evaluation and serving alike.
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
        return float(np.mean(_logsumexp(_component_log_densities(self, codes), axis=1)))

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": self.covariances.tolist()}

    @classmethod
    def from_dict(cls, values: dict) -> "GaussianMixture":
        return cls(*(np.asarray(values[k], np.float64)
                     for k in ("weights", "means", "covariances")))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def _component_log_densities(mixture: GaussianMixture, codes) -> np.ndarray:
    """log w_k + log N(x_i; mu_k, Sigma_k), [n, K]."""
    x = np.asarray(codes, np.float64)
    d = x.shape[1]
    out = np.empty((x.shape[0], len(mixture.weights)))
    for k, (weight, mean, chol) in enumerate(zip(mixture.weights, mixture.means,
                                                  mixture.cholesky)):
        solved = np.linalg.solve(chol, (x - mean).T)  # L^-1 (x - mu), [d, n]
        log_det = 2.0 * np.sum(np.log(np.diag(chol)))
        out[:, k] = (np.log(max(weight, 1e-300)) - 0.5 * np.sum(solved ** 2, axis=0)
                     - 0.5 * (d * np.log(2.0 * np.pi) + log_det))
    return out


def _initial_means(x: np.ndarray, components: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, components):
        d2 = np.min([np.sum((x - c) ** 2, axis=1) for c in centres], axis=0)
        total = d2.sum()
        index = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres.append(x[index])
    return np.stack(centres)


def _m_step(x: np.ndarray, resp: np.ndarray) -> GaussianMixture:
    counts = resp.sum(axis=0) + 1e-10  # [K]
    means = resp.T @ x / counts[:, None]  # [K, d]
    eye = np.eye(x.shape[1])
    covariances = np.stack([
        (resp[:, k, None] * (x - means[k])).T @ (x - means[k]) / counts[k] + COVARIANCE_FLOOR * eye
        for k in range(resp.shape[1])])
    return GaussianMixture(counts / counts.sum(), means, covariances)


def fit_gmm(codes, components: int, seed: int, max_iterations: int = 200,
            tolerance: float = 1e-5) -> GaussianMixture:
    """EM for a full-covariance Gaussian mixture of `components` on codes [n, d].

    Starts from hard assignments to k-means++ centres (seeded), then alternates the E and M
    steps until the mean log-likelihood improves by less than `tolerance` (or max_iterations).
    The same codes and seed give the same mixture.
    """
    x = np.asarray(codes, np.float64)
    if x.ndim != 2 or len(x) < components:
        raise ValueError(f"Need at least {components} codes [n, d] to fit {components} "
                         f"components, got shape {x.shape}.")
    rng = np.random.default_rng(seed)
    centres = _initial_means(x, components, rng)
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    mixture = _m_step(x, np.eye(components)[nearest])
    previous = -np.inf
    for _ in range(max_iterations):
        log_p = _component_log_densities(mixture, x)  # [n, K]
        total = _logsumexp(log_p, axis=1)  # [n]
        mixture = _m_step(x, np.exp(log_p - total[:, None]))
        if total.mean() - previous < tolerance:
            break
        previous = total.mean()
    return mixture


def sample(mixture_tensors, num, seed):
    """`num` codes [num, d] of a mixture given as (log weights [K], means [K, d], Cholesky
    factors [K, d, d]) float32 tensors; stateless: the same seed [2] gives the same codes."""
    log_weights, means, chol = mixture_tensors
    component_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    k = tf.random.stateless_categorical(log_weights[None], num, component_seed)[0]  # [num]
    eps = tf.random.stateless_normal([num, tf.shape(means)[1]], noise_seed)  # [num, d]
    return tf.gather(means, k) + tf.einsum("nij,nj->ni", tf.gather(chol, k), eps)


def as_tensors(mixture: GaussianMixture):
    """(log weights, means, Cholesky factors) as float32 constants for `sample`."""
    return (tf.constant(np.log(np.maximum(mixture.weights, 1e-300)), tf.float32),
            tf.constant(mixture.means, tf.float32), tf.constant(mixture.cholesky, tf.float32))


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
