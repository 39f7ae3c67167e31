"""The one input pipeline: IDX files, TFDS and image folders -> uint8 splits -> tf.data streams.

Callers use the names below (`data.load_split`, `data.distribute`, ...); the modules behind them
are this package's internals.
"""

from wae_tf.data.sources import (ImageData, ImageFiles, ImageRows, center_crop_and_resize,
                                 distribute, load_split, make_eval_dataset, make_train_dataset,
                                 materialize, read_idx, steps_per_epoch, to_float)

__all__ = ["ImageData", "ImageFiles", "ImageRows", "center_crop_and_resize", "distribute",
           "load_split", "make_eval_dataset", "make_train_dataset", "materialize", "read_idx",
           "steps_per_epoch", "to_float"]
