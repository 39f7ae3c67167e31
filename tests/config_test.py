"""Flags, flagfiles and validation of the Config."""

import glob
import os
import subprocess
import sys

import pytest
from absl import flags

from tests.conftest import REPO
from wae_tf import cli
from wae_tf import config as config_lib
from wae_tf.config import RESUMABLE_FIELDS, Config
from wae_tf.errors import ConfigError

FLAGFILES = sorted(glob.glob(os.path.join(REPO, "flags", "*.cfg")))


def _parse(*args) -> Config:
    cwd = os.getcwd()
    os.chdir(REPO)  # the tests name flagfiles as flags/<name>.cfg
    try:
        return cli.config_from_args(list(args))
    finally:
        os.chdir(cwd)


def test_there_are_flagfiles_for_every_paper_experiment():
    names = {os.path.basename(p) for p in FLAGFILES}
    assert {"fashion_mnist_cpu.cfg", "mnist_wae_mmd.cfg", "mnist_wae_gan.cfg",
            "celeba_wae_mmd.cfg", "celeba_wae_gan.cfg", "celeba_vae.cfg",
            "fashion_mnist_vae.cfg"} <= names


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_every_flagfile_parses_into_a_valid_config(path):
    """Each file's flags (after the files it includes) land in the Config, which validates."""
    config = _parse(f"--flagfile={path}")
    assert config.validate() is config and (config.train_steps or config.epochs)
    values = flags.FlagValues()
    cli.define_config_flags(values)
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip().startswith("--")]
    for line in lines:
        name, _, text = line[2:].partition("=")
        if name == "flagfile":
            continue
        assert name in Config.__dataclass_fields__, f"{path}: --{name} is not a Config field"
        values[name].parse(text)
        assert getattr(config, name) == values[name].value, (path, name)


def test_flagfiles_carry_the_paper_settings():
    gan = _parse("--flagfile=flags/mnist_wae_gan.cfg")
    assert (gan.regularizer, gan.z_dim, gan.lambda_reg, gan.learning_rate,
            gan.disc_learning_rate, gan.epochs, gan.lr_schedule) == (
                "gan", 8, 10.0, 1e-3, 5e-4, 100, "manual")
    celeba = _parse("--flagfile=flags/celeba_wae_gan.cfg")
    assert (celeba.z_dim, celeba.lambda_reg, celeba.learning_rate, celeba.prior_scale ** 2) == (
        64, 1.0, 3e-4, pytest.approx(2.0))
    assert (celeba.pixel_range, celeba.encoder, celeba.input_noise, celeba.encoder_pretrain_steps,
            celeba.encoder_pretrain_batch, celeba.init_std) == (
                "symmetric", "deterministic", 0.01, 200, 256, 0.01)  # the paper code's
    assert (gan.input_noise, gan.encoder_pretrain_batch, gan.pixel_range) == (0.01, 1000, "unit")
    # Appendix C: every reported CelebA WAE trained 55 epochs, the VAE 68 (the code: 50).
    celeba_vae = _parse("--flagfile=flags/celeba_vae.cfg")
    assert (celeba.epochs, _parse("--flagfile=flags/celeba_wae_mmd.cfg").epochs,
            celeba_vae.epochs) == (55, 55, 68)
    assert (celeba_vae.regularizer, celeba_vae.encoder, celeba_vae.recon, celeba_vae.prior,
            celeba_vae.prior_scale, celeba_vae.lambda_reg, celeba_vae.pixel_range,
            celeba_vae.z_dim, celeba_vae.input_noise) == (
                "kl", "gaussian", "bernoulli", "normal", 1.0, 1.0, "symmetric", 64, 0.0)
    vae = _parse("--flagfile=flags/fashion_mnist_vae.cfg")
    assert (vae.regularizer, vae.encoder, vae.dataset, vae.recon, vae.lambda_reg,
            vae.input_noise) == ("kl", "gaussian", "fashion_mnist", "bernoulli", 1.0, 0.0)
    gaussian_vae = _parse("--flagfile=flags/compare_vae_lambda01.cfg")
    assert (gaussian_vae.recon, gaussian_vae.lambda_reg) == ("l2sq", 0.1)


def test_paper_settings_that_do_not_fit_are_refused():
    with pytest.raises(ConfigError, match="--prior=normal"):
        Config(train_steps=1, encoder="gaussian", prior="sphere").validate()
    with pytest.raises(ConfigError, match="batchnorm_epsilon"):
        Config(train_steps=1, batchnorm_epsilon=0.0).validate()


def test_command_line_overrides_the_flagfile():
    assert _parse("--flagfile=flags/mnist_wae_mmd.cfg", "--z_dim=3").z_dim == 3


def test_the_feature_space_flags_parse_and_a_resume_may_change_them():
    config = _parse("--flagfile=flags/mnist_wae_mmd.cfg", "--fid_features=/models/mine",
                    "--inception_path=/tmp/inception-2015-12-05.tgz", "--stats_cache_dir=")
    assert (config.fid_features, config.stats_cache_dir) == ("/models/mine", "")
    assert Config(train_steps=1).fid_features == "auto"
    assert {"fid_features", "inception_path", "stats_cache_dir"} <= set(RESUMABLE_FIELDS)


@pytest.mark.parametrize("changes,message", [
    (dict(regularizer="kl"), "encoder=gaussian"),
    (dict(lambda_reg=-1.0), "lambda_reg"),
    (dict(batch_size=0), "batch_size"),
    (dict(train_steps=0, epochs=0), "training length"),
    (dict(kernel="gauss"), "kernel"),
    (dict(image_size=48), "image_size"),
    (dict(adam_beta1=1.0), "adam_beta1"),
    (dict(lr_schedule="manual", train_steps=10, epochs=0), "epochs"),
    (dict(disc_prior_logdensity=True, prior="sphere"), "prior"),
    (dict(dataset="folder"), "data_dir"),
    (dict(test_fraction=0.0), "test_fraction"),
    (dict(channels=2), "channels"),
    (dict(crop=-1), "crop"),
    (dict(lambda_reg=float("nan")), r"--lambda_reg=nan is not a finite number"),
    (dict(learning_rate=float("inf")), r"--learning_rate=inf is not a finite number"),
    (dict(prior_scale=float("-inf")), r"--prior_scale=-inf is not a finite number"),
    (dict(cluster_timeout=0.0), "cluster_timeout"),
    (dict(fid_features=""), "--fid_features is empty"),
])
def test_invalid_values_are_refused_with_the_flag_named(changes, message):
    values = dict(train_steps=1)
    values.update(changes)
    with pytest.raises(ConfigError, match=message):
        Config(**values).validate()


@pytest.mark.slow
def test_train_reports_user_errors_in_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "wae_tf.train", "--regularizer=kl", "--train_steps=1",
         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 2
    assert "error: --regularizer=kl (VAE) needs a stochastic encoder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key,value,message", [
    ("z_dim", [1, 2], r"z_dim is \[1, 2\], not an integer"),
    ("z_dim", "abc", r'z_dim is "abc", not an integer'),
    ("z_dim", 8.5, r"z_dim is 8.5, not an integer"),
    ("z_dim", True, r"z_dim is true, not an integer"),
    ("lambda_reg", None, r"lambda_reg is null, not a number"),
    ("deterministic", 1, r"deterministic is 1, not true or false"),
    ("dataset", 3, r"dataset is 3, not a string"),
])
def test_a_record_with_a_value_of_the_wrong_type_names_the_file_and_key(key, value, message):
    record = config_lib.run_record(Config(train_steps=1), (28, 28, 1))
    with pytest.raises(ConfigError, match=rf"^W/config.json: {message}: correct it, or restore"):
        config_lib.from_dict({**record, key: value}, "W/config.json")


def test_a_record_takes_ints_for_floats_and_ignores_unknown_keys():
    record = config_lib.run_record(Config(train_steps=1), (28, 28, 1))
    config = config_lib.from_dict({**record, "lambda_reg": 5, "from_the_future": [1]})
    assert config.lambda_reg == 5.0 and isinstance(config.lambda_reg, float)
    assert config_lib.record_image_shape(record) == (28, 28, 1)


@pytest.mark.parametrize("record,message", [
    ([1, 2], r"^R holds \[1, 2\], not an object of flag values"),
    ("abc", r'^R holds "abc", not an object'),
    ({"train_steps": 1}, r"^R has no image_shape \(the \[height, width, channels\]"),
    ({"image_shape": [28, 28]}, r"^R: image_shape is \[28, 28\], not the \[height, width"),
    ({"image_shape": [28, "28", 1]}, r'^R: image_shape is \[28, "28", 1\], not'),
    ({"image_shape": [28, 0, 1]}, r"^R: image_shape is \[28, 0, 1\], not"),
])
def test_a_record_that_is_not_one_is_refused(record, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.check_record(record, "R")
