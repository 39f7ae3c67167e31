"""TensorBoard beyond scalars, read back with TensorBoard's own event reader: a trained and
evaluated run is an hparams session whose metric tags are scalars of the run; evaluate writes
the projector's checkpoint, metadata, sprite and config."""

import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tests.conftest import make_images
from wae_tf import config as config_lib
from wae_tf import data, fileio, visualize
from wae_tf.evaluation import evaluator
from wae_tf.runtime import tensorboard_logs


def _accumulator(directory: str) -> event_accumulator.EventAccumulator:
    """Every event of the event files in `directory` (not its sub-directories), all kept."""
    events = event_accumulator.EventAccumulator(directory, size_guidance={
        event_accumulator.TENSORS: 0})
    return events.Reload()


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    """The tiny run evaluated into <workdir>/eval (20 of its 24 test images, seed 3)."""
    results = evaluator.evaluate_workdir(tiny_run["workdir"], num_samples=20, seed=3,
                                          classifier_dir=tiny_run["classifier_dir"],
                                          test_data=tiny_run["test"])
    return dict(tiny_run, results=results)


@pytest.mark.slow
def test_the_run_directory_is_an_hparams_session_with_its_config(tiny_run):
    events = _accumulator(tiny_run["workdir"])
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG])
    logged = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
              for name, value in start.hparams.items()}
    config = tiny_run["config"]
    assert start.group_name == "run"  # the trial id: the run directory's name
    assert set(logged) == set(tensorboard_logs.HPARAM_FIELDS)
    assert logged["regularizer"] == config.regularizer == "mmd"
    assert logged["lambda_reg"] == config.lambda_reg and logged["z_dim"] == config.z_dim == 4
    assert logged["width_divisor"] == 32 and logged["dataset"] == config.dataset
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG])
    assert [info.name for info in experiment.hparam_infos] == list(
        tensorboard_logs.HPARAM_FIELDS)
    regularizer = next(i for i in experiment.hparam_infos if i.name == "regularizer")
    assert [v.string_value for v in regularizer.domain_discrete.values] == [
        "gan", "kl", "mmd", "swd"]  # hp.Discrete sorts them
    assert [(m.name.group, m.name.tag) for m in experiment.metric_infos] == [
        (group, tag) for group, tag, _ in tensorboard_logs.METRICS]


@pytest.mark.slow
def test_every_metric_of_the_experiment_is_a_scalar_of_the_run(evaluated):
    """Each (group, tag) of METRICS is a scalar in <workdir>/<group>, whose last value is the
    one results.json or metrics.json reports: the HParams tab finds every metric (of the
    evaluated feature space; METRICS lists every space's, so every run writes one experiment)."""
    workdir, results = evaluated["workdir"], evaluated["results"]
    space = results["feature_space"]["name"]
    others = [s for s in tensorboard_logs.FEATURE_SPACES if s != space]
    trained = fileio.read_json(os.path.join(workdir, "results.json"))
    reported = {"train": {f"test/{k}": v for k, v in trained.items()},
                "eval": {f"eval/{k}": v["value"] for k, v in results.items()
                         if isinstance(v, dict) and "value" in v}}
    for group in ("train", "eval"):
        events = _accumulator(os.path.join(workdir, group))
        for metric_group, tag, _ in tensorboard_logs.METRICS:
            if metric_group != group or any(f"_{other}" in tag for other in others):
                continue
            assert tag in events.Tags()["tensors"], (group, tag)
            last = float(tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto))
            assert last == pytest.approx(reported[group][tag], rel=1e-6), (group, tag)


def test_a_rerun_replaces_the_session_and_an_old_run_gets_one_from_config_json(tmp_path):
    """TensorBoard keeps the first session it reads: a resumed run's must replace the old."""
    config = config_lib.Config(train_steps=5, lambda_reg=3.0)
    tensorboard_logs.write_hparams(str(tmp_path), config)
    fileio.write_json(str(tmp_path / "config.json"),
                      config_lib.run_record(config.replace(train_steps=9), (28, 28, 1)))
    tensorboard_logs.write_hparams(str(tmp_path))  # without a config: the run's config.json
    assert len(os.listdir(tmp_path)) == 2  # config.json and one events file
    content = _accumulator(str(tmp_path)).PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["train_steps"].number_value == 9
    assert start.hparams["lambda_reg"].number_value == 3.0


@pytest.mark.slow
def test_evaluate_writes_the_codes_labels_and_sprite_to_the_projector(evaluated):
    directory = os.path.join(evaluated["workdir"], "eval", tensorboard_logs.PROJECTOR_DIR)
    config = projector.ProjectorConfig()
    with open(os.path.join(directory, "projector_config.pbtxt")) as f:
        text_format.Parse(f.read(), config)
    (embedding,) = config.embeddings
    assert embedding.tensor_name == tensorboard_logs.CODES_TENSOR
    # 20 codes: a 5x5 sprite of the 28x28 images at full size.
    assert list(embedding.sprite.single_image_dim) == [28, 28]
    sprite = visualize.read_png(os.path.join(directory, embedding.sprite.image_path))
    assert sprite.shape == (5 * 28, 5 * 28, 1)
    lines = open(os.path.join(directory, embedding.metadata_path)).read().splitlines()
    index = data.subset_indices(24, 20, seed=3)
    labels = evaluated["test"].labels[index]  # synthetic labels: test index mod 10
    assert lines == ["test_index\tlabel"] + [f"{i}\t{label}" for i, label in zip(index, labels)]
    np.testing.assert_array_equal(np.round(sprite[:28, 28:56] * 255),  # the second image
                                  evaluated["test"].images[index[1]])
    model = evaluator.load_from_workdir(evaluated["workdir"])
    images = evaluated["test"].images[index].astype(np.float32) / 255.0
    saved = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    np.testing.assert_allclose(saved.get_tensor(tensorboard_logs.CODES_TENSOR),
                               model.encode(tf.constant(images)).numpy(), rtol=1e-6, atol=1e-6)
    assert evaluated["results"]["projector"]["num_codes"] == 20
    assert _accumulator(directory).Tags()["tensors"] == ["projector"]  # a run: listed


def test_projector_metadata_names_classes_and_omits_labels_that_carry_nothing(tmp_path):
    names = ("zero", "one", "two")
    labelled = tensorboard_logs.metadata_rows(np.array([4, 9]), np.array([2, 0]), names)
    assert labelled == ["test_index\tlabel\tclass", "4\t2\ttwo", "9\t0\tzero"]
    assert tensorboard_logs.metadata_rows(np.array([4, 9]), np.array([2, 0])) == [
        "test_index\tlabel", "4\t2", "9\t0"]
    assert tensorboard_logs.metadata_rows(np.array([4, 9]), np.zeros(2, np.int64)) == ["4", "9"]
    data = make_images(5, size=32, channels=3)
    info = tensorboard_logs.write_projector(
        str(tmp_path), np.ones((5, 3), np.float32), data.images / 255.0, np.zeros(5, np.int64),
        np.arange(5))
    assert info == dict(num_codes=5, sprite_size=[3 * 32, 3 * 32], thumbnail_size=[32, 32])
    assert open(tmp_path / "metadata.tsv").read() == "0\n1\n2\n3\n4\n"  # one line per code
    assert visualize.read_png(str(tmp_path / "sprite.png")).shape == (96, 96, 3)


@pytest.mark.parametrize("num, side, expected", [
    (10000, 28, (100, 28, 28)),  # Fashion-MNIST's test split at full size: 2800 px
    (10000, 64, (100, 64, 64)),  # CelebA 64x64: 6400 px
    (10000, 128, (100, 81, 81)),  # 128x128 scaled to 8192 // 100 = 81 px
    (19962, 64, (142, 57, 57)),  # CelebA's test split: 142 * 57 = 8094 px
    (1, 28, (1, 28, 28)),
])
def test_the_sprite_fits_the_projectors_limit(num, side, expected):
    per_side, height, width = tensorboard_logs.sprite_layout(num, side, side)
    assert (per_side, height, width) == expected
    assert per_side * per_side >= num and per_side * height <= tensorboard_logs.SPRITE_MAX
