"""The evaluation's figures, what each shows and its captions: tiled as [H, W, C] arrays for
TensorBoard's image summaries, and drawn with axes, legends and captions for the PNG files a
person reads (wae_tf.evaluation.plots).
"""

from typing import Sequence

import numpy as np
import tensorflow as tf

from wae_tf import visualize
from wae_tf.evaluation import plots

NUM_SHOWN = 32
INTERPOLATION_PAIRS = 8
INTERPOLATION_STEPS = 10


def spread(num_images: int, num: int) -> np.ndarray:
    """Indices [min(num, N)] spread evenly over N images: the ones a figure shows, so a split
    ordered by class (a folder's) shows every class, not the first one's images only."""
    return np.unique(np.linspace(0, num_images - 1, min(num, num_images)).round().astype(int))


def interpolation_rows(decode, codes, images, pairs: int = INTERPOLATION_PAIRS,
                       steps: int = INTERPOLATION_STEPS) -> np.ndarray:
    """Rows of [x_a, G(z_a), ..., G(z_b), x_b]: linear paths in Z between test images a = 2i and
    b = 2i + 1 (codes [n, z_dim], images [n, H, W, C]); [pairs, steps + 2, H, W, C]."""
    pairs = min(pairs, codes.shape[0] // 2)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]  # [1, steps, 1]
    z_a, z_b = codes[0:2 * pairs:2, None], codes[1:2 * pairs:2, None]  # [pairs, 1, z_dim]
    path = ((1.0 - t) * z_a + t * z_b).reshape(pairs * steps, -1)  # [pairs*steps, z_dim]
    decoded = np.asarray(decode(tf.constant(path))).reshape(pairs, steps, *images.shape[1:])
    return np.concatenate([images[0:2 * pairs:2, None], decoded, images[1:2 * pairs:2, None]],
                          axis=1)


def pca_2d(codes) -> tuple:
    """Codes [n, z_dim] -> (points [n, 2], their axes' names): the codes themselves for
    z_dim <= 2 (a zero second axis for 1), else the first two principal components (SVD of the
    centred codes), each named with the share of the codes' variance it holds."""
    codes = np.asarray(codes, np.float64)
    if codes.shape[1] <= 2:
        names = ("z[0]", "z[1]" if codes.shape[1] == 2 else "(z_dim = 1: none)")
        return np.pad(codes, ((0, 0), (0, 2 - codes.shape[1]))), names
    centred = codes - codes.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)  # vt [z_dim, z_dim]
    share = singular ** 2 / max(float(np.sum(singular ** 2)), 1e-30)
    names = tuple(f"principal component {i + 1} of z ({share[i]:.0%} of the variance)"
                  for i in range(2))
    return centred @ vt[:2].T, names


def project_2d(codes) -> np.ndarray:
    """The points [n, 2] of pca_2d."""
    return pca_2d(codes)[0]


def reconstructions_figure(originals, reconstructions, title: str, columns: int = 8):
    """Rows of `columns` test images [n, H, W, C], each over its reconstructions' row."""
    columns = max(1, min(columns, len(originals)))
    n = len(originals) // columns * columns
    pairs = np.stack([np.asarray(originals)[:n], np.asarray(reconstructions)[:n]])
    rows = pairs.reshape(2, n // columns, columns, *pairs.shape[2:]).swapaxes(0, 1)
    captions = ["test images", "reconstructions"] * (n // columns)
    return plots.image_grid_figure(rows.reshape(-1, *rows.shape[2:]), captions, title=title,
                                   group=2)


def samples_figure(samples, title: str, columns: int = 8):
    """Images [n, H, W, C] in rows of `columns` (the last row filled only as far as they go)."""
    samples = np.asarray(samples)
    rows = -(-len(samples) // columns)
    padded = np.ones((rows * columns, *samples.shape[1:]), np.float32)
    padded[:len(samples)] = samples
    return plots.image_grid_figure(padded.reshape(rows, columns, *samples.shape[1:]),
                                   title=title)


def interpolations_figure(rows, labels=(), class_names: Sequence[str] = (), title: str = ""):
    """interpolation_rows [pairs, steps + 2, H, W, C], columns titled by t, each row captioned
    with its endpoints' classes (from `labels` [2*pairs] of the test images) where known."""
    steps = rows.shape[1] - 2
    t = np.linspace(0.0, 1.0, steps)
    columns = ["image a"] + [f"t={v:.2g}" for v in t] + ["image b"]
    captions = []
    for i in range(rows.shape[0]):
        if len(labels) >= 2 * i + 2 and class_names:
            a, b = (class_names[int(labels[j])] if int(labels[j]) < len(class_names)
                    else str(int(labels[j])) for j in (2 * i, 2 * i + 1))
            captions.append(f"{a} → {b}")
        else:
            captions.append(f"pair {i + 1}")
    return plots.image_grid_figure(rows, captions, columns, title=title)


def prior_name(config) -> str:
    """The prior P_Z of a config as a caption: "N(0, I)", "uniform on the sphere of radius 2"."""
    s = config.prior_scale
    if config.prior == "normal":
        return "N(0, I)" if s == 1 else f"N(0, {s:g}²·I)"
    if config.prior == "sphere":
        return f"uniform on the sphere of radius {s:g}"
    return f"U[-{s:g}, {s:g}]^{config.z_dim}" if config.prior == "uniform" else config.prior


def make_figures(model, outputs: dict, test_images, labels,
                 class_names: Sequence[str] = ()) -> tuple:
    """The evaluation's figures: ({name: [H, W, C] array in [0, 1]} for TensorBoard, {name:
    matplotlib Figure} for the PNG files): test images (spread over the evaluated ones) over
    their reconstructions, prior samples, interpolations, the scatter of all codes (TensorBoard
    gets its drawn figure), and samples of the fitted latent sampler where there is one."""
    config, n = model.config, len(test_images)
    at = f"step {model.step}" if model.step >= 0 else "export"
    shown = spread(n, NUM_SHOWN)
    ends = spread(n, 2 * INTERPOLATION_PAIRS)
    pairs = len(ends) // 2  # a from the first half of the spread, b from the second
    ends = np.stack([ends[:pairs], ends[pairs:2 * pairs]], axis=1).ravel()  # [a0, b0, a1, ...]
    rows = interpolation_rows(model.decode, outputs["codes"][ends], test_images[ends])
    points, axis_names = pca_2d(outputs["codes"])
    drawn = {
        "reconstructions": reconstructions_figure(
            test_images[shown], outputs["recon"][shown],
            f"Test images and their reconstructions G(E(x)), {at}"),
        "samples": samples_figure(outputs["samples"][:64],
                                  f"Decoded prior samples, z ~ {prior_name(config)}, {at}"),
        "interpolations": interpolations_figure(
            rows, np.asarray(labels)[ends], class_names,
            f"Decoded (1 - t)·z_a + t·z_b between the codes of test images a and b, {at}"),
        "latent_scatter": plots.latent_scatter(
            points, labels, class_names,
            f"Codes E(x) of {n} test images (z_dim = {config.z_dim}, {config.regularizer}), "
            f"{at}", axis_names),
    }
    grids = {
        "reconstructions": visualize.side_by_side(test_images[shown], outputs["recon"][shown]),
        "samples": visualize.image_grid(outputs["samples"][:64]),
        "interpolations": visualize.image_grid(rows.reshape(-1, *test_images.shape[1:]),
                                               columns=rows.shape[1]),
        "latent_scatter": plots.to_array(drawn["latent_scatter"]),
    }
    if "fitted_samples" in outputs:
        grids["samples_fitted"] = visualize.image_grid(outputs["fitted_samples"][:64])
        drawn["samples_fitted"] = samples_figure(
            outputs["fitted_samples"][:64],
            f"Samples of the fitted latent sampler (a Gaussian mixture), {at}")
    return grids, drawn
