"""The command line: experiments by name, flagfiles that include each other from any directory,
paths with `~` and $VARIABLES, and what the entry points print for them."""

import os
import re
import subprocess
import sys

import pytest
from absl import flags

from tests.conftest import REPO, make_idx_dir
from wae_tf import cli
from wae_tf.errors import ConfigError, error_summary


def _write(path, *lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_includes_resolve_relative_to_the_including_file_from_any_directory(tmp_path,
                                                                             monkeypatch):
    base = _write(tmp_path / "exp" / "base.cfg", "# the base", "--z_dim=3", "--seed=1")
    _write(tmp_path / "exp" / "sub" / "child.cfg", "--flagfile=../base.cfg", "// a comment",
           "", "--seed=2")
    monkeypatch.chdir(tmp_path / "exp" / "sub")
    assert cli.expand_flagfiles(["--flagfile=child.cfg", "--z_dim=5"]) == [
        "--z_dim=3", "--seed=1", "--seed=2", "--z_dim=5"]
    monkeypatch.chdir("/")
    args = cli.expand_flagfiles(["--flagfile", str(tmp_path / "exp" / "sub" / "child.cfg")])
    assert args == ["--z_dim=3", "--seed=1", "--seed=2"]
    assert cli.expand_flagfiles([f"--flagfile={base}"]) == ["--z_dim=3", "--seed=1"]


def test_a_missing_or_circular_flagfile_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--flagfile=nope.cfg: no such file"):
        cli.expand_flagfiles([f"--flagfile={_write(tmp_path / 'a.cfg', '--flagfile=nope.cfg')}"])
    _write(tmp_path / "b.cfg", "--flagfile=c.cfg")
    _write(tmp_path / "c.cfg", "--flagfile=b.cfg")
    with pytest.raises(ConfigError, match="includes itself"):
        cli.expand_flagfiles([f"--flagfile={tmp_path / 'b.cfg'}"])
    with pytest.raises(ConfigError, match="needs a value"):
        cli.expand_flagfiles(["--flagfile"])


def test_every_packaged_experiment_parses_by_name_from_another_directory(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = cli.experiments()
    assert {"fashion_mnist_cpu", "celeba_wae_mmd", "test_tiny", "compare_vae"} <= set(names)
    for name in names:
        assert cli.config_from_args([f"--experiment={name}"]).validate()
    gan = cli.config_from_args(["--experiment=mnist_wae_gan", "--z_dim=3"])
    assert (gan.regularizer, gan.lambda_reg, gan.z_dim) == ("gan", 10.0, 3)
    with pytest.raises(ConfigError, match=r"--experiment=nope is not .*fashion_mnist_cpu"):
        cli.expand_flagfiles(["--experiment=nope"])


def test_paths_expand_home_and_variables(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("DATA", "/data")
    values = flags.FlagValues()
    cli.define_config_flags(values)
    cli.DEFINE_path("workdir", None, "a run", flag_values=values)
    values(["prog", "--data_dir=~/images", "--cache_dir=$DATA/cache", "--workdir=~/runs/a",
            "--train_steps=1"])
    assert values.data_dir == "/home/someone/images"
    assert values.cache_dir == "/data/cache"
    assert values.workdir == "/home/someone/runs/a"
    assert cli.config_from_flags(values).data_dir == "/home/someone/images"
    assert cli.expand_path("") == "" and cli.expand_path(None) is None


def _command(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **(env or {})), check=False)


def test_experiment_list_prints_one_line_each(tmp_path):
    result = _command(["wae_tf.train", "--experiment=list"], cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(cli.experiments())
    assert any(line.startswith("fashion_mnist_cpu ") and "main command" in line for line in lines)


def test_a_bad_experiment_name_is_one_line(tmp_path):
    result = _command(["wae_tf.train", "--experiment=fashoin_mnist", "--workdir=x"], cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: --experiment=fashoin_mnist is not a packaged experiment")


@pytest.mark.slow
def test_train_runs_an_experiment_by_name_into_a_home_path_from_any_directory(tmp_path):
    tiny_idx_dir = tmp_path / "idx"
    tiny_idx_dir.mkdir()
    make_idx_dir(str(tiny_idx_dir), num_train=40, num_test=20)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _command(["wae_tf.train", "--experiment=test_tiny", "--workdir=~/runs/$RUN",
                       f"--data_dir={tiny_idx_dir}", "--train_steps=2", "--export=false"],
                      cwd=str(elsewhere), env={"HOME": str(tmp_path), "RUN": "tiny",
                                               "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "runs" / "tiny" / "results.json")


def test_startup_noise_is_dropped_and_everything_else_kept():
    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to "
             "STDERR\n",
             "I0000 00:00:1796418186.98 18580 port.cc:153] oneDNN custom operations are on.\n",
             "W0000 00:00:1796418186.99 18580 cudart_stub.cc:31] Could not find cuda drivers\n",
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild\n"]
    assert all(cli._STARTUP_NOISE.match(line) for line in noise)
    probe = "E0000 00:00:1796418203.68 18580 cuda_platform.cc:52] failed call to cuInit: (303)"
    assert cli._NO_GPU_PROBE.match(probe) and not cli._STARTUP_NOISE.match(probe)
    kept = ["E0000 00:00:17964 1 op_kernel.cc:1] OOM when allocating tensor\n",
            "Traceback (most recent call last):\n", "error: --z_dim must be positive\n"]
    assert not any(cli._STARTUP_NOISE.match(k) or cli._NO_GPU_PROBE.match(k) for k in kept)


def test_tf_and_keras_info_records_are_filtered_but_not_their_warnings_or_ours():
    import logging  # pylint: disable=import-outside-toplevel

    def record(path, level):
        return logging.LogRecord("absl", level, path, 1, "m", (), None)
    assert not cli._library_info_filter(record("/v/site-packages/tensorflow/python/x.py", 20))
    assert not cli._library_info_filter(record("/v/site-packages/keras/src/y.py", 20))
    assert cli._library_info_filter(record("/v/site-packages/tensorflow/python/x.py", 30))
    assert cli._library_info_filter(record("/repo/wae_tf/loop.py", 20))


@pytest.mark.slow
def test_a_run_logs_what_it_found_without_tensorflows_startup_lines(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    make_idx_dir(str(idx), num_train=40, num_test=20)
    args = ["wae_tf.train", "--experiment=test_tiny", f"--data_dir={idx}", "--train_steps=2",
            "--export=false", f"--workdir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                           capture_output=True, timeout=300, check=False)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    for noise in ("absl::InitializeLog", "cudart_stub", "cuInit", "port.cc", "saver.py"):
        assert noise not in quiet.stderr, noise
    assert re.search(r"40 train and 20 test images, 28x28x1; 10 classes \(train images: "
                     r"T-shirt/top \d+, Trouser \d+", quiet.stderr), quiet.stderr[-3000:]
    args[-1] = f"--workdir={tmp_path / 'run2'}"
    loud = subprocess.run([sys.executable, "-m", *args, "--verbosity=1"], cwd=REPO, env=env,
                          text=True, capture_output=True, timeout=300, check=False)
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr, loud.stderr[-3000:]


def _failing_step():
    raise RuntimeError("boom\nsecond line")


def test_an_unexpected_error_is_one_line_with_its_traceback_in_a_log(capsys):
    code = cli.run_reporting_user_errors(_failing_step, command="wae-test")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    logs = os.path.join(os.environ["XDG_CACHE_HOME"], "wae_tf", "logs")
    match = re.fullmatch(rf"error: wae-test failed unexpectedly \(RuntimeError: boom\); the "
                         rf"traceback is in ({re.escape(logs)}/wae-test-[\d-]+-{os.getpid()}"
                         r"\.log)\. Please report it\.", lines[0])
    assert match, lines[0]
    with open(match.group(1)) as f:
        log = f.read()
    assert "Traceback (most recent call last)" in log and "in _failing_step" in log
    assert "RuntimeError: boom\nsecond line" in log


def test_the_log_falls_back_to_the_temporary_directory(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # <file>/wae_tf/logs cannot be made
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert cli.run_reporting_user_errors(_failing_step, command="python -m wae_tf.x") == 1
    err = capsys.readouterr().err
    (log,) = os.listdir(tmp_path / "tmp")
    assert log.startswith("wae_tf.x-") and f"traceback is in {tmp_path / 'tmp' / log}" in err


def test_tensorflow_errors_are_reported_by_their_cause(capsys):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def failing():
        raise tf.errors.InvalidArgumentError(
            None, None, "Graph execution error:\n\nDetected at node cond/Equal defined at "
            "(most recent call last):\n<stack traces unavailable>\nIncompatible shapes: [3] vs. "
            "[2]\n\t [[{{node cond/Equal}}]] [Op:__inference_f_473]")
    assert cli.run_reporting_user_errors(failing, command="wae-test") == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "(InvalidArgumentError: Incompatible shapes: [3] vs. [2]);" in line


def test_an_error_summary_is_one_line_without_tensorflow_s_internals():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    error = tf.errors.InvalidArgumentError(
        None, None, "{{function_node __wrapped__DecodeImage}} Unknown image file format. One "
        "of JPEG required. [Op:DecodeImage] name: decode")
    assert error_summary(error) == "Unknown image file format. One of JPEG required."
    assert error_summary(OSError(28, "No space left on device")) == (
        "[Errno 28] No space left on device")
    assert error_summary(ValueError()) == "ValueError"
    assert error_summary(ValueError("x" * 400), limit=10) == "xxxxxxx..."


@pytest.mark.parametrize("error,code,start", [
    (ConfigError("bad flag"), 2, "error: bad flag"),
    (KeyboardInterrupt(), 130, "stopped: SIGINT"),
])
def test_user_errors_keep_their_own_line_and_code(error, code, start, capsys):
    def failing():
        raise error
    assert cli.run_reporting_user_errors(failing) == code
    assert capsys.readouterr().err.startswith(start)


def test_path_flags_given_are_the_reported_inputs(monkeypatch):
    values = flags.FlagValues()
    cli.DEFINE_path("workdir", None, "w", flag_values=values)
    cli.DEFINE_path("export_dir", "", "e", flag_values=values)
    flags.DEFINE_integer("steps", 1, "s", flag_values=values)
    values(["x", "--workdir=/runs/a", "--steps=3"])
    monkeypatch.setattr(cli, "FLAGS", values)
    assert cli.input_paths() == {"workdir": "/runs/a"}


def test_each_command_is_named_as_its_user_typed_it(monkeypatch):
    main = type(sys)("__main__")
    main.__spec__ = type("Spec", (), {"name": "wae_tf.encode"})()
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert cli.command_name() == "wae-encode"
    main.__spec__.name = "wae_tf.fault_injection"
    assert cli.command_name() == "python -m wae_tf.fault_injection"
