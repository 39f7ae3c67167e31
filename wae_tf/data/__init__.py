"""The one input pipeline: IDX files, TFDS and image folders -> uint8 splits -> tf.data streams.

Callers use the names below (`data.load_split`, `data.distribute`, ...); the modules behind them
are this package's internals, importing one way: images <- folders <- cache <- sources <- pipeline.
  images    decoding, the one centre crop and resize, uint8 -> float
  folders   folders of image files and CelebA's official files: listing, splits, labels, bad files
  cache     the --cache_dir copy of a decoded split, read by rows
  sources   IDX files, TFDS, folders -> a split in memory or streamed, by --dataset
  pipeline  the tf.data streams: training (resumable, per replica), evaluation, a seeded subset
"""

from wae_tf.data.folders import (
    EXTENSIONS,
    check_workdir,
    class_labels,
    class_names,
    crop_of,
    has_split_folders,
    image_dataset,
    in_test_split,
    list_images,
)
from wae_tf.data.images import (
    center_crop_and_resize,
    check_image_file,
    preprocess,
    to_float,
)
from wae_tf.data.pipeline import (
    distribute,
    make_eval_dataset,
    make_subset_dataset,
    make_train_dataset,
    materialize,
    steps_per_epoch,
    subset_indices,
)
from wae_tf.data.sources import ImageData, ImageFiles, ImageRows, load_split, read_idx

__all__ = ["EXTENSIONS", "ImageData", "ImageFiles", "ImageRows", "center_crop_and_resize",
           "check_image_file", "check_workdir", "class_labels", "class_names", "crop_of",
           "distribute", "has_split_folders", "image_dataset", "in_test_split", "list_images",
           "load_split", "make_eval_dataset", "make_subset_dataset", "make_train_dataset",
           "materialize", "preprocess", "read_idx", "steps_per_epoch", "subset_indices",
           "to_float"]
