"""The evaluation's figures as [H, W, C] float arrays in [0, 1]: grids, interpolations, scatter.

Pure numpy rasterisation (no matplotlib): the images go to PNG files and TensorBoard alike.
"""

import numpy as np
import tensorflow as tf

from wae_tf import visualize

# Colours of labels 0..9 (matplotlib's "tab10" palette), RGB in [0, 1]; label l uses l mod 10.
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                    [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
                    [188, 189, 34], [23, 190, 207]], np.float32) / 255.0
NUM_SHOWN = 32
INTERPOLATION_PAIRS = 8
INTERPOLATION_STEPS = 10


def interpolation_grid(decode, codes, images, pairs: int = INTERPOLATION_PAIRS,
                       steps: int = INTERPOLATION_STEPS) -> np.ndarray:
    """Rows of [x_a, G(z_a), ..., G(z_b), x_b]: linear paths in Z between test images a = 2i and
    b = 2i + 1 (codes [n, z_dim], images [n, H, W, C]); [pairs*H, (steps+2)*W, C]."""
    pairs = min(pairs, codes.shape[0] // 2)
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]  # [1, steps, 1]
    z_a, z_b = codes[0:2 * pairs:2, None], codes[1:2 * pairs:2, None]  # [pairs, 1, z_dim]
    path = ((1.0 - t) * z_a + t * z_b).reshape(pairs * steps, -1)  # [pairs*steps, z_dim]
    decoded = np.asarray(decode(tf.constant(path))).reshape(pairs, steps, *images.shape[1:])
    rows = np.concatenate([images[0:2 * pairs:2, None], decoded, images[1:2 * pairs:2, None]],
                          axis=1)  # [pairs, steps + 2, H, W, C]
    return visualize.image_grid(rows.reshape(-1, *images.shape[1:]), columns=steps + 2)


def project_2d(codes) -> np.ndarray:
    """Codes [n, z_dim] -> [n, 2]: themselves for z_dim = 2 (padded for 1), else the first two
    principal components (SVD of the centred codes)."""
    codes = np.asarray(codes, np.float64)
    if codes.shape[1] <= 2:
        return np.pad(codes, ((0, 0), (0, 2 - codes.shape[1])))
    centred = codes - codes.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt [z_dim, z_dim]
    return centred @ vt[:2].T


def scatter_image(points, labels, size: int = 400, margin: int = 12, dot: int = 1) -> np.ndarray:
    """Rasterise points [n, 2] as (2*dot+1)-pixel squares coloured by label on white.

    Axes are scaled to the 0.5..99.5 percentiles (outliers clip to the border); a strip of the
    label colours 0..9 in order runs along the bottom as a legend. Returns [size, size, 3].
    """
    canvas = np.ones((size, size, 3), np.float32)
    low, high = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
    span = np.maximum(high - low, 1e-12)
    inner = size - 2 * margin - 10  # leave room for the legend strip
    xy = np.clip((points - low) / span, 0.0, 1.0) * (inner - 1)
    cols = margin + np.round(xy[:, 0]).astype(int)
    rows = margin + inner - 1 - np.round(xy[:, 1]).astype(int)  # y grows upwards
    colours = PALETTE[np.asarray(labels) % len(PALETTE)]
    for dr in range(-dot, dot + 1):
        for dc in range(-dot, dot + 1):
            canvas[np.clip(rows + dr, 0, size - 1), np.clip(cols + dc, 0, size - 1)] = colours
    width = (size - 2 * margin) // len(PALETTE)
    for i, colour in enumerate(PALETTE):
        left = margin + i * width
        canvas[size - margin - 6:size - margin, left:left + width - 2] = colour
    return canvas


def make_figures(model, outputs: dict, test_images, labels) -> dict:
    """name -> figure: test images beside reconstructions, samples, interpolations (with the
    images' channels), and the RGB scatter of codes; samples of the fitted latent sampler too
    where there is one."""
    found = {
        "reconstructions": visualize.side_by_side(test_images[:NUM_SHOWN],
                                                  outputs["recon"][:NUM_SHOWN]),
        "samples": visualize.image_grid(outputs["samples"][:64]),
        "interpolations": interpolation_grid(model.decode, outputs["codes"], test_images),
        "latent_scatter": scatter_image(project_2d(outputs["codes"]), labels),
    }
    if "fitted_samples" in outputs:
        found["samples_fitted"] = visualize.image_grid(outputs["fitted_samples"][:64])
    return found
