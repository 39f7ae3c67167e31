"""Evaluation of a trained WAE on the test split: metrics.json, PNG figures and TensorBoard
(python -m wae_tf.evaluate).

Metrics (each stored with the counts and seeds it was computed from): the test reconstruction cost
(the training cost, per image) and MSE per pixel; FID, KID, precision and recall (k = 3) of decoded
prior samples against test images in one feature space (--fid_features, wae_tf.evaluation.features:
`inception`, `classifier` or a user's SavedModel, `custom`), each key naming it (`fid_inception`,
...) and "feature_space" describing it; with the classifier, its test accuracy; MMD between the
test codes (sampled z = mean + sigma*eps for a Gaussian encoder: the aggregate posterior Q_Z) and
prior samples; the Laplacian-variance sharpness of samples, reconstructions and test images. With a
fitted latent sampler (wae_tf.model.latent_sampler) FID, KID, precision and recall of its samples
too (`fid_<space>_fitted_sampler`, ...). The test images' features are cached
(wae_tf.evaluation.stats_cache). "warnings" lists what makes the numbers unreliable (too few test
images, a weak classifier), also logged. The codes of the test images go to TensorBoard's
embedding projector (wae_tf.runtime.tensorboard_logs).
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import config as config_lib
from wae_tf import data, fileio
from wae_tf.config import Config
from wae_tf.errors import ConfigError
from wae_tf.evaluation import classifier as classifier_lib
from wae_tf.evaluation import features as features_lib
from wae_tf.evaluation import figures, metrics, plots, stats_cache
from wae_tf.model import latent_sampler, networks, regularizers
from wae_tf.model import step as step_lib
from wae_tf.runtime import tensorboard_logs
from wae_tf.serving import saved_model

BATCH = 500
PRECISION_RECALL_K = 3
MMD_SUBSET = 1000
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # Binkowski et al. 2018 and clean-fid
MIN_STABLE_TEST_IMAGES = 2000  # fewer: FID's bias and spread swamp differences between models
MIN_CLASSIFIER_ACCURACY = 0.8  # lower: the classifier's features say little about the images
CLASSIFIER_TRAIN_LIMIT = 60000  # images the classifier trains on when the train split streams
# Tags of the evaluation's random draws, folded with --seed: [seed, tag].
_SAMPLES_TAG, _MMD_TAG, _EPS_TAG = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Autoencoder:
    """A trained model seen through two functions, whatever it was loaded from."""
    encode: Callable  # float32 [b, H, W, C] in [0, 1] -> float32 [b, z_dim] (posterior mean)
    decode: Callable  # float32 [b, z_dim] -> float32 [b, H, W, C] in [0, 1]
    config: Config
    image_shape: tuple  # (H, W, C)
    step: int
    source: str
    # Gaussian encoders: images -> float32 [b, z_dim] log-variances of the posterior.
    encode_log_var: Optional[Callable] = None
    # With a fitted latent sampler: int64 seeds [b] -> images [b, H, W, C] decoded from it.
    sample_fitted: Optional[Callable] = None


def load_from_workdir(workdir: str) -> Autoencoder:
    """Rebuild the networks of a training run and restore its latest checkpoint."""
    run = saved_model.restore_trained_models(workdir)
    encoder, decoder = run.encoder, run.decoder
    encode = tf.function(lambda x: networks.encoder_mean(encoder, x))
    decode = tf.function(lambda z: decoder(z, training=False))
    log_var = None
    if run.config.encoder == "gaussian":
        log_var = tf.function(lambda x: encoder(x, training=False)[1])
    mixture = latent_sampler.maybe_load(os.path.join(workdir, latent_sampler.FILE))
    fitted = None
    if mixture is not None:
        tensors = latent_sampler.as_tensors(mixture)
        fitted = tf.function(lambda seeds: decoder(
            latent_sampler.sample_per_seed(tensors, seeds), training=False))
    return Autoencoder(encode, decode, run.config, run.image_shape, run.step, run.checkpoint_path,
                       log_var, fitted)


def load_from_saved_model(path: str) -> Autoencoder:
    """Load an export's `encode` and `decode` signatures and its wae_config.json."""
    path, record, loaded = saved_model.load_export(path)
    config = config_lib.from_dict(record)
    encode_sig, decode_sig = loaded.signatures["encode"], loaded.signatures["decode"]
    images_spec = encode_sig.structured_input_signature[1]["images"]  # [None, H, W, C]
    image_shape = tuple(int(d) for d in images_spec.shape[1:])
    base = os.path.basename(os.path.normpath(path))
    log_var = fitted = None
    if "z_log_var" in encode_sig.structured_outputs:
        log_var = lambda x: encode_sig(images=x)["z_log_var"]  # noqa: E731
    if "sample_fitted" in loaded.signatures:
        fitted_sig = loaded.signatures["sample_fitted"]
        fitted = lambda seeds: fitted_sig(seed=seeds)["images"]  # noqa: E731
    return Autoencoder(lambda x: encode_sig(images=x)["z"], lambda z: decode_sig(z=z)["images"],
                       config, image_shape, int(base) if base.isdigit() else -1, path, log_var,
                       fitted)


def _batched(fn: Callable, array: np.ndarray) -> np.ndarray:
    """fn over `array` [N, ...] in blocks of BATCH rows, concatenated back to numpy."""
    return np.concatenate([np.asarray(fn(tf.constant(array[i:i + BATCH])))
                           for i in range(0, len(array), BATCH)])


def prior_samples(config: Config, num: int, seed: int, tag: int) -> np.ndarray:
    """[num, z_dim] draws of the prior, determined by (seed, tag)."""
    return regularizers.sample_prior(config.prior, num, config.z_dim, config.prior_scale,
                                     tf.constant([seed, tag], tf.int64)).numpy()


def real_features(config: Config, test: data.ImageData, index: np.ndarray,
                  space: features_lib.FeatureSpace, seed: int,
                  cache_dir: Optional[str]) -> stats_cache.RealFeatures:
    """Features [n, D] and statistics of the test images `index`, from the cache if there."""
    images = test.images[index]  # uint8 [n, H, W, C]
    key = dict(dataset=config.dataset, data_dir=config.data_dir, split="test", name=test.name,
               image_shape=[int(d) for d in images.shape[1:]], num_test_images=len(index),
               seed=seed if len(index) < test.num_examples else None,
               images_sha256=stats_cache.images_digest(images), space=space.name,
               fingerprint=space.fingerprint, preprocessing=space.preprocessing)
    real = stats_cache.load_or_compute(
        cache_dir, key, lambda: space.embed(images.astype(np.float32) / 255.0))
    logging.info("Test features in the %s space: %s.", space.name, real.origin)
    return real


def run_model(model: Autoencoder, test_images: np.ndarray, num_samples: int, seed: int) -> dict:
    """Codes (posterior means), reconstructions and prior samples of one model, and the codes
    Q_Z is made of (numpy arrays): for a Gaussian encoder z = mean + sigma * eps, seeded."""
    codes = _batched(model.encode, test_images)  # [n, z_dim]
    recon = _batched(model.decode, codes)  # [n, H, W, C]
    z = prior_samples(model.config, num_samples, seed, _SAMPLES_TAG)  # [num_samples, z_dim]
    sampled = codes
    if model.encode_log_var is not None:
        limit = step_lib.LOG_VAR_LIMIT  # as training clips it
        log_var = np.clip(_batched(model.encode_log_var, test_images), -limit, limit)
        eps = np.random.default_rng([seed, _EPS_TAG]).standard_normal(codes.shape)
        sampled = (codes + np.exp(0.5 * log_var) * eps).astype(np.float32)
    outputs = dict(codes=codes, recon=recon, samples=_batched(model.decode, z), q_codes=sampled)
    if model.sample_fitted is not None:  # seeds of their own, one per image
        seeds = np.arange(num_samples, dtype=np.int64) + np.int64(seed) * 10 ** 9
        outputs["fitted_samples"] = _batched(model.sample_fitted, seeds)
    return outputs


def _reconstruction_metrics(config: Config, images, recon) -> dict:
    """The training loop's test metrics (metrics.ReconstructionMetrics), with their counts."""
    tracker = metrics.ReconstructionMetrics(config.recon, config.pixel_scale)
    for i in range(0, len(images), BATCH):
        tracker.update(tf.constant(images[i:i + BATCH]), tf.constant(recon[i:i + BATCH]))
    values = tracker.result()
    n = tracker.num_images
    return {"test_recon_cost": dict(value=values["test_recon_cost"], num_images=n,
                                    cost=config.recon),
            "test_mse_per_pixel": dict(value=values["test_mse_per_pixel"], num_images=n)}


def _feature_metrics(space: features_lib.FeatureSpace, real: stats_cache.RealFeatures, samples,
                     seed: int) -> dict:
    """FID, KID, precision and recall of samples vs the test images in `space`, keyed
    `<metric>_<space>`."""
    fake = space.embed(samples)  # [m, D]
    if fake.shape[1] != real.features.shape[1]:
        raise ConfigError(f"The {space.name} features of samples have {fake.shape[1]} dimensions, "
                          f"those of test images {real.features.shape[1]}.")
    counts = dict(num_samples=int(fake.shape[0]), num_test_images=int(real.features.shape[0]),
                  seed=seed, feature_dim=int(fake.shape[1]))
    fid = metrics.frechet_distance(real.mean, real.cov, *metrics.feature_statistics(fake))
    kid = metrics.kid(real.features, fake, KID_SUBSETS, KID_SUBSET_SIZE, seed)
    pr = metrics.precision_recall(real.features, fake, k=PRECISION_RECALL_K)
    name = space.name
    return {f"fid_{name}": dict(value=fid, **counts),
            f"kid_{name}": dict(kid, kernel="(x.y/d + 1)^3", **counts),
            f"precision_{name}": dict(value=pr["precision"], k=PRECISION_RECALL_K, **counts),
            f"recall_{name}": dict(value=pr["recall"], k=PRECISION_RECALL_K, **counts)}


def _classifier_accuracy(info: dict) -> dict:
    return {"classifier_test_accuracy": dict(
        value=info["test_accuracy"], num_images=info["num_test_images"], dataset=info["dataset"],
        epochs=info["epochs"], seed=info["seed"])}


def evaluation_warnings(space: features_lib.FeatureSpace, num_used: int, num_split: int) -> list:
    """One line per reason not to trust the feature metrics (also logged by compute_metrics)."""
    found = []
    if num_used < MIN_STABLE_TEST_IMAGES:
        why = (f"the test split has {num_split} images" if num_used == num_split else
               f"--num_samples uses {num_used} of the test split's {num_split} images")
        found.append(f"FID, KID, precision and recall on {num_used} test images are unstable "
                     f"({why}; under {MIN_STABLE_TEST_IMAGES:,}): compare them only at equal "
                     "counts, or hold out more test images.")
    accuracy = space.info.get("test_accuracy") if space.name == "classifier" else None
    if accuracy is not None and accuracy < MIN_CLASSIFIER_ACCURACY:
        found.append(f"The feature classifier's test accuracy is {accuracy:.1%} (under "
                     f"{MIN_CLASSIFIER_ACCURACY:.0%}): its features say little about the images; "
                     "train one longer (--classifier_epochs, a new --classifier_dir) or use "
                     "--fid_features=inception or a SavedModel.")
    return found


def _latent_and_sharpness_metrics(config: Config, outputs: dict, test_images, seed: int) -> dict:
    codes = outputs["q_codes"]  # samples of Q_Z: sampled codes for a Gaussian encoder
    prior = prior_samples(config, codes.shape[0], seed, _MMD_TAG)  # [n, z_dim]
    mmd = metrics.mmd_to_prior(codes, prior, MMD_SUBSET, config.kernel,
                               regularizers.prior_squared_distance(config.prior, config.z_dim,
                                                                   config.prior_scale))
    kind = ("sampled z = mean + sigma * eps" if codes is not outputs["codes"]
            else "deterministic codes")

    def sharp(images):  # on the networks' pixel range, as the paper's code (metrics.py)
        return dict(value=metrics.laplacian_sharpness(images, config.pixel_range),
                    num_images=int(images.shape[0]), pixel_range=config.pixel_range)
    return {"mmd_codes_prior": dict(mmd, num_codes=int(codes.shape[0]), kernel=config.kernel,
                                    seed=seed, codes=kind),
            "sharpness_samples": dict(sharp(outputs["samples"]), seed=seed),
            "sharpness_reconstructions": sharp(outputs["recon"]),
            "sharpness_test_images": sharp(test_images)}


def compute_metrics(model: Autoencoder, test: data.ImageData, space: features_lib.FeatureSpace,
                    num_samples: int, seed: int, stats_dir: Optional[str] = None) -> tuple:
    """(metrics dict, model outputs, test images, labels) on min(num_samples, N) test images;
    `stats_dir` caches the test images' features (None: not cached)."""
    index = data.subset_indices(test.num_examples, num_samples, seed)
    test_images = test.images[index].astype(np.float32) / 255.0  # [n, H, W, C]
    labels = test.labels[index]
    outputs = run_model(model, test_images, num_samples, seed)
    real = real_features(model.config, test, index, space, seed, stats_dir)
    results = dict(source=model.source, step=model.step, dataset=model.config.dataset,
                   regularizer=model.config.regularizer, num_samples=num_samples, seed=seed,
                   feature_space=space.describe(real.features.shape[1]))
    results.update(_reconstruction_metrics(model.config, test_images, outputs["recon"]))
    results.update(_feature_metrics(space, real, outputs["samples"], seed))
    if space.name == "classifier":
        results.update(_classifier_accuracy(space.info))
    if "fitted_samples" in outputs:  # the same metrics for the fitted latent sampler's images
        fitted = _feature_metrics(space, real, outputs["fitted_samples"], seed)
        results.update({f"{name}_fitted_sampler": dict(value, sampler="gaussian mixture")
                        for name, value in fitted.items()})
    results.update(_latent_and_sharpness_metrics(model.config, outputs, test_images, seed))
    results["warnings"] = evaluation_warnings(space, len(index), test.num_examples)
    for warning in results["warnings"]:
        logging.warning("%s", warning)
    return results, outputs, test_images, labels


def write_outputs(results: dict, images: dict, output_dir: str, step: int,
                  drawn: Optional[dict] = None) -> None:
    """metrics.json, a PNG per drawn figure ({name: matplotlib Figure}), and the metrics and
    image arrays ({name: [H, W, C]}) as TensorBoard scalars and images."""
    tf.io.gfile.makedirs(output_dir)
    for name, figure in (drawn or {}).items():
        plots.save_png(figure, os.path.join(output_dir, f"{name}.png"))
    with tf.io.gfile.GFile(os.path.join(output_dir, "metrics.json"), "w") as f:
        f.write(json.dumps(results, indent=2, sort_keys=True))
    writer = tf.summary.create_file_writer(output_dir)
    with writer.as_default():
        for name, value in results.items():
            if isinstance(value, dict) and "value" in value:
                tf.summary.scalar(f"eval/{name}", value["value"], step=step)
        for name, grid in images.items():
            tf.summary.image(f"eval/{name}", np.asarray(grid, np.float32)[None], step=step)
    writer.close()


def evaluate(model: Autoencoder, test: data.ImageData, space: features_lib.FeatureSpace,
             output_dir: str, num_samples: int = 10000, seed: int = 0,
             stats_dir: Optional[str] = None, training_logs: str = "") -> dict:
    """Compute every metric and figure of `model` and write them to `output_dir`; with
    `training_logs` (a workdir) its training curves too."""
    start = time.time()
    results, outputs, test_images, labels = compute_metrics(model, test, space, num_samples,
                                                            seed, stats_dir)
    images, drawn = figures.make_figures(model, outputs, test_images, labels, test.class_names)
    curves = plots.training_curves(training_logs) if training_logs else None
    if curves is not None:
        drawn["training_curves"] = curves
    results["figures"] = sorted(f"{name}.png" for name in drawn)
    results["projector"] = tensorboard_logs.write_projector(
        os.path.join(output_dir, tensorboard_logs.PROJECTOR_DIR), outputs["codes"], test_images,
        labels, data.subset_indices(test.num_examples, num_samples, seed), test.class_names,
        max(model.step, 0), test.name)
    results["eval_wall_time_s"] = time.time() - start
    write_outputs(results, images, output_dir, max(model.step, 0), drawn)
    name = space.name
    logging.info("Evaluated %s in %.0f s, in the %s feature space: FID %.3f, KID %.4f, "
                 "precision %.3f, recall %.3f (fid_%s, kid_%s, ... in metrics.json).",
                 model.source, results["eval_wall_time_s"], name, results[f"fid_{name}"]["value"],
                 results[f"kid_{name}"]["value"], results[f"precision_{name}"]["value"],
                 results[f"recall_{name}"]["value"], name, name)
    return results


def _classifier_for(config: Config, classifier_dir: str, classifier_data=None,
                    classifier_epochs: int = 2):
    """(the feature classifier of the data set, trained once and cached; its directory)."""
    name = config.dataset
    if config.dataset == "folder":  # one cache per folder, not one for every folder
        name += "_" + hashlib.sha256(os.path.abspath(config.data_dir).encode()).hexdigest()[:12]
    directory = classifier_dir or classifier_lib.default_dir(name, config.image_size)
    load_data = (lambda: classifier_data) if classifier_data is not None else (
        lambda: (data.materialize(data.load_split(config, "train"), CLASSIFIER_TRAIN_LIMIT),
                 data.load_split(config, "test")))
    return classifier_lib.load_or_train(directory, config.dataset, load_data,
                                        epochs=classifier_epochs, seed=0), directory


def feature_space(config: Config, image_shape, test: data.ImageData, fid_features: str,
                  inception_path: str = "", classifier_dir: str = "", classifier_data=None,
                  classifier_epochs: int = 2) -> features_lib.FeatureSpace:
    """The space --fid_features names (auto: the classifier if the test split has classes) for
    images of `image_shape` (H, W, C)."""
    name = features_lib.space_name(fid_features, len(np.unique(test.labels)) > 1)
    if name == "inception":
        return features_lib.inception_space(inception_path)
    if name == "custom":
        return features_lib.saved_model_space(fid_features)
    clf, directory = _classifier_for(config, classifier_dir, classifier_data, classifier_epochs)
    if tuple(clf.info["image_shape"]) != tuple(image_shape):
        raise ConfigError(f"The classifier in {directory} takes images "
                          f"{tuple(clf.info['image_shape'])}, the model makes "
                          f"{tuple(image_shape)}: pass another --classifier_dir.")
    return features_lib.classifier_space(clf, directory)


def evaluate_model(model: Autoencoder, output_dir: str, num_samples: int = 10000,
                   seed: int = 0, classifier_dir: str = "", test_data=None,
                   classifier_data=None, classifier_epochs: int = 2,
                   fid_features: Optional[str] = None, inception_path: Optional[str] = None,
                   stats_cache_dir: Optional[str] = None, training_logs: str = "") -> dict:
    """Evaluate a loaded model; `test_data` (ImageData) and `classifier_data` ((train, test)
    ImageData for the classifier) replace the data set's own splits, for tests. The feature
    settings left None are the model's config's (--fid_features, --inception_path,
    --stats_cache_dir); `training_logs`: the workdir whose training curves to draw."""
    overrides = dict(fid_features=fid_features, inception_path=inception_path,
                     stats_cache_dir=stats_cache_dir)
    config = model.config.replace(**{k: v for k, v in overrides.items() if v is not None})
    config.validate()
    test = test_data if test_data is not None else data.load_split(config, "test")
    space = feature_space(config, model.image_shape, test, config.fid_features,
                          config.inception_path, classifier_dir, classifier_data,
                          classifier_epochs)
    stats_dir = stats_cache.resolve(config.stats_cache_dir, fileio.cache_root())
    return evaluate(model, test, space, output_dir, num_samples, seed, stats_dir, training_logs)


def evaluate_workdir(workdir: str, output_dir: str = "", **kwargs) -> dict:
    """Evaluate the latest checkpoint of a training run, with its training curves, into
    <workdir>/eval (see evaluate_model)."""
    model = load_from_workdir(workdir)
    return evaluate_model(model, output_dir or os.path.join(workdir, "eval"),
                          training_logs=workdir, **kwargs)


def evaluate_saved_model(path: str, output_dir: str = "", **kwargs) -> dict:
    """Evaluate an exported SavedModel into <path>/eval (see evaluate_model)."""
    model = load_from_saved_model(path)
    return evaluate_model(model, output_dir or os.path.join(path, "eval"), **kwargs)
