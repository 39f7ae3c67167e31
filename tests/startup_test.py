"""The start-up benchmark reads what a real training run logs: the first step, the timing of
the conv forms, the images/s of each window."""

import os

import pytest

from tests.conftest import FASHION_DIR
from wae_tf.tools import startup


def test_rate_leaves_out_the_first_window_and_the_table_compares_with_cached():
    start = startup.Start(first_step_s=3.0, tuning_s=0.0, rates=[10.0, 100.0, 90.0, 110.0])
    assert start.rate == 100.0
    cached = startup.Start(first_step_s=2.0, tuning_s=0.0, rates=[1.0, 200.0])
    table = startup.format_table({"case": {"rule": start, "timed": start, "cached": cached}})
    assert table.splitlines()[1].split()[-4:] == ["3.0", "0.0", "100.0", "0.500"]
    assert table.splitlines()[3].split()[-1] == "1.000"


def test_the_log_lines_it_reads():
    assert startup.STEP_LINE.search("I1204 23:17:38 1 loop.py:127] step 25 loss=2.0 recon=1.5 "
                                    "penalty=0.05 lr=1.00e-03 239 images/s, 32 s left")
    assert startup.TUNED_LINE.search("loop.py:445] Conv forms of 6 layers: timed 6 in 23.9 s "
                                     "(each layer's choice: --verbosity=1).").group(2) == "23.9"


@pytest.mark.slow
def test_a_real_run_is_timed(tmp_path):
    if not os.path.isdir(FASHION_DIR):
        pytest.skip(f"needs Fashion-MNIST in {FASHION_DIR}")
    start = startup.run_training(["--flagfile=flags/test_tiny.cfg"], str(tmp_path / "run"),
                                 str(tmp_path / "plans.json"), log_every=1, windows=2)
    assert 0 < start.first_step_s < 120 and start.tuning_s == 0 and len(start.rates) == 2
