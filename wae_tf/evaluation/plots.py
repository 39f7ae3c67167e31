"""Figures a person reads, drawn with matplotlib off-screen: the latent scatter with its axes and
class legend, captioned image grids, side-by-side panels, and a run's training curves read from
its TensorBoard events.

Each function returns a `matplotlib.figure.Figure` on an Agg canvas (no pyplot, no display, no
global state) sized in pixels at DPI, so a test can inspect it before `save_png` writes it through
tf.io.gfile. matplotlib is imported inside the functions: importing wae_tf stays light.
"""

import math
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

DPI = 100
FONT = 9  # points
# (tag, the subplot's title, its y label): the scalars the training loop writes to <workdir>/train
# (loop._log_scalars and the test metrics at the end), in the order they are drawn. Tags sharing
# a title share a subplot (the test reconstruction cost beside the training one). Other scalar
# tags found get a subplot of their own after these.
CURVES = (
    ("train/loss", "loss", "recon + λ · penalty"),
    ("train/recon", "reconstruction cost", "cost per image"),
    ("test/test_recon_cost", "reconstruction cost", "cost per image"),
    ("train/penalty", "latent penalty", "penalty"),
    ("train/disc_loss", "discriminator loss", "loss"),
    ("train/learning_rate", "learning rate", "learning rate"),
    ("train/images_per_second", "throughput", "images / s"),
    ("test/test_mse_per_pixel", "test MSE per pixel", "MSE per [0, 1] pixel"),
)
CURVES_COLUMNS = 3


def _figure(width_px: float, height_px: float):
    """An empty Figure of width_px x height_px pixels at DPI, on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(round(width_px) / DPI, round(height_px) / DPI), dpi=DPI,
                    facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def size_px(figure) -> Tuple[int, int]:
    """(height, width) in pixels of the PNG that save_png writes of `figure`."""
    width, height = figure.get_size_inches() * DPI
    return int(round(height)), int(round(width))


def _pixels(figure) -> np.ndarray:
    """`figure` drawn: uint8 RGB [H, W, 3] of size_px(figure) (on white)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3]


def save_png(figure, path: str) -> None:
    """Write `figure` as an RGB PNG of size_px(figure) pixels (through tf.io.gfile)."""
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(_pixels(figure)).numpy())


def to_array(figure) -> np.ndarray:
    """`figure` drawn as float32 RGB [H, W, 3] in [0, 1] (size_px): for TensorBoard."""
    return _pixels(figure).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- the latent scatter


def _class_colours(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """RGBA [n, 4] of each label: tab10 for up to 10 classes, tab20 for 20, else evenly spaced
    hues; a label keeps its colour whichever classes a plot holds."""
    from matplotlib import colormaps
    if num_classes <= 10:
        return colormaps["tab10"](labels % 10)
    if num_classes <= 20:
        return colormaps["tab20"](labels % 20)
    return colormaps["hsv"](labels / num_classes * 0.9)


def latent_scatter(codes2d, labels, class_names: Sequence[str] = (), title: str = "",
                   axis_labels: Tuple[str, str] = ("z[0]", "z[1]"), side_px: int = 640):
    """The 2-D codes [n, 2] as points coloured by label [n], with a legend of the classes present.

    A label l is named class_names[l] (its number where the names are unknown); the legend lists
    the labels found in `labels` only, in label order; a single class gets no legend. The axes
    span the 0.1..99.9 percentiles (plus a margin), so a few outliers do not squash the rest.
    """
    points = np.asarray(codes2d, np.float64)
    labels = np.asarray(labels, np.int64)
    present = np.unique(labels)  # sorted
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in present]
    num_classes = max(len(class_names), int(present.max()) + 1 if len(present) else 1)
    columns = 1 + len(present) // 25  # a legend of many classes in several columns
    legend_px = 0 if len(present) < 2 else 20 + columns * (30 + _text_px(names))
    figure = _figure(side_px + legend_px, side_px)
    axes = figure.add_axes([70 / (side_px + legend_px), 55 / side_px,
                            (side_px - 90) / (side_px + legend_px), (side_px - 95) / side_px])
    order = np.random.default_rng(0).permutation(len(points))  # no class drawn over all others
    colours = _class_colours(labels, num_classes)
    dot = float(np.clip(3000 / max(len(points), 1), 4, 20))  # points^2: smaller when many
    axes.scatter(points[order, 0], points[order, 1], c=colours[order], s=dot, alpha=0.7,
                 linewidths=0, rasterized=True)
    if len(points):
        low, high = np.percentile(points, [0.1, 99.9], axis=0)
        pad = np.maximum(high - low, 1e-6) * 0.05
        axes.set_xlim(low[0] - pad[0], high[0] + pad[0])
        axes.set_ylim(low[1] - pad[1], high[1] + pad[1])
    axes.set_xlabel(axis_labels[0], fontsize=FONT + 1)
    axes.set_ylabel(axis_labels[1], fontsize=FONT + 1)
    axes.set_title(title, fontsize=FONT + 1)
    axes.tick_params(labelsize=FONT)
    axes.grid(True, linewidth=0.4, alpha=0.5)
    if len(present) >= 2:
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], linestyle="", marker="o", markersize=6,
                          color=_class_colours(np.array([label]), num_classes)[0])
                   for label in present]
        axes.legend(handles, names, title="class", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                    borderaxespad=0.0, fontsize=FONT, title_fontsize=FONT, ncol=columns,
                    frameon=False)
    return figure


# ----------------------------------------------------------------------------- image grids


def _as_rgb_or_gray(image: np.ndarray) -> np.ndarray:
    """[H, W, 1] -> [H, W] (drawn gray), [H, W, 3] as it is; clipped to [0, 1]."""
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    return image[..., 0] if image.shape[-1] == 1 else image


def _text_px(texts: Sequence[str], fontsize: float = FONT) -> float:
    """A generous width in pixels of the longest of `texts` at `fontsize` points."""
    return max((len(t) for t in texts), default=0) * fontsize * DPI / 72 * 0.6


def _tile(rows: np.ndarray, zoom: int, gap: int, group: int, group_gap: int) -> np.ndarray:
    """Rows [R, C, H, W, ch] zoomed (nearest) on white, `gap` pixels apart, a wider
    `group_gap` after every `group` rows: [height, width, ch]."""
    num_rows, num_columns, h, w, channels = rows.shape
    cell_h, cell_w = h * zoom, w * zoom
    height = num_rows * (cell_h + gap) - gap + (math.ceil(num_rows / group) - 1) * group_gap
    canvas = np.ones((height, num_columns * (cell_w + gap) - gap, channels), np.float32)
    zoomed = np.repeat(np.repeat(np.clip(rows, 0.0, 1.0), zoom, axis=2), zoom, axis=3)
    for r in range(num_rows):
        y = r * (cell_h + gap) + (r // group) * group_gap
        for c in range(num_columns):
            x = c * (cell_w + gap)
            canvas[y:y + cell_h, x:x + cell_w] = zoomed[r, c]
    return canvas


def image_grid_figure(rows, row_captions: Sequence[str] = (), column_titles: Sequence[str] = (),
                      title: str = "", group: int = 1, min_cell_px: int = 48):
    """Rows of images [R, C, H, W, ch] in [0, 1], each row captioned on its left, the columns
    titled above the first row, the whole titled on top; every `group` rows followed by a wider
    gap (e.g. group=2 for originals over reconstructions). Images are drawn at an integer zoom
    that makes them at least min_cell_px wide, pixel for pixel."""
    rows = np.asarray(rows, np.float32)
    num_rows, num_columns, h, w = rows.shape[:4]
    zoom = max(1, math.ceil(min_cell_px / max(h, w)))
    gap, group_gap = 4, (14 if group > 1 else 0)
    tiled = _tile(rows, zoom, gap, group, group_gap)
    left = 10 + (_text_px(row_captions) + 8 if row_captions else 0)
    top = 8 + (22 * (title.count("\n") + 1) if title else 0) + (18 if column_titles else 0)
    width, height = left + tiled.shape[1] + 10, top + tiled.shape[0] + 8
    title_px = _text_px(title.split("\n"), FONT + 1) + 20
    if title_px > width:  # a title wider than the grid: centre the grid under it
        left, width = left + (title_px - width) / 2, title_px
    figure = _figure(width, height)
    axes = figure.add_axes([left / width, 1 - (top + tiled.shape[0]) / height,
                            tiled.shape[1] / width, tiled.shape[0] / height])
    axes.imshow(_as_rgb_or_gray(tiled), cmap="gray", vmin=0.0, vmax=1.0,
                interpolation="nearest", aspect="auto")
    axes.set_axis_off()
    if title:
        figure.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=FONT + 1)
    cell_h, cell_w = h * zoom, w * zoom
    for c, text in enumerate(column_titles[:num_columns]):
        x = left + c * (cell_w + gap) + cell_w / 2
        figure.text(x / width, 1 - (top - 4) / height, text, ha="center", va="bottom",
                    fontsize=FONT)
    for r, text in enumerate(row_captions[:num_rows]):
        y = top + r * (cell_h + gap) + (r // group) * group_gap + cell_h / 2
        figure.text((left - 8) / width, 1 - y / height, text, ha="right", va="center",
                    fontsize=FONT)
    return figure


def panels_figure(images: Sequence[np.ndarray], titles: Sequence[str], title: str = "",
                  columns: int = 3, gap: int = 16):
    """Images [H_i, W_i, C] in [0, 1] (e.g. each run's figure read from its PNG) at their own
    pixel size, each under its title, `columns` to a row: the comparison's figures."""
    cell_w = max(image.shape[1] for image in images)
    cell_h = max(image.shape[0] for image in images) + 24  # + the panel's title
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    top = 8 + (26 if title else 0)
    width = columns * (cell_w + gap) + gap
    height = top + rows * (cell_h + gap)
    figure = _figure(width, height)
    if title:
        figure.text(0.5, 1 - 8 / height, title, ha="center", va="top", fontsize=FONT + 2)
    for i, (image, name) in enumerate(zip(images, titles)):
        h, w = image.shape[:2]
        x = gap + (i % columns) * (cell_w + gap) + (cell_w - w) // 2
        y = top + (i // columns) * (cell_h + gap) + 24
        axes = figure.add_axes([x / width, 1 - (y + h) / height, w / width, h / height])
        axes.imshow(_as_rgb_or_gray(image), cmap="gray", vmin=0.0, vmax=1.0,
                    interpolation="nearest", aspect="auto")
        axes.set_axis_off()
        axes.set_title(name, fontsize=FONT + 2, fontweight="bold", pad=4)
    return figure


# ----------------------------------------------------------------------------- training curves


def _scalar(value) -> Optional[float]:
    """The number of a summary value written as a scalar (TF1 simple_value or a TF2 rank-0
    numeric tensor), else None (images, text, hparams)."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and not value.tensor.tensor_shape.dim:
        array = tf.make_ndarray(value.tensor)
        if array.dtype.kind in "fiu":
            return float(array)
    return None


def read_scalars(logdir: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps [n], values [n])} of every scalar in the events files of `logdir` (not its
    sub-directories), sorted by step; a step written twice (a run resumed from an earlier
    checkpoint recomputes steps) keeps the value written last. TensorBoard's reader: no
    deprecation warning, and a record cut short by a killed run ends its file quietly."""
    from tensorboard.backend.event_processing import event_file_loader
    found: Dict[str, Dict[int, Tuple[float, float]]] = {}  # tag -> step -> (wall time, value)
    for path in tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for record in event_file_loader.RawEventFileLoader(path).Load():
            event = tf.compat.v1.Event.FromString(record)
            for value in event.summary.value:
                number = _scalar(value)
                if number is None:
                    continue
                steps = found.setdefault(value.tag, {})
                if event.wall_time >= steps.get(int(event.step), (-math.inf,))[0]:
                    steps[int(event.step)] = (event.wall_time, number)
    return {tag: (np.array(sorted(by_step)), np.array([by_step[s][1] for s in sorted(by_step)]))
            for tag, by_step in found.items()}


def _curve_panels(curves: dict) -> Tuple[list, list]:
    """([(title, y label, [tags])] of the tags present: CURVES' order, then the others; the
    one-point tags without a curve to join (final test metrics): [tag]), to be written out."""
    panels: Dict[str, tuple] = {}
    known = {tag: (title, ylabel) for tag, title, ylabel in CURVES}
    ordered = [t for t, _, _ in CURVES if t in curves] + sorted(t for t in curves
                                                                 if t not in known)
    for tag in ordered:
        title, ylabel = known.get(tag, (tag, "value"))
        panels.setdefault(title, (title, ylabel, []))[2].append(tag)
    alone = [tags[0] for _, _, tags in panels.values()
             if len(tags) == 1 and len(curves[tags[0]][0]) == 1]
    return [p for p in panels.values() if p[2][0] not in alone], alone


def training_curves(workdir: str, title: str = ""):
    """Every scalar of the run's training logs (<workdir>/train, or `workdir` itself if it holds
    the events) against steps, a subplot per quantity (a final test value beside its training
    curve, or under the title where it has none); None when there are none. The title defaults
    to the run directory's name and the steps logged."""
    logdir = os.path.join(workdir, "train")
    if not tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")):
        logdir = workdir
    curves = read_scalars(logdir)
    if not curves:
        return None
    panels, alone = _curve_panels(curves)
    first, last = min(c[0][0] for c in curves.values()), max(c[0][-1] for c in curves.values())
    name = os.path.basename(os.path.normpath(workdir))
    lines = [title or f"Training of {name}: steps {first} to {last}"]
    if alone:
        titles = {tag: panel for tag, panel, _ in CURVES}
        lines.append(", ".join(f"{titles.get(tag, tag)} {curves[tag][1][0]:.4g} at step "
                               f"{curves[tag][0][0]}" for tag in alone))
    columns = max(1, min(CURVES_COLUMNS, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = _figure(360 * columns, 270 * rows + 22 * len(lines))
    figure.set_layout_engine("constrained")
    figure.suptitle("\n".join(lines), fontsize=FONT + 1)
    for i, (panel, ylabel, tags) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, i + 1)
        for tag in tags:
            steps, values = curves[tag]
            if len(steps) == 1:  # a final value: a dot with its number
                axes.plot(steps, values, "o", markersize=6, label=tag.split("/")[0])
                axes.annotate(f"{values[0]:.4g}", (steps[0], values[0]), fontsize=FONT - 1,
                              xytext=(-6, 6), textcoords="offset points", ha="right")
            else:
                axes.plot(steps, values, linewidth=1.2, label=tag.split("/")[0])
        if len(tags) > 1:
            axes.legend(fontsize=FONT, frameon=False)
        axes.set_title(panel, fontsize=FONT + 1)
        axes.set_xlabel("step", fontsize=FONT)
        axes.set_ylabel(ylabel, fontsize=FONT)
        axes.tick_params(labelsize=FONT - 1)
        axes.ticklabel_format(axis="y", useOffset=False)
        axes.grid(True, linewidth=0.4, alpha=0.5)
    return figure
