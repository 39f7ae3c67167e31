"""The command-line entry points end to end on the real Fashion-MNIST (skipped without it)."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import FASHION_DIR, REPO

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST IDX files not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_train_then_export_on_real_fashion_mnist(tmp_path):
    workdir = str(tmp_path / "run")
    # Batches of 50 (the flagfile's 20 otherwise): each run's evaluation over the 10,000 test
    # images takes 200 batches, not 500; the layers stay under convs.tune's size for timing.
    result = _run("wae_tf.train", "--flagfile=flags/test_tiny.cfg", f"--workdir={workdir}",
                  "--progress=on", "--batch_size=50")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "results.json", "samples.png", "reconstructions.png",
                 "training_curves.png", "export/6/saved_model.pb", "checkpoints/checkpoint"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "train")), "no TensorBoard events"
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["step"] == 6 and 0 < results["test_recon_cost"] < 50
    assert "images/s" in result.stderr and "left" in result.stderr
    # The progress bar, forced on, beside the log lines: its last drawing is step 6 of 6.
    # (text mode reads the bar's \r as a line break)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # without the bar's colours
    assert re.search(r"^6/6 ━+ \d+s \d+\w+/step - .*loss: ", plain, re.M), result.stderr[-3000:]
    record = json.load(open(os.path.join(workdir, "config.json")))
    assert record["image_shape"] == [28, 28, 1] and record["train_steps"] == 6
    assert record["batch_size"] == 50  # the resumed runs below train with it too
    # The workdir alone resumes the run from its config.json: nothing more to train, and the
    # finished run's results (with its train losses) are left as they are.
    again = _run("wae_tf.train", f"--workdir={workdir}", "--export=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished at step 6 already" in again.stderr
    assert json.load(open(os.path.join(workdir, "results.json"))) == results
    # A flag given again overrides the record: two more steps.
    longer = _run("wae_tf.train", f"--workdir={workdir}", "--train_steps=8", "--export=false",
                  "--progress=auto")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "from step 6 to 8" in longer.stderr
    assert "━" not in longer.stderr  # auto: no bar when stderr is not a terminal
    # Exporting the latest checkpoint: its step is the version directory.
    exported = _run("wae_tf.export", f"--workdir={workdir}", f"--export_dir={tmp_path}/exp")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert os.listdir(tmp_path / "exp") == ["8"]
    assert os.path.exists(tmp_path / "exp" / "8" / "saved_model.pb")
