"""The feature CNN of --fid_features=classifier: trained once per data set on its labels, cached.

Inception features (the standard FID, wae_tf.evaluation.features) are made for 299x299 ImageNet
photographs and must be fetched once; for 28x28 (Fashion-)MNIST a classifier trained on the data
set's own training split is fast, offline and meaningful (as in e.g. Lucic et al. 2018's MNIST
FID), but its numbers (`fid_classifier`, ...) compare only within wae_tf. The same cached
classifier serves every model, so FIDs of different runs compare. Its features are the 128 ReLU
units of the penultimate layer.

Cache layout, `<classifier_dir>` (default ~/.cache/wae_tf/classifier/<dataset>[_<size>]):
    saved_model/      a SavedModel with one endpoint `embed`: float32 images [N, H, W, C] in
                      [0, 1] -> {"features": [N, 128], "logits": [N, num_classes]}
    classifier.json   its test accuracy, training settings and image shape

CelebA has no class labels that fit (TFDS's 40 binary attributes are not loaded by
wae_tf.data), so no classifier is trained for it: a ConfigError explains this. Any data set can
still be evaluated with a feature extractor of the user's choice placed in a classifier_dir in
the layout above (it is then used whatever data set it was made for).
"""

import os
from typing import Callable, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import data, fileio
from wae_tf.errors import ConfigError

INFO_FILE = "classifier.json"
MODEL_DIR = "saved_model"
FEATURE_DIM = 128


class FeatureClassifier:
    """A loaded classifier: `embed(images [N,H,W,C]) -> features [N, d]` plus its info dict."""

    def __init__(self, module, info: dict):
        self._module, self.info = module, info

    def embed(self, images, batch: int = 500) -> np.ndarray:
        """float32 images [N, H, W, C] in [0, 1] -> float32 features [N, d], `batch` at a time."""
        chunks = [self._module.embed(tf.constant(images[i:i + batch], tf.float32))["features"]
                  for i in range(0, len(images), batch)]
        return np.concatenate([c.numpy() for c in chunks])


def default_dir(dataset: str, image_size: int = 0) -> str:
    """~/.cache/wae_tf/classifier/<dataset>, with _<size> when images are resized."""
    name = f"{dataset}_{image_size}" if image_size else dataset
    return os.path.join(os.path.expanduser("~"), ".cache", "wae_tf", "classifier", name)


def make_classifier(image_shape, num_classes: int) -> keras.Model:
    """images [N,H,W,C] -> [features [N,128], logits [N,num_classes]]; two conv blocks, one dense.

    Parameters at 28x28x1, 10 classes: conv 3*3*1*32+32 = 320, conv 3*3*32*64+64 = 18,496,
    dense 7*7*64*128+128 = 401,536, logits 128*10+10 = 1,290; 421,642 in all.
    """
    images = keras.Input(shape=tuple(image_shape), name="images")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv0")(images)
    x = keras.layers.MaxPooling2D(2, name="pool0")(x)  # [N, H/2, W/2, 32]
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)  # [N, H/4, W/4, 64]
    x = keras.layers.Flatten(name="flatten")(x)
    features = keras.layers.Dense(FEATURE_DIM, activation="relu", name="features")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(features)
    return keras.Model(images, [features, logits], name="feature_classifier")


def _num_classes(train: data.ImageData) -> int:
    classes = int(train.labels.max()) + 1 if train.num_examples else 0
    if classes < 2:
        raise ConfigError(f"{train.name} has no class labels (all {classes or 'missing'}): no "
                          "feature classifier can be trained for FID: use "
                          "--fid_features=inception (or a SavedModel's path), or place a feature "
                          "extractor in --classifier_dir (see wae_tf/evaluation/classifier.py).")
    return classes


def _dataset(split: data.ImageData, batch: int, seed: Optional[int]) -> tf.data.Dataset:
    """(float32 images [b,H,W,C] in [0,1], int64 labels [b]); shuffled with `seed` if given."""
    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    if seed is not None:
        dataset = dataset.shuffle(split.num_examples, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch).map(lambda x, y: (data.to_float(x), y)).prefetch(2)


def train_classifier(train: data.ImageData, test: data.ImageData, epochs: int = 2,
                     seed: int = 0, batch: int = 128) -> Tuple[keras.Model, float]:
    """Fit the CNN on `train` (Adam 1e-3, cross-entropy); returns it and its test accuracy."""
    keras.utils.set_random_seed(seed)
    model = make_classifier(train.image_shape, _num_classes(train))
    logits_only = keras.Model(model.input, model.outputs[1])
    logits_only.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log_epoch = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logging.info(
        "Feature classifier: epoch %d of %d, loss %.4f, accuracy %.4f.", epoch + 1, epochs,
        logs["loss"], logs["accuracy"]))
    # verbose=0: Keras prints progress to stdout, which `evaluate` keeps for its JSON.
    logits_only.fit(_dataset(train, batch, seed), epochs=epochs, shuffle=False, verbose=0,
                    callbacks=[log_epoch])
    _, accuracy = logits_only.evaluate(_dataset(test, 500, None), verbose=0)
    logging.info("Feature classifier: test accuracy %.4f on %s.", accuracy, test.name)
    return model, float(accuracy)


def save(model: keras.Model, info: dict, directory: str) -> None:
    """Write saved_model/ and classifier.json under `directory`, atomically (tmp dir + rename)."""
    tmp = fileio.temporary_sibling(directory)
    tf.io.gfile.makedirs(tmp)
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, *info["image_shape"]], tf.float32, name="images")
    archive.add_endpoint("embed", lambda images: dict(zip(("features", "logits"),
                                                          model(images, training=False))), [spec])
    archive.write_out(os.path.join(tmp, MODEL_DIR), verbose=False)
    fileio.write_json(os.path.join(tmp, INFO_FILE), info)
    fileio.replace_directory(tmp, directory)


def load(directory: str) -> FeatureClassifier:
    """The cached classifier of `directory`; ConfigError if it is not there."""
    info_path = os.path.join(directory, INFO_FILE)
    if not tf.io.gfile.exists(info_path):
        raise ConfigError(f"No feature classifier in {directory} ({INFO_FILE} missing).")
    info = fileio.read_json(info_path)
    return FeatureClassifier(tf.saved_model.load(os.path.join(directory, MODEL_DIR)), info)


def load_or_train(directory: str, dataset: str,
                  load_data: Callable[[], Tuple[data.ImageData, data.ImageData]],
                  epochs: int = 2, seed: int = 0) -> FeatureClassifier:
    """The classifier cached in `directory`, trained first (once) if absent.

    `load_data()` -> (train, test) ImageData is only called when training is needed, so cached
    runs never read the training split; tests pass small synthetic data here.
    """
    if not tf.io.gfile.exists(os.path.join(directory, INFO_FILE)):
        if dataset == "celeb_a":
            raise ConfigError(
                "No feature classifier for celeb_a: it has no class labels to train one on (the "
                "40 binary attributes are not loaded). Use --fid_features=inception (or a "
                "SavedModel's path), or place a feature extractor in --classifier_dir in the "
                "layout of wae_tf/evaluation/classifier.py.")
        train, test = load_data()
        model, accuracy = train_classifier(train, test, epochs, seed)
        info = dict(dataset=dataset, test_accuracy=accuracy, num_test_images=test.num_examples,
                    num_train_images=train.num_examples, epochs=epochs, seed=seed,
                    image_shape=list(train.image_shape), feature_dim=FEATURE_DIM,
                    features="128 ReLU units of the penultimate dense layer")
        save(model, info, directory)
    return load(directory)
