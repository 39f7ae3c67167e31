"""`python -m wae_tf.train` reports bad data and foreign workdirs in one line, exit code 2.

Wrong-shaped and other corrupt IDX files are covered in sources_test.py at the library level.
"""

import gzip
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, idx_bytes, make_idx_dir, tiny_config
from wae_tf.runtime import checkpoints

FLAGS = ["--width_divisor=32", "--z_dim=4", "--batch_size=8", "--train_steps=1", "--export=false"]


def _truncate_images(data_dir):
    path = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]))


def _foreign_workdir(workdir):  # made with --z_dim=5; a checkpoint makes the record binding
    os.makedirs(os.path.join(workdir, "checkpoints"))
    open(os.path.join(workdir, "checkpoints", "ckpt-1.index"), "w").close()
    checkpoints.check_run_record(workdir, tiny_config(z_dim=5), (28, 28, 1), write=True)


def _no_data(data_dir):
    for name in os.listdir(data_dir):
        os.remove(os.path.join(data_dir, name))


CASES = {
    "truncated-data": (_truncate_images, None, "train-images-idx3-ubyte.gz has .* bytes but"),
    "other-model-flags": (None, _foreign_workdir, r"checkpoints trained with other flags: "
                                                  r"--z_dim=4 \(the run's: 5\)"),
    "missing-data": (_no_data, None, "No fashion_mnist IDX files"),
    "nan-flag": (None, None, r"--lambda_reg=nan is not a finite number"),
}
EXTRA_FLAGS = {"nan-flag": ["--lambda_reg=nan"]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case's train command at once (they are independent); {case: CompletedProcess}."""
    processes, processes_dirs = {}, {}
    for name, (damage_data, damage_workdir, _) in CASES.items():
        data_dir = str(tmp_path_factory.mktemp(f"data-{name}"))
        workdir = str(tmp_path_factory.mktemp(f"run-{name}"))
        make_idx_dir(data_dir, num_train=10, num_test=8)
        processes_dirs[name] = workdir
        for damage, where in ((damage_data, data_dir), (damage_workdir, workdir)):
            if damage:
                damage(where)
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "wae_tf.train", *FLAGS, f"--data_dir={data_dir}",
             f"--workdir={workdir}", *EXTRA_FLAGS.get(name, [])], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    outputs = {}
    try:
        for name, process in processes.items():
            _, stderr = process.communicate(timeout=300)
            outputs[name] = (process.returncode, stderr, _listing(processes_dirs[name]))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def _listing(workdir):
    """{relative path: bytes} of every file under `workdir`."""
    found = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), workdir)] = f.read()
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_a_refused_start_writes_nothing_into_the_workdir(results, name):
    listing = results[name][2]
    if name == "other-model-flags":  # the foreign run's record, unchanged
        assert sorted(listing) == ["checkpoints/ckpt-1.index", "config.json"]
        assert b'"z_dim": 5' in listing["config.json"]
    else:
        assert not listing


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_train_reports_the_problem_in_one_line(results, name):
    returncode, stderr, _ = results[name]
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert re.search(CASES[name][2], errors[0]), errors[0]
