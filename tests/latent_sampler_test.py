"""The fitted latent sampler: EM recovers a known mixture, sampling is fixed per seed, the fit
reads its images batch by batch and equals a fit of the same codes computed at once, and the
export's sample_fitted decodes what the training run's mixture draws."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import make_images, tiny_config
from wae_tf import data, loop
from wae_tf.evaluation import evaluator
from wae_tf.model import latent_sampler, networks


def _known_mixture_sample(n=6000, seed=0):
    """Two well separated 2-D Gaussians, weights 0.3 / 0.7, with different covariances."""
    rng = np.random.default_rng(seed)
    first = rng.multivariate_normal([-4.0, 0.0], [[1.0, 0.6], [0.6, 1.0]], int(0.3 * n))
    second = rng.multivariate_normal([4.0, 1.0], [[0.25, 0.0], [0.0, 2.0]], n - int(0.3 * n))
    return np.concatenate([first, second])


def test_em_recovers_a_known_mixture():
    mixture = latent_sampler.fit_gmm(_known_mixture_sample(), components=2, seed=1)
    order = np.argsort(mixture.means[:, 0])  # left component first
    np.testing.assert_allclose(mixture.weights[order], [0.3, 0.7], atol=0.02)
    np.testing.assert_allclose(mixture.means[order], [[-4.0, 0.0], [4.0, 1.0]], atol=0.1)
    np.testing.assert_allclose(mixture.covariances[order[0]], [[1.0, 0.6], [0.6, 1.0]], atol=0.1)
    np.testing.assert_allclose(mixture.covariances[order[1]], [[0.25, 0.0], [0.0, 2.0]], atol=0.1)
    again = latent_sampler.fit_gmm(_known_mixture_sample(), components=2, seed=1)
    np.testing.assert_array_equal(again.means, mixture.means)  # same codes, same seed
    one = latent_sampler.fit_gmm(_known_mixture_sample(), components=1, seed=1)
    data = _known_mixture_sample(seed=5)
    assert mixture.log_likelihood(data) > one.log_likelihood(data) + 0.5


def test_samples_are_fixed_per_seed_and_follow_the_mixture():
    mixture = latent_sampler.fit_gmm(_known_mixture_sample(), components=2, seed=1)
    tensors = latent_sampler.as_tensors(mixture)
    seeds = tf.constant([7, 8, 7], tf.int64)
    codes = latent_sampler.sample_per_seed(tensors, seeds).numpy()
    np.testing.assert_array_equal(codes[0], codes[2])
    assert not np.array_equal(codes[0], codes[1])
    np.testing.assert_array_equal(latent_sampler.sample_per_seed(tensors, seeds[1:2])[0], codes[1])
    many = latent_sampler.sample(tensors, 20000, tf.constant([3, 4])).numpy()
    assert np.mean(many[:, 0] < 0) == pytest.approx(0.3, abs=0.02)
    np.testing.assert_allclose(np.cov(many[many[:, 0] > 0].T), [[0.25, 0.0], [0.0, 2.0]],
                               atol=0.1)


@dataclasses.dataclass(frozen=True, eq=False)
class _CountingRows(data.ImageRows):
    """A streamed split served from an array, recording how many rows each read returns."""
    images: np.ndarray = None  # uint8 [N, H, W, C]
    reads: list = dataclasses.field(default_factory=list)

    def read(self, indices):
        self.reads.append(len(indices))
        return self.images[indices]


@pytest.mark.numerics
def test_the_fit_reads_one_batch_at_a_time_and_equals_a_fit_of_all_codes_at_once(
        tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the sampler's fit must not materialise its images")
    monkeypatch.setattr(data, "materialize", fail)
    monkeypatch.setattr(loop, "SAMPLER_FIT_LIMIT", 40)  # of 64 images: a seeded subset
    config = tiny_config(sampler_components=3, batch_size=8, seed=4)
    memory = make_images(64)
    rows = _CountingRows(path="", labels=memory.labels, image_shape=memory.image_shape,
                         name="rows", images=memory.images)
    encoder = networks.make_encoder(config, memory.image_shape)
    mixture = loop.fit_latent_sampler(config, encoder, rows, str(tmp_path), step=2)
    assert max(rows.reads) <= config.batch_size and sum(rows.reads) == 40
    keep = data.subset_indices(64, 40, config.seed)
    codes = networks.encoder_mean(encoder, data.to_float(memory.images[keep])).numpy()  # at once
    np.testing.assert_allclose(loop.training_codes(config, encoder, memory), codes, atol=1e-5)
    expected = latent_sampler.fit_gmm(codes, 3, config.seed)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(getattr(mixture, name), getattr(expected, name), rtol=1e-4,
                                   atol=1e-7, err_msg=name)
    saved = latent_sampler.maybe_load(str(tmp_path / latent_sampler.FILE))
    np.testing.assert_array_equal(saved.means, mixture.means)


@pytest.mark.slow
def test_training_fits_it_and_the_export_and_evaluation_use_it(tmp_path):
    train, test = make_images(48), make_images(16, seed=1)
    config = tiny_config(export=True, sampler_components=3)
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir, data_override=(train, test))
    mixture = latent_sampler.maybe_load(os.path.join(workdir, latent_sampler.FILE))
    assert mixture.means.shape == (3, config.z_dim) and mixture.weights.sum() == pytest.approx(1)
    from_workdir = evaluator.load_from_workdir(workdir)
    from_export = evaluator.load_from_saved_model(os.path.join(workdir, "export"))
    seeds = tf.constant([5, 6, 5], tf.int64)
    images = from_export.sample_fitted(seeds).numpy()
    assert images.shape == (3, 28, 28, 1) and 0 <= images.min() and images.max() <= 1
    np.testing.assert_allclose(images[0], images[2], atol=1e-6)
    np.testing.assert_allclose(from_workdir.sample_fitted(seeds), images, atol=1e-5)
    no_sampler = tiny_config(sampler_components=0)
    loop.train_and_evaluate(no_sampler, str(tmp_path / "plain"), data_override=(train, test))
    assert not os.path.exists(tmp_path / "plain" / latent_sampler.FILE)
