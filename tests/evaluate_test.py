"""wae_tf.evaluate on a tiny trained model, from its workdir and from its export; the feature
spaces through the evaluation (keys naming the space, a constant SavedModel extractor gives FID 0,
the stand-in Inception graph, the test features' cache reused); warnings; stdout is the JSON alone;
figures."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (
                            FASHION_DIR,
                            REPO,
                            inception_stand_in,
                            make_idx_dir,
                            make_images,
                            run_concurrently,
                            tiny_config,
)
from wae_tf import errors
from wae_tf.evaluation import classifier, evaluator, features, figures

METRIC_FIELDS = ("test_recon_cost", "test_mse_per_pixel", "fid_classifier", "kid_classifier",
                 "precision_classifier", "recall_classifier", "classifier_test_accuracy",
                 "mmd_codes_prior", "sharpness_samples", "sharpness_reconstructions",
                 "sharpness_test_images")
# Drawn with axes and captions (tests/plots_test.py); the training curves from the workdir's logs.
FIGURES = ("interpolations.png", "latent_scatter.png", "reconstructions.png", "samples.png",
           "samples_fitted.png", "training_curves.png")


def _evaluate_workdir(tiny_run, **kwargs):
    return evaluator.evaluate_workdir(tiny_run["workdir"], num_samples=20, seed=3,
                                     classifier_dir=tiny_run["classifier_dir"],
                                     test_data=tiny_run["test"], **kwargs)


@pytest.mark.slow
def test_metrics_json_has_every_field_with_its_counts(tiny_run):
    results = _evaluate_workdir(tiny_run)
    eval_dir = os.path.join(tiny_run["workdir"], "eval")
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    for name in METRIC_FIELDS:
        assert np.isfinite(saved[name]["value"]), name
    # 20 of the 24 test images (a seeded subset) and 20 prior samples, in the classifier's space
    # (auto: the synthetic images have labels).
    fid = saved["fid_classifier"]
    assert (fid["num_samples"], fid["num_test_images"], fid["feature_dim"]) == (20, 20, 128)
    assert saved["feature_space"]["name"] == "classifier"
    assert saved["feature_space"]["dim"] == 128
    assert saved["feature_space"]["source"] == tiny_run["classifier_dir"]
    assert "penultimate layer" in saved["feature_space"]["preprocessing"]
    assert not any(name == "fid" or name.startswith("fid_inception") for name in saved)
    kid = saved["kid_classifier"]
    assert (kid["subsets"], kid["subset_size"], kid["num_test_images"]) == (100, 20, 20)
    assert kid["std"] >= 0
    assert saved["test_recon_cost"]["num_images"] == 20
    precision = saved["precision_classifier"]
    assert precision["k"] == 3 and 0 <= precision["value"] <= 1
    assert saved["mmd_codes_prior"]["num_codes"] == 20
    assert saved["mmd_codes_prior"]["codes"] == "deterministic codes"
    for name in ("fid", "kid", "precision", "recall"):  # the fitted sampler's, beside the prior's
        fitted = saved[f"{name}_classifier_fitted_sampler"]
        assert np.isfinite(fitted["value"]) and fitted["num_samples"] == 20, name
    assert any("on 20 test images are unstable" in w for w in saved["warnings"])
    assert (saved["seed"], saved["num_samples"], saved["step"]) == (3, 20, 2)
    assert saved["figures"] == list(FIGURES)
    for name in FIGURES:
        assert os.path.getsize(os.path.join(eval_dir, name)) > 0, name
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(eval_dir))


def test_the_mmd_of_a_gaussian_encoder_uses_sampled_codes():
    """Q_Z of a Gaussian encoder is the aggregate posterior: codes mean + sigma * eps, not the
    means (a VAE's means alone sit far inside the prior)."""
    config = tiny_config(encoder="gaussian", regularizer="kl", z_dim=4)
    model = evaluator.Autoencoder(
        encode=lambda x: np.zeros([x.shape[0], 4], np.float32),
        decode=lambda z: np.full([z.shape[0], 28, 28, 1], 0.5, np.float32), config=config,
        image_shape=(28, 28, 1), step=1, source="test",
        encode_log_var=lambda x: np.zeros([x.shape[0], 4], np.float32))  # sigma 1: Q_Z = P_Z
    images = np.zeros([600, 28, 28, 1], np.float32)
    outputs = evaluator.run_model(model, images, num_samples=10, seed=0)
    assert np.all(outputs["codes"] == 0)
    assert outputs["q_codes"].std() == pytest.approx(1.0, rel=0.05)
    sampled = evaluator._latent_and_sharpness_metrics(config, outputs, images[:10], seed=0)
    means = evaluator._latent_and_sharpness_metrics(
        config, dict(outputs, q_codes=outputs["codes"]), images[:10], seed=0)
    assert sampled["mmd_codes_prior"]["codes"].startswith("sampled")
    assert abs(sampled["mmd_codes_prior"]["value"]) < 0.1 * means["mmd_codes_prior"]["value"]


def test_sharpness_is_measured_on_the_runs_pixel_range():
    """--pixel_range=symmetric runs report the paper code's [-1, 1] sharpness, 4x the [0, 1]
    value of the same images, and say which range in metrics.json."""
    images = np.random.default_rng(1).uniform(size=(6, 28, 28, 1)).astype(np.float32)
    outputs = dict(codes=np.zeros([6, 4], np.float32), q_codes=np.zeros([6, 4], np.float32),
                   samples=images, recon=images[::-1])
    found = {}
    for pixel_range in ("unit", "symmetric"):
        config = tiny_config(z_dim=4, pixel_range=pixel_range)
        found[pixel_range] = evaluator._latent_and_sharpness_metrics(config, outputs, images, 0)
    for name in ("sharpness_samples", "sharpness_reconstructions", "sharpness_test_images"):
        unit, symmetric = found["unit"][name], found["symmetric"][name]
        assert (unit["pixel_range"], symmetric["pixel_range"]) == ("unit", "symmetric")
        assert symmetric["value"] == pytest.approx(4 * unit["value"], rel=1e-9), name


@pytest.mark.slow
@pytest.mark.numerics
def test_saved_model_gives_the_checkpoints_numbers(tiny_run, tmp_path):
    from_checkpoint = _evaluate_workdir(tiny_run, output_dir=str(tmp_path / "a"))
    from_export = evaluator.evaluate_saved_model(
        tiny_run["export"], output_dir=str(tmp_path / "b"), num_samples=20, seed=3,
        classifier_dir=tiny_run["classifier_dir"], test_data=tiny_run["test"])
    for name in ("test_recon_cost", "fid_classifier", "kid_classifier", "mmd_codes_prior",
                 "sharpness_samples"):
        assert from_export[name]["value"] == pytest.approx(from_checkpoint[name]["value"],
                                                           rel=1e-4, abs=1e-6), name


@pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason=f"Fashion-MNIST IDX files not in {FASHION_DIR}")
@pytest.mark.slow
def test_entry_point_evaluates_an_export_on_the_real_test_split(tiny_run, tmp_path):
    # The export's version directory is found from its base; the test split is the real one.
    args = [sys.executable, "-m", "wae_tf.evaluate", f"--saved_model={tiny_run['export']}/..",
            f"--output_dir={tmp_path}", "--num_samples=30", "--seed=1",
            f"--classifier_dir={tiny_run['classifier_dir']}"]
    # The entry point without --saved_model or --workdir refuses to start, and without the
    # Inception graph says so in one line: run beside it.
    missing = str(tmp_path / "missing" / features.INCEPTION_PB)
    no_graph = args[:4] + [f"--output_dir={tmp_path / 'no_graph'}", "--fid_features=inception",
                           f"--inception_path={missing}"]
    results = run_concurrently({"evaluate": args, "neither": args[:3], "no_graph": no_graph},
                               cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    result, neither = results["evaluate"], results["neither"]
    errors_printed = [line for line in results["no_graph"].stderr.splitlines()
                      if line.startswith("error:")]
    assert results["no_graph"].returncode == 2 and len(errors_printed) == 1
    assert f"--inception_path={missing} does not exist" in errors_printed[0]
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.load(open(tmp_path / "metrics.json"))
    assert json.loads(result.stdout) == saved  # stdout is the JSON alone
    assert saved["test_recon_cost"]["num_images"] == 30 and saved["step"] == 2
    assert neither.returncode == 2
    assert "exactly one of --workdir and --saved_model" in neither.stderr


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_other_samples(tiny_run, tmp_path):
    first = _evaluate_workdir(tiny_run, output_dir=str(tmp_path / "a"))
    again = _evaluate_workdir(tiny_run, output_dir=str(tmp_path / "b"))
    assert first["fid_classifier"]["value"] == again["fid_classifier"]["value"]
    other = evaluator.evaluate_workdir(tiny_run["workdir"], output_dir=str(tmp_path / "c"),
                                      num_samples=20, seed=4, test_data=tiny_run["test"],
                                      classifier_dir=tiny_run["classifier_dir"])
    assert other["sharpness_samples"]["value"] != first["sharpness_samples"]["value"]


@pytest.mark.slow
def test_classifier_is_cached_and_reports_its_accuracy(tiny_run):
    clf = classifier.load_or_train(tiny_run["classifier_dir"], "synthetic",
                                   lambda: pytest.fail("the cached classifier was retrained"))
    assert 0 <= clf.info["test_accuracy"] <= 1 and clf.info["num_test_images"] == 24
    assert clf.embed(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, classifier.FEATURE_DIM)


def test_celeba_without_a_classifier_is_a_clear_error(tmp_path):
    with pytest.raises(errors.ConfigError, match="celeb_a"):
        classifier.load_or_train(str(tmp_path), "celeb_a", lambda: pytest.fail("loaded data"))


def _constant_model(config=None) -> evaluator.Autoencoder:
    """Codes 0, every decoded image 0.5 (so every sample is the same image)."""
    return evaluator.Autoencoder(
        encode=lambda x: np.zeros([x.shape[0], 4], np.float32),
        decode=lambda z: np.full([z.shape[0], 28, 28, 1], 0.5, np.float32),
        config=config or tiny_config(), image_shape=(28, 28, 1), step=1, source="test")


class ConstantFeatures(tf.Module):
    """images [N, H, W, C] -> features [N, 6], all ones."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    def __call__(self, images):
        return {"features": tf.ones([tf.shape(images)[0], 6])}


def test_a_constant_saved_model_extractor_gives_fid_and_kid_zero(tmp_path):
    path = str(tmp_path / "extractor")
    module = ConstantFeatures()
    tf.saved_model.save(module, path, signatures=module.__call__)
    model, test = _constant_model(), make_images(30)
    space = evaluator.feature_space(model.config, model.image_shape, test, path)
    results, *_ = evaluator.compute_metrics(model, test, space, num_samples=12, seed=0)
    assert results["fid_custom"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert results["kid_custom"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert results["precision_custom"]["value"] == results["recall_custom"]["value"] == 1.0
    assert results["feature_space"] == dict(
        name="custom", dim=6, source=path, preprocessing=space.preprocessing)
    assert "classifier_test_accuracy" not in results and "fid" not in results


def test_inception_through_the_evaluation_names_its_space(tmp_path, monkeypatch):
    graph_def, _, _ = inception_stand_in(dim=16)
    pb = tmp_path / features.INCEPTION_PB
    pb.write_bytes(graph_def.SerializeToString())
    monkeypatch.setattr(features, "INCEPTION_MD5", hashlib.md5(pb.read_bytes()).hexdigest())
    model, test = _constant_model(), make_images(8)
    space = evaluator.feature_space(model.config, model.image_shape, test, "inception", str(pb))
    results, *_ = evaluator.compute_metrics(model, test, space, num_samples=8, seed=0)
    assert results["feature_space"]["name"] == "inception"
    assert results["feature_space"]["dim"] == results["fid_inception"]["feature_dim"] == 16
    assert "TTUR: bilinear resize to 299x299" in results["feature_space"]["preprocessing"]
    assert results["fid_inception"]["value"] > 0 and "kid_inception" in results


def test_the_test_features_are_cached_and_reused(tmp_path):
    """A second evaluation of the same test images embeds only the samples."""
    rows = []

    def embed(images):  # [b, H, W, C] -> [b, 2]: mean and spread of each image
        rows.append(len(images))
        return np.stack([images.mean(axis=(1, 2, 3)), images.std(axis=(1, 2, 3))], axis=1)

    space = features.FeatureSpace("custom", "mean and std", "test", "counting", embed, batch=7)
    model, test = _constant_model(), make_images(30)
    first, *_ = evaluator.compute_metrics(model, test, space, 40, 0, str(tmp_path))
    assert sum(rows) == 30 + 40  # the 30 test images, then the 40 samples
    rows.clear()
    again, *_ = evaluator.compute_metrics(model, test, space, 40, 0, str(tmp_path))
    assert sum(rows) == 40  # the samples only
    assert again["fid_custom"] == first["fid_custom"]
    rows.clear()
    evaluator.compute_metrics(model, make_images(30, seed=5), space, 40, 0, str(tmp_path))
    assert sum(rows) == 30 + 40  # other test images: computed again


def test_warnings_say_the_test_count_and_the_classifier_accuracy():
    weak = features.FeatureSpace("classifier", "", "", "", None, info={"test_accuracy": 0.62})
    found = evaluator.evaluation_warnings(weak, num_used=34, num_split=34)
    assert len(found) == 2
    assert "on 34 test images are unstable (the test split has 34 images; under 2,000)" in found[0]
    assert "test accuracy is 62.0% (under 80%)" in found[1]
    assert "--num_samples uses 500 of the test split's 10000" in evaluator.evaluation_warnings(
        weak, 500, 10000)[0]
    strong = features.FeatureSpace("classifier", "", "", "", None, info={"test_accuracy": 0.9})
    assert evaluator.evaluation_warnings(strong, 2000, 10000) == []


@pytest.mark.slow
def test_an_own_data_set_warns_and_stdout_is_the_json_alone(tmp_path):
    """The issue's own-folder case: a classifier trained in the evaluation (Keras prints its
    progress to stdout unless told not to) on a tiny test split; the warnings go to the log and
    metrics.json, stdout holds the JSON alone."""
    from wae_tf import loop  # pylint: disable=import-outside-toplevel
    data_dir = tmp_path / "idx"
    data_dir.mkdir()
    make_idx_dir(str(data_dir), num_train=40, num_test=16)
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(tiny_config(dataset="mnist", data_dir=str(data_dir)), workdir)
    result = subprocess.run(
        [sys.executable, "-m", "wae_tf.evaluate", f"--workdir={workdir}", "--num_samples=16",
         f"--classifier_dir={tmp_path / 'classifier'}", "--classifier_epochs=1",
         f"--stats_cache_dir={tmp_path / 'stats'}"], capture_output=True, text=True, cwd=REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed["feature_space"]["name"] == "classifier"
    assert any("on 16 test images are unstable" in w for w in printed["warnings"])
    assert "on 16 test images are unstable" in result.stderr
    assert "Feature classifier: epoch 1 of 1" in result.stderr


def test_pca_projection_keeps_the_largest_variance_direction():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(500, 5)) * np.array([10.0, 0.1, 0.1, 3.0, 0.1])
    projected = figures.project_2d(codes)
    assert projected.shape == (500, 2)
    assert abs(np.corrcoef(projected[:, 0], codes[:, 0])[0, 1]) > 0.99
