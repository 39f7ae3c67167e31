"""`python -m wae_tf.train` reports bad data, foreign workdirs, a lost config.json, a workdir in
use and an export of another run in one line, exit code 2, and writes nothing.

Wrong-shaped and other corrupt IDX files are covered in sources_test.py at the library level.
"""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, idx_bytes, make_idx_dir, tiny_config
from wae_tf import config as config_lib
from wae_tf.runtime import checkpoints, lock
from wae_tf.tools import faults

FLAGS = ["--width_divisor=32", "--z_dim=4", "--batch_size=8", "--train_steps=1", "--export=false"]


def _truncate_images(data_dir):
    path = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]))


def _foreign_workdir(workdir):  # made with --z_dim=5; a checkpoint makes the record binding
    checkpoints.check_run_record(workdir, tiny_config(z_dim=5), (28, 28, 1), write=True)
    open(os.path.join(workdir, "checkpoints", "ckpt-1.index"), "w").close()


def _checkpoints_without_record(workdir):  # config.json and its copies lost
    os.makedirs(os.path.join(workdir, "checkpoints"))
    open(os.path.join(workdir, "checkpoints", "ckpt-1.index"), "w").close()


def _locked(workdir):  # by this test's process: alive while the command runs
    with open(os.path.join(workdir, lock.LOCK_FILE), "w") as f:
        json.dump(lock.this_process(), f)


def _export_of_another_run(workdir):  # version 1 (the step the run ends at) of another run
    record = dict(config_lib.run_record(tiny_config(seed=9), (28, 28, 1)),
                  **config_lib.new_run_identity("/elsewhere/run"))
    path = os.path.join(workdir, "export", "1", checkpoints.EXPORT_RECORD)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(record, f)


def _no_data(data_dir):
    for name in os.listdir(data_dir):
        os.remove(os.path.join(data_dir, name))


CASES = {
    "truncated-data": (_truncate_images, None, "train-images-idx3-ubyte.gz has .* bytes but"),
    "other-model-flags": (None, _foreign_workdir, r"checkpoints trained with other flags: "
                                                  r"--z_dim=4 \(the run's: 5\)"),
    "missing-data": (_no_data, None, "No fashion_mnist IDX files"),
    "nan-flag": (None, None, r"--lambda_reg=nan is not a finite number"),
    "lost-config": (None, _checkpoints_without_record,
                    r"holds checkpoints but not config.json, .* restore .* from a backup"),
    "locked": (None, _locked, rf"is in use by another run \(pid {os.getpid()} on .* since "),
    "export-of-another-run": (None, _export_of_another_run,
                              r"export/1 holds the export of another run \(run \w+ in "
                              r"/elsewhere/run\); this run \(.*\) would replace it"),
}
EXTRA_FLAGS = {"nan-flag": ["--lambda_reg=nan"], "export-of-another-run": ["--export=true"]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case's train command at once (they are independent); {case: CompletedProcess}."""
    processes, processes_dirs, before = {}, {}, {}
    for name, (damage_data, damage_workdir, _) in CASES.items():
        data_dir = str(tmp_path_factory.mktemp(f"data-{name}"))
        workdir = str(tmp_path_factory.mktemp(f"run-{name}"))
        make_idx_dir(data_dir, num_train=10, num_test=8)
        processes_dirs[name] = workdir
        for damage, where in ((damage_data, data_dir), (damage_workdir, workdir)):
            if damage:
                damage(where)
        before[name] = _listing(workdir)
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "wae_tf.train", *FLAGS, f"--data_dir={data_dir}",
             f"--workdir={workdir}", *EXTRA_FLAGS.get(name, [])], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    outputs = {}
    try:
        for name, process in processes.items():
            _, stderr = process.communicate(timeout=300)
            outputs[name] = (process.returncode, stderr,
                             (before[name], _listing(processes_dirs[name])))
    finally:
        for process in processes.values():
            faults.kill_if_running(process)
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
    before, after = results[name][2]
    assert after == before
    if name == "other-model-flags":  # the foreign run's record, unchanged
        assert b'"z_dim": 5' in after["config.json"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_train_reports_the_problem_in_one_line(results, name):
    returncode, stderr, _ = results[name]
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert re.search(CASES[name][2], errors[0]), errors[0]


@pytest.mark.slow
def test_a_second_trainer_on_a_workdir_in_use_is_refused_at_once(tmp_path):
    """While one trainer runs, a second on its workdir exits 2 naming it (and resumes nothing);
    the first's SIGTERM releases the lock."""
    data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "run")
    os.makedirs(data_dir)
    make_idx_dir(data_dir, num_train=16, num_test=8)
    command = [sys.executable, "-m", "wae_tf.train", *FLAGS, "--train_steps=1000000",
               f"--data_dir={data_dir}", f"--workdir={workdir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    lock_path = os.path.join(workdir, lock.LOCK_FILE)
    try:
        deadline = time.time() + 300
        while not os.path.exists(lock_path):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        assert first.poll() is None  # undisturbed
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=300) == 143
    finally:
        faults.kill_if_running(first)
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in second.stderr
    assert re.search(rf"--workdir={workdir} is in use by another run \(pid {first.pid} on "
                     r".* since .*\): wait for it to end or stop it", errors[0]), errors[0]
    assert "from step" not in second.stderr  # it restored nothing
    assert not os.path.exists(lock_path)  # released on SIGTERM
