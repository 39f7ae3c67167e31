"""What TensorBoard shows of a run beyond scalars and images: its hyper-parameters and final
metrics in the HParams tab, and the test set's codes in the embedding projector.

HParams: each run's directory is a session (hp.hparams, written by the chief when training
starts), whose metrics are the scalars training writes to <workdir>/train (`test/...`) and
evaluation to <workdir>/eval (`eval/...`). TensorBoard looks the metrics up in the session's
sub-directories by name, so the HParams tab compares runs when its --logdir is a parent of the run
directories (e.g. runs/compare), not a run directory itself.

Projector: `evaluate` writes the codes of the test images it evaluated (at most MAX_PROJECTED) as
a checkpoint variable, with metadata.tsv (test index, label, class name) and a sprite of the
images, in <eval dir>/projector, a run of its own.
"""

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hp

from wae_tf import config as config_lib
from wae_tf import fileio, visualize

# The Config fields a user varies between runs: the HParams tab's columns.
HPARAM_FIELDS = ("dataset", "image_size", "width_divisor", "encoder", "z_dim", "prior",
                 "prior_scale", "regularizer", "lambda_reg", "kernel", "recon", "pixel_range",
                 "learning_rate", "batch_size", "train_steps", "epochs", "seed",
                 "sampler_components")
# The feature spaces the evaluation's metric keys name (wae_tf.evaluation.features):
# fid_<space>, kid_<space>, precision_<space>, recall_<space>, and *_fitted_sampler.
FEATURE_SPACES = ("inception", "classifier", "custom")


def _feature_metrics(suffix: str = "", label: str = "") -> tuple:
    return tuple(("eval", f"eval/{metric}_{space}{suffix}", f"{title} {space}{label}")
                 for metric, title in (("fid", "FID"), ("kid", "KID"), ("precision", "precision"),
                                       ("recall", "recall"))
                 for space in FEATURE_SPACES)


# (group: the sub-directory of the run holding the scalar, tag, display name) of every metric:
# every feature space's, since every run must write the same experiment (a run has one space's).
METRICS = _feature_metrics() + (
    ("train", "test/test_mse_per_pixel", "test MSE/pixel"),
    ("eval", "eval/mmd_codes_prior", "MMD(Q_Z, P_Z)"),
) + _feature_metrics("_fitted_sampler", " fitted sampler") + (
    ("eval", "eval/sharpness_samples", "sharpness samples"),
    ("eval", "eval/sharpness_reconstructions", "sharpness recon"),
    ("train", "test/test_recon_cost", "test recon cost"),
)

PROJECTOR_DIR = "projector"
MAX_PROJECTED = 10000  # codes in the projector; its t-SNE samples 10,000 of them at most
SPRITE_MAX = 8192  # the projector's limit on the sprite's side, in pixels
CODES_TENSOR = "codes/.ATTRIBUTES/VARIABLE_VALUE"  # the variable's name in the checkpoint


# ----------------------------------------------------------------------------- hparams


def hparams_of(config: config_lib.Config) -> dict:
    """{field name: value} of HPARAM_FIELDS (bool, int, float or str)."""
    return {name: getattr(config, name) for name in HPARAM_FIELDS}


def _hparam_defs():
    """hp.HParam of each field; the enumerated ones with their choices (the same in every run,
    so every run writes the same experiment)."""
    return [hp.HParam(name, hp.Discrete(list(config_lib.CHOICES[name])))
            if name in config_lib.CHOICES else hp.HParam(name) for name in HPARAM_FIELDS]


def write_hparams(workdir: str, config: Optional[config_lib.Config] = None) -> None:
    """The run's session (its hparams) and the experiment (hparams and METRICS) in an events file
    of `workdir` itself, replacing the one an earlier start wrote (TensorBoard keeps the first
    session it reads: a resume with a longer --train_steps would not show); `config` defaults
    to the run's config.json (for runs trained before this was logged). The trial id, the
    HParams table's first column, is the directory's name (runs of one name are one row)."""
    if config is None:
        config = config_lib.from_dict(fileio.read_json(os.path.join(workdir, "config.json")))
    earlier = tf.io.gfile.glob(os.path.join(workdir, "events.out.tfevents.*"))
    writer = tf.summary.create_file_writer(workdir)
    with writer.as_default():
        hp.hparams_config(hparams=_hparam_defs(),
                          metrics=[hp.Metric(tag, group=group, display_name=name)
                                   for group, tag, name in METRICS])
        hp.hparams(hparams_of(config), trial_id=os.path.basename(os.path.normpath(workdir)))
    writer.close()
    for path in earlier:  # only this function writes events into the run's own directory
        tf.io.gfile.remove(path)


# ----------------------------------------------------------------------------- projector


def sprite_layout(num: int, height: int, width: int) -> Tuple[int, int, int]:
    """(thumbnails per row and column, thumbnail height, width) of a square sprite of `num`
    images at most SPRITE_MAX pixels a side: full size where they fit, else scaled down."""
    per_side = max(1, math.ceil(math.sqrt(num)))
    limit = SPRITE_MAX // per_side
    scale = min(1.0, limit / max(height, width))
    return per_side, max(1, int(height * scale)), max(1, int(width * scale))


def sprite_image(images: np.ndarray) -> np.ndarray:
    """uint8 [side*h, side*w, C]: images [n, H, W, C] in [0, 1] as thumbnails, row by row."""
    per_side, height, width = sprite_layout(len(images), *images.shape[1:3])
    thumbs = np.zeros((per_side * per_side, height, width, images.shape[3]), np.uint8)
    for start in range(0, len(images), 500):  # resized in blocks: bounded memory
        block = images[start:start + 500]
        if block.shape[1:3] != (height, width):
            block = tf.image.resize(block, [height, width], antialias=True).numpy()
        thumbs[start:start + len(block)] = np.round(np.clip(block, 0.0, 1.0) * 255.0)
    return visualize.image_grid(thumbs, columns=per_side, dtype=np.uint8)


def metadata_rows(index: np.ndarray, labels: np.ndarray,
                  class_names: Sequence[str] = ()) -> list:
    """metadata.tsv's lines: a header and (test index, label[, class]) rows; where the labels
    carry nothing (all equal: celeb_a, a folder without class sub-folders) the test index
    alone, without a header (the projector's one-column form)."""
    if len(np.unique(labels)) < 2:
        return [str(int(i)) for i in index]
    named = bool(class_names) and int(np.max(labels)) < len(class_names)
    header = "test_index\tlabel" + ("\tclass" if named else "")
    return [header] + [f"{int(i)}\t{int(label)}" + (f"\t{class_names[label]}" if named else "")
                       for i, label in zip(index, labels)]


def write_projector(directory: str, codes: np.ndarray, images: np.ndarray, labels: np.ndarray,
                    index: np.ndarray, class_names: Sequence[str] = (), step: int = 0,
                    title: str = "") -> dict:
    """The embedding projector's files for the first MAX_PROJECTED of `codes` [n, z_dim] (of
    test images [n, H, W, C] in [0, 1], their labels [n] and indices in the test split [n]):
    codes-1.* (the variable CODES_TENSOR), metadata.tsv, sprite.png, projector_config.pbtxt and
    an events file (a text summary) that makes `directory` a TensorBoard run. Returns what it
    wrote: the number of codes, the sprite's and a thumbnail's [height, width]."""
    num = min(len(codes), MAX_PROJECTED)
    tf.io.gfile.makedirs(directory)
    tf.train.Checkpoint(codes=tf.Variable(np.asarray(codes[:num], np.float32))).save(
        os.path.join(directory, "codes"))  # a fresh object: always codes-1, state file relative
    with tf.io.gfile.GFile(os.path.join(directory, "metadata.tsv"), "w") as f:
        f.write("\n".join(metadata_rows(index[:num], labels[:num], class_names)) + "\n")
    sprite = sprite_image(images[:num])
    visualize.save_png(os.path.join(directory, "sprite.png"), sprite)
    _, height, width = sprite_layout(num, *images.shape[1:3])
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = CODES_TENSOR
    embedding.metadata_path = "metadata.tsv"  # relative to the config file
    embedding.sprite.image_path = "sprite.png"
    embedding.sprite.single_image_dim.extend([width, height])
    projector.visualize_embeddings(directory, config)
    summary = (f"Codes (encoder means) of {num} test images{' of ' + title if title else ''} "
               f"at step {step}; sprite {sprite.shape[1]}x{sprite.shape[0]} of {width}x{height} "
               "thumbnails.")
    writer = tf.summary.create_file_writer(directory)
    with writer.as_default():
        tf.summary.text("projector", summary, step=step)
    writer.close()
    return dict(num_codes=num, sprite_size=list(sprite.shape[:2]), thumbnail_size=[height, width])
