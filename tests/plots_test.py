"""The figures a person reads: each writes a PNG of its figure's size that decodes; the scatter's
legend names exactly the classes present and its axes say what they are; grids carry their
captions; the training curves plot each scalar of a run's events files against steps."""

import os
import types

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf import visualize
from wae_tf.evaluation import figures, plots

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")


def _saved(figure, path) -> np.ndarray:
    """The PNG save_png writes of `figure`, decoded: [H, W, C] in [0, 1]."""
    plots.save_png(figure, str(path))
    image = visualize.read_png(str(path))
    assert image.shape[:2] == plots.size_px(figure)
    return image


def _legend(figure) -> list:
    legend = figure.axes[0].get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def test_scatter_legend_names_only_the_classes_present(tmp_path):
    """A 3-class subset of a 10-class data set: three named entries, in label order, each in
    the colour its label has in every plot (tab10's)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([9, 0, 5], 40)
    points = rng.normal(size=(120, 2)) + labels[:, None]
    figure = plots.latent_scatter(points, labels, FASHION, "Codes of 120 test images",
                                  ("principal component 1", "principal component 2"))
    assert _legend(figure) == ["T-shirt/top", "Sandal", "Ankle boot"]
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("principal component 1",
                                                      "principal component 2")
    assert axes.get_title() == "Codes of 120 test images"
    handles = axes.get_legend().legend_handles
    from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
    np.testing.assert_allclose(handles[1].get_color(), colormaps["tab10"](5))
    image = _saved(figure, tmp_path / "scatter.png")
    assert image.shape[0] == 640 and image.shape[1] > 640  # the legend beside the square plot


def test_scatter_names_unnamed_labels_by_number_and_a_single_class_has_no_legend(tmp_path):
    points = np.random.default_rng(1).normal(size=(30, 2))
    numbered = plots.latent_scatter(points, np.array([2, 7, 2] * 10))
    assert _legend(numbered) == ["2", "7"]
    single = plots.latent_scatter(points, np.zeros(30, np.int64), title="CelebA codes")
    assert _legend(single) == []
    assert _saved(single, tmp_path / "single.png").shape == (640, 640, 3)


def test_pca_axes_say_which_components_and_their_share_of_the_variance():
    # Four codes at +-10 e_0 and +-3 e_3: variances 50 and 4.5 of 54.5, 92% and 8%.
    spread = np.zeros((4, 5))
    spread[[0, 1], 0], spread[[2, 3], 3] = [10, -10], [3, -3]
    assert figures.pca_2d(spread)[1] == ("principal component 1 of z (92% of the variance)",
                                         "principal component 2 of z (8% of the variance)")
    assert figures.pca_2d(spread[:, :2])[1] == ("z[0]", "z[1]")  # z_dim 2: the codes


def test_image_grid_draws_every_image_with_its_captions(tmp_path):
    """2 rows of 3 cells, each a gray level of its own: every level is in the PNG, 20-pixel
    images zoomed 3x (to at least 48 pixels)."""
    levels = np.arange(6, dtype=np.float32).reshape(2, 3) / 10 + 0.2
    rows = np.broadcast_to(levels[:, :, None, None, None], (2, 3, 20, 20, 1))
    figure = plots.image_grid_figure(rows, ["first", "second"], ["a", "b", "c"], "A title")
    texts = {text.get_text() for text in figure.texts}
    assert {"first", "second", "a", "b", "c", "A title"} <= texts
    image = _saved(figure, tmp_path / "grid.png")
    for level in levels.ravel():  # each cell: 60x60 pixels of its level
        assert np.sum(np.all(np.abs(image[..., :3] - level) < 1 / 255, axis=-1)) >= 60 * 60


def test_reconstruction_and_interpolation_captions():
    images = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype(np.float32)
    recon = figures.reconstructions_figure(images, images, "Reconstructions", columns=8)
    captions = [t.get_text() for t in recon.texts if t.get_text() != "Reconstructions"]
    assert captions == ["test images", "reconstructions"] * 2
    rows = np.zeros((2, 5, 28, 28, 1), np.float32)  # 2 pairs, 3 steps
    interpolations = figures.interpolations_figure(rows, np.array([4, 8, 1, 1]), FASHION, "t")
    texts = [t.get_text() for t in interpolations.texts]
    assert texts[1:] == ["image a", "t=0", "t=0.5", "t=1", "image b", "Coat → Bag",
                         "Trouser → Trouser"]
    unnamed = figures.interpolations_figure(rows, np.array([4, 8, 1, 1]))
    assert [t.get_text() for t in unnamed.texts][-2:] == ["pair 1", "pair 2"]


def test_samples_figure_fills_the_last_row_with_white(tmp_path):
    samples = np.zeros((10, 28, 28, 1), np.float32)  # 2 rows of 8: 6 cells left white
    image = _saved(figures.samples_figure(samples, ""), tmp_path / "samples.png")
    black = np.all(image[..., :3] < 1 / 255, axis=-1)
    assert np.sum(black) == 10 * 56 * 56


def test_panels_put_each_image_under_its_title(tmp_path):
    images = [np.full((30, 40, 1), 0.5, np.float32), np.zeros((20, 50, 3), np.float32)]
    figure = plots.panels_figure(images, ["WAE-MMD", "VAE"], "Samples")
    assert [a.get_title() for a in figure.axes] == ["WAE-MMD", "VAE"]
    image = _saved(figure, tmp_path / "panels.png")
    assert np.sum(np.all(np.abs(image[..., :3] - 0.5) < 1 / 255, axis=-1)) >= 30 * 40
    assert np.sum(np.all(image[..., :3] == 0, axis=-1)) >= 20 * 50


def _write_events(logdir, scalars: dict, first_step: int = 0) -> None:
    """{tag: values} as TF2 scalars at steps first_step, first_step + 1, ...; one image too."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for tag, values in scalars.items():
            for i, value in enumerate(values):
                tf.summary.scalar(tag, value, step=first_step + i)
        tf.summary.image("samples", np.zeros((1, 4, 4, 1), np.float32), step=0)
    writer.close()


def test_training_curves_plot_each_scalar_against_steps(tmp_path):
    """A subplot per quantity, in the loop's order, the test cost beside the train cost, a
    one-point test metric under the title, images ignored; a resumed run's recomputed steps
    keep the later values."""
    logdir = str(tmp_path / "run" / "train")
    _write_events(logdir, {"train/loss": [3.0, 2.0, 1.5, 9.0], "train/recon": [2.0, 1.0, 0.8, 0.7],
                           "train/penalty": [0.5, 0.4, 0.3, 0.2],
                           "train/learning_rate": [1e-3] * 4, "custom/thing": [1.0, 2.0]})
    _write_events(logdir, {"train/loss": [1.2, 1.1], "test/test_recon_cost": [0.9],
                           "test/test_mse_per_pixel": [0.02]}, first_step=3)  # resumed at 3
    scalars = plots.read_scalars(logdir)
    np.testing.assert_allclose(scalars["train/loss"][1], [3.0, 2.0, 1.5, 1.2, 1.1])
    np.testing.assert_array_equal(scalars["train/loss"][0], [0, 1, 2, 3, 4])
    assert "samples" not in scalars
    figure = plots.training_curves(str(tmp_path / "run"))
    titles = [a.get_title() for a in figure.axes]
    assert titles == ["loss", "reconstruction cost", "latent penalty", "learning rate",
                      "custom/thing"]
    assert all(a.get_xlabel() == "step" and a.get_ylabel() for a in figure.axes)
    recon = figure.axes[1]
    assert [line.get_label() for line in recon.get_lines()] == ["train", "test"]
    np.testing.assert_allclose(recon.get_lines()[1].get_xydata(), [[3, 0.9]])
    np.testing.assert_allclose(figure.axes[0].get_lines()[0].get_ydata(), scalars["train/loss"][1])
    assert figure.get_suptitle() == ("Training of run: steps 0 to 4\n"
                                     "test MSE per pixel 0.02 at step 3")
    _saved(figure, tmp_path / "curves.png")


def test_training_curves_of_a_run_without_logs_is_none(tmp_path):
    assert plots.training_curves(str(tmp_path)) is None


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3)])
def test_evaluation_figures_of_gray_and_rgb_images(shape, tmp_path):
    """make_figures: the arrays TensorBoard gets and a drawn figure for each, whose scatter
    names the classes of the evaluated images (three folders' names); the images shown are
    spread over a split ordered by class, interpolating between its halves."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(30, *shape)).astype(np.float32)
    model = types.SimpleNamespace(config=tiny_config(z_dim=4), step=7,
                                  decode=lambda z: np.zeros((len(z), *shape), np.float32))
    outputs = dict(codes=rng.normal(size=(30, 4)).astype(np.float32), recon=images,
                   samples=images, fitted_samples=images)
    labels = np.repeat([0, 1, 2], 10)
    grids, drawn = figures.make_figures(model, outputs, images, labels, ("cats", "dogs", "owls"))
    names = ["interpolations", "latent_scatter", "reconstructions", "samples", "samples_fitted"]
    assert sorted(grids) == sorted(drawn) == names
    assert grids["interpolations"].shape == (8 * shape[0], 12 * shape[1], shape[2])
    assert _legend(drawn["latent_scatter"]) == ["cats", "dogs", "owls"]
    assert grids["latent_scatter"].shape == plots.size_px(drawn["latent_scatter"]) + (3,)
    # 16 of the 30 images, 0, 2, ..., 14 then 15, 17, ..., 29: the first 8 the pairs' a.
    assert [t.get_text() for t in drawn["interpolations"].texts][-8:] == (
        ["cats → dogs"] * 3 + ["cats → owls"] * 2 + ["dogs → owls"] * 3)
    assert grids["reconstructions"].shape[0] == 4 * shape[0]  # 32 asked, 30 shown: 4 rows
    for name, figure in drawn.items():
        _saved(figure, os.path.join(tmp_path, f"{name}.png"))
