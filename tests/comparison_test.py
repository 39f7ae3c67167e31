"""The paper's comparisons (wae_tf.tools.comparison, python -m wae_tf.compare): each suite's
flagfiles, the flags passed through to every run, when an evaluation is reused, the table with
the paper's values beside, and the CelebA suite end to end on a tiny CelebA-shaped folder."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from wae_tf.errors import ConfigError
from wae_tf.evaluation import classifier
from wae_tf.tools import comparison


@pytest.mark.parametrize("suite, run", [(s, r) for s, spec in comparison.SUITES.items()
                                        for r in spec.runs], ids=lambda v: getattr(v, "name", v))
def test_every_suite_run_parses_into_a_valid_config(suite, run):
    config = comparison.parse_flagfile(comparison.flagfile_path(run.name, suite))
    assert config.validate() is config and (config.train_steps or config.epochs)
    assert run.name in {r.name for r in comparison.SUITES[suite].runs}


@pytest.mark.parametrize("run", comparison.SUITES["fashion_mnist"].runs, ids=lambda r: r.name)
def test_fashion_mnist_runs_share_everything_but_the_penalty(run):
    """The network, data, budget and optimiser are shared; the VAE baseline also has its own
    likelihood (Bernoulli) and no input noise (its encoder is stochastic)."""
    base = comparison.parse_flagfile(comparison.flagfile_path("wae_mmd"))
    config = comparison.parse_flagfile(comparison.flagfile_path(run.name))
    shared = ("dataset", "width_divisor", "z_dim", "batch_size", "train_steps", "seed",
              "learning_rate", "prior", "init_std", "encoder_pretrain_steps")
    assert [getattr(config, f) for f in shared] == [getattr(base, f) for f in shared]
    assert config.recon == ("bernoulli" if run.name == "vae" else "l2sq")


def test_the_celeba_suite_is_the_papers_table_1():
    """VAE, WAE-MMD, WAE-GAN on the same 64x64 crops, networks, batch and pixel range; the
    paper's FIDs (Inception) and sharpness ([-1, 1] pixels) beside them."""
    suite = comparison.SUITES["celeba"]
    configs = [comparison.parse_flagfile(comparison.flagfile_path(r.name, "celeba"))
               for r in suite.runs]
    shared = [(c.dataset, c.celeba_crop, c.image_size, c.z_dim, c.batch_size, c.pixel_range,
               c.width_divisor) for c in configs]
    assert shared == [("celeb_a", 140, 0, 64, 100, "symmetric", 1)] * 3
    assert [(c.regularizer, c.epochs) for c in configs] == [("kl", 68), ("mmd", 55), ("gan", 55)]
    assert [(r.label, r.paper) for r in suite.runs] == [
        ("VAE", {"fid": 63, "sharpness_samples": 3e-3}),
        ("WAE-MMD", {"fid": 55, "sharpness_samples": 6e-3}),
        ("WAE-GAN", {"fid": 42, "sharpness_samples": 6e-3})]
    assert suite.true_data == {"fid": 2, "sharpness_samples": 2e-2}
    with pytest.raises(ConfigError, match="celeba_vae"):
        comparison.flagfile_path("vae", "celeba")
    with pytest.raises(ConfigError, match="fashion_mnist, celeba"):
        comparison.get_suite("cifar")


def test_other_flags_pass_to_every_runs_training_and_evaluation():
    config_args, eval_kwargs = comparison.split_overrides(
        ["--data_dir=/data/celeba", "--train_steps=20", "--width_divisor=16", "--nodeterministic",
         "--classifier_epochs=5"])
    assert config_args == ["--data_dir=/data/celeba", "--train_steps=20", "--width_divisor=16",
                           "--nodeterministic"]
    assert eval_kwargs == {"classifier_epochs": 5}  # typed as evaluate_model's default
    config = comparison.parse_flagfile(comparison.flagfile_path("celeba_wae_gan", "celeba"),
                                       config_args)
    assert (config.data_dir, config.train_steps, config.width_divisor, config.deterministic,
            config.regularizer, config.lambda_reg) == ("/data/celeba", 20, 16, False, "gan", 1.0)
    with pytest.raises(ConfigError, match="--train_seed is neither"):
        comparison.split_overrides(["--train_seed=0"])
    with pytest.raises(ConfigError, match="Unexpected argument"):
        comparison.split_overrides(["extra"])
    with pytest.raises(ConfigError, match="width_divisor"):
        comparison.parse_flagfile(comparison.flagfile_path("wae_mmd"), ["--width_divisor=x"])


def _old_metrics(fid=0.5, pixel_range="unit", step=5):
    """A metrics.json of the evaluator before feature spaces had names (the classifier's)."""
    value = {"value": 0.5}
    metrics = {name: dict(value) for name in (
        "test_recon_cost", "test_mse_per_pixel", "precision", "recall", "mmd_codes_prior",
        "sharpness_reconstructions", "sharpness_test_images", "classifier_test_accuracy")}
    metrics.update(fid=dict(value=fid, num_samples=10, num_test_images=10, feature_dim=128),
                   sharpness_samples=dict(value=4e-3, pixel_range=pixel_range),
                   fid_fitted_sampler={"value": 0.25}, precision_fitted_sampler={"value": 0.7},
                   recall_fitted_sampler={"value": 0.7}, seed=0, step=step, num_samples=10)
    metrics["precision"]["k"] = 3
    metrics["test_recon_cost"]["num_images"] = 10
    return metrics


def _named_metrics(space="inception", fid=50.0):
    """A metrics.json whose keys name their feature space."""
    metrics = {k: v for k, v in _old_metrics(pixel_range="symmetric").items()
               if not k.startswith(("fid", "precision", "recall", "classifier"))}
    metrics.update({f"fid_{space}": dict(value=fid, num_samples=10, num_test_images=10),
                    f"kid_{space}": {"value": 0.01}, f"precision_{space}": {"value": 0.6, "k": 3},
                    f"recall_{space}": {"value": 0.4},
                    f"fid_{space}_fitted_sampler": {"value": 45.0},
                    "feature_space": {"name": space, "dim": 2048, "preprocessing": "bilinear"}})
    metrics["sharpness_test_images"] = {"value": 2.5e-2, "pixel_range": "symmetric"}
    return metrics


def _rows(text):
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_fashion_mnist_table_has_a_row_per_run_in_the_classifiers_space():
    metrics = _old_metrics()
    other = _old_metrics(fid=0.7)
    text = comparison.describe({
        "vae": [(metrics, {"train_wall_time_s": 60})],
        "wae_mmd": [(metrics, {}), (other, {})]})
    rows = _rows(text)
    assert rows[0].startswith("| model | FID (classifier features) | precision | recall |")
    assert "KID" not in rows[0] and "paper" not in rows[0]  # no KID here, no paper's values
    assert "sharpness samples ([0, 1])" in rows[0]
    assert len(rows) == 4 and rows[1].startswith("| VAE | 0.50 |") and rows[1].endswith("| 1 |")
    # Two seeds: FID 0.5 and 0.7 -> mean 0.60, sample std 0.14.
    assert rows[2].startswith("| WAE-MMD | 0.60 ± 0.14 |") and rows[2].endswith("| 2 |")
    assert rows[3].startswith("| WAE-MMD + fitted sampler | 0.25 ± 0.00 | 0.700 ± 0.000 |")
    assert "classifier features (128-d; the classifier's test accuracy 0.5000)" in text
    assert "FID, precision (k=3) and recall: 10 samples vs 10 test images" in text


def test_celeba_table_puts_the_papers_values_beside_the_measured_ones():
    results = {"celeba_vae": [(_named_metrics(fid=70.0), {})],
               "celeba_wae_mmd": [(_named_metrics(fid=60.0), {})],
               "celeba_wae_gan": [(_named_metrics(fid=45.0), {})]}
    text = comparison.describe(results, "celeba")
    header, vae, mmd, fitted, gan, data = _rows(text)
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:4] == ["model", "FID (Inception)", "paper FID (Inception)", "KID (Inception)"]
    assert "sharpness samples ([-1, 1])" in cells and "paper sharpness samples ([-1, 1])" in cells
    assert vae.startswith("| VAE | 70.00 | 63 | 0.0100 | 0.600 | 0.400 |")
    assert mmd.startswith("| WAE-MMD | 60.00 | 55 |") and gan.startswith("| WAE-GAN | 45.00 | 42 |")
    assert "| 4.00e-03 | 3e-03 |" in vae and "| 4.00e-03 | 6e-03 |" in gan
    # The fitted sampler has its own FID, no KID or sharpness of its own and no paper's value.
    assert fitted.startswith("| WAE-MMD + fitted sampler | 45.00 | — | — |")
    assert data.startswith("| test images | — | 2 |") and "| 2.50e-02 | 2e-02 |" in data
    assert "(2048-d)" in text and "Table 1" in text and "do not compare" not in text
    assert "FID, KID, precision (k=3) and recall" in text
    classifier_space = comparison.describe(
        {"celeba_vae": [(_named_metrics("classifier"), {})]}, "celeba")
    assert "| FID (classifier features) | paper FID (Inception) |" in classifier_space
    assert "do not compare with the paper's" in classifier_space
    with pytest.raises(ConfigError, match="different feature spaces"):
        comparison.describe({"celeba_vae": [(_named_metrics(), {})],
                             "celeba_wae_mmd": [(_old_metrics(), {})]}, "celeba")


def test_an_evaluation_is_reused_only_while_it_answers_the_comparison():
    unit = comparison.parse_flagfile(comparison.flagfile_path("wae_mmd"))
    symmetric = comparison.parse_flagfile(comparison.flagfile_path("celeba_wae_mmd", "celeba"))
    named = _named_metrics()
    assert comparison.is_current(named, symmetric, 10, 0, 5)
    assert not comparison.is_current(named, symmetric, 10, 0, 6)  # trained further since
    assert not comparison.is_current(named, symmetric, 20, 0, 5)
    assert comparison.is_current(named, symmetric, 10, 0, 5, fid_features="inception")
    assert not comparison.is_current(named, symmetric, 10, 0, 5, fid_features="/my/extractor")
    # From before the keys named their space, or before sharpness was on the run's pixels.
    assert not comparison.is_current(_old_metrics(), unit, 10, 0, 5)
    unit_range = dict(named, sharpness_samples={"value": 1.0})
    assert not comparison.is_current(unit_range, symmetric, 10, 0, 5)


def test_comparison_figures_put_the_runs_side_by_side(tmp_path, monkeypatch):
    """Each run's samples (and WAE-MMD's fitted sampler's) in the suite's order, each under its
    model's name; the interpolations of the suite's two runs."""
    from wae_tf import visualize  # pylint: disable=import-outside-toplevel
    from wae_tf.evaluation import plots  # pylint: disable=import-outside-toplevel
    names = ["vae_lambda01", "wae_mmd"]
    for i, name in enumerate(names):
        eval_dir = tmp_path / f"{name}-seed0" / "eval"
        eval_dir.mkdir(parents=True)
        for figure in ("samples.png", "interpolations.png", "samples_fitted.png"):
            visualize.save_png(str(eval_dir / figure), np.full((20, 10, 1), i / 2, np.float32))
    drawn, panels_figure = {}, plots.panels_figure

    def spy(images, titles, title):  # {the figure's first word: (images, titles, figure)}
        drawn[title.split()[0]] = (images, titles, panels_figure(images, titles, title))
        return drawn[title.split()[0]][2]
    monkeypatch.setattr(plots, "panels_figure", spy)
    comparison.write_figures(str(tmp_path), names, 0)
    images, titles, figure = drawn["Samples"]
    assert titles == ["VAE (λ=0.1)", "WAE-MMD", "WAE-MMD + fitted sampler"]
    assert [float(image[0, 0, 0]) for image in images] == [0, pytest.approx(0.5, abs=1 / 255),
                                                           pytest.approx(0.5, abs=1 / 255)]
    assert drawn["Interpolations"][1] == ["VAE (λ=0.1)", "WAE-MMD"]
    for name in ("compare_samples.png", "compare_interpolations.png"):
        assert visualize.read_png(str(tmp_path / name)).shape[2] == 3, name
    assert visualize.read_png(str(tmp_path / "compare_samples.png")).shape[:2] == \
        plots.size_px(figure)


def _celeba_folder(root, partitions):
    """img_align_celeba/<n>.jpg (218x178 RGB, blocks of colour) and list_eval_partition.txt
    (0 train, 1 validation, 2 test), as CelebA's official files."""
    os.makedirs(os.path.join(root, "img_align_celeba"))
    lines = []
    for i, partition in enumerate(partitions):
        rng = np.random.default_rng(i)
        coarse = rng.integers(0, 256, size=(22, 18, 3), dtype=np.uint8)
        image = np.repeat(np.repeat(coarse, 10, axis=0), 10, axis=1)[:218, :178]
        name = f"{i + 1:06d}.jpg"
        tf.io.write_file(os.path.join(root, "img_align_celeba", name),
                         tf.io.encode_jpeg(image, quality=90))
        lines.append(f"{name} {partition}")
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _feature_extractor(directory, image_shape):
    """An untrained CNN in the classifier cache's layout: celeb_a has no labels to train one."""
    model = classifier.make_classifier(image_shape, 2)
    info = dict(dataset="celeb_a", test_accuracy=0.5, num_test_images=0, num_train_images=0,
                epochs=0, seed=0, image_shape=list(image_shape),
                feature_dim=classifier.FEATURE_DIM, features="untrained, for the test")
    classifier.save(model, info, directory)


@pytest.mark.slow
def test_the_celeba_suite_runs_end_to_end_on_a_tiny_budget(tmp_path):
    """wae-compare --suite=celeba on 24 train, 4 validation and 12 test 178x218 JPEGs: three
    rows beside the paper's values, FID in the named space, sharpness on [-1, 1] pixels."""
    data_dir, root = str(tmp_path / "celeba"), str(tmp_path / "runs")
    _celeba_folder(data_dir, [0] * 24 + [1] * 4 + [2] * 12)
    _feature_extractor(str(tmp_path / "features"), (64, 64, 3))
    args = [sys.executable, "-m", "wae_tf.compare", "--suite=celeba", f"--data_dir={data_dir}",
            "--train_steps=3", "--width_divisor=32", "--train_seeds=0", "--num_samples=20",
            f"--workdir_root={root}", f"--classifier_dir={tmp_path / 'features'}",
            "--fid_features=classifier", "--batch_size=8", "--encoder_pretrain_steps=2",
            "--sampler_components=2", "--noexport", "--strategy=default"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(root, "compare.md")) as f:
        text = f.read()
    assert text in result.stdout
    rows = _rows(text)
    assert "| FID (classifier features) | paper FID (Inception) |" in rows[0]
    assert "| sharpness samples ([-1, 1]) | paper sharpness samples ([-1, 1]) |" in rows[0]
    labels = [row.split("|")[1].strip() for row in rows[1:]]
    assert labels == ["VAE", "WAE-MMD", "WAE-MMD + fitted sampler", "WAE-GAN", "test images"]
    assert "| 63 |" in rows[1] and "| 55 |" in rows[2] and "| 42 |" in rows[4]
    assert "| 3e-03 |" in rows[1] and "| 2e-02 |" in rows[5]
    for name in ("celeba_vae", "celeba_wae_mmd", "celeba_wae_gan"):
        assert os.path.exists(os.path.join(root, f"{name}-seed0", "eval", "metrics.json"))
    # Run again: trained and evaluated already, so the same table from the files.
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and text in again.stdout
