"""wae_tf.evaluate on a tiny trained model, from its workdir and from its export; figures."""

import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import FASHION_DIR, REPO, run_concurrently, tiny_config
from wae_tf import errors
from wae_tf.evaluation import classifier, evaluator, figures

METRIC_FIELDS = ("test_recon_cost", "test_mse_per_pixel", "fid", "precision", "recall",
                 "classifier_test_accuracy", "mmd_codes_prior", "sharpness_samples",
                 "sharpness_reconstructions", "sharpness_test_images")
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
    # 20 of the 24 test images (a seeded subset) and 20 prior samples.
    assert (saved["fid"]["num_samples"], saved["fid"]["num_test_images"]) == (20, 20)
    assert saved["test_recon_cost"]["num_images"] == 20
    assert saved["precision"]["k"] == 3 and 0 <= saved["precision"]["value"] <= 1
    assert saved["mmd_codes_prior"]["num_codes"] == 20
    assert saved["mmd_codes_prior"]["codes"] == "deterministic codes"
    for name in ("fid", "precision", "recall"):  # the fitted latent sampler's, beside the prior's
        fitted = saved[f"{name}_fitted_sampler"]
        assert np.isfinite(fitted["value"]) and fitted["num_samples"] == 20, name
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
    for name in ("test_recon_cost", "fid", "mmd_codes_prior", "sharpness_samples"):
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
    # The entry point without --saved_model or --workdir refuses to start: run beside it.
    results = run_concurrently({"evaluate": args, "neither": args[:3]}, cwd=REPO,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    result, neither = results["evaluate"], results["neither"]
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["test_recon_cost"]["num_images"] == 30 and saved["step"] == 2
    assert neither.returncode == 2
    assert "exactly one of --workdir and --saved_model" in neither.stderr


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_other_samples(tiny_run, tmp_path):
    first = _evaluate_workdir(tiny_run, output_dir=str(tmp_path / "a"))
    again = _evaluate_workdir(tiny_run, output_dir=str(tmp_path / "b"))
    assert first["fid"]["value"] == again["fid"]["value"]
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


def test_pca_projection_keeps_the_largest_variance_direction():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(500, 5)) * np.array([10.0, 0.1, 0.1, 3.0, 0.1])
    projected = figures.project_2d(codes)
    assert projected.shape == (500, 2)
    assert abs(np.corrcoef(projected[:, 0], codes[:, 0])[0, 1]) > 0.99
