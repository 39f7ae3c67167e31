"""The training loop's start: the conv forms are timed after the first step in runs long enough
to repay it (the step traced again with the new forms), never in shorter ones."""

import logging

import pytest

from tests.conftest import make_images, tiny_config
from wae_tf import loop
from wae_tf.model import step as step_lib
from wae_tf.perf import convs


@pytest.fixture
def fake_timing(monkeypatch):
    """Every conv is above MIN_TUNED_FLOPS and 'timed' at once to matmuls; returns the shapes
    timed and the number of train functions made (each is traced on its first call)."""
    timed, made = [], []
    monkeypatch.setattr(convs, "_PLANS", {})
    monkeypatch.setattr(convs, "_TUNED", [])
    monkeypatch.setattr(convs, "MIN_TUNED_FLOPS", 0)
    monkeypatch.setattr(convs, "_time_parts", lambda shape, dtype: (
        timed.append(shape) or convs.matmul_plan(shape), {}))
    make = step_lib.make_train_fn
    monkeypatch.setattr(step_lib, "make_train_fn", lambda *a: made.append(1) or make(*a))
    return timed, made


@pytest.mark.parametrize("min_steps, timed_after_step_1", [(0, True), (4, False)])
def test_conv_forms_are_timed_after_the_first_step_of_long_runs(
        fake_timing, tmp_path, caplog, min_steps, timed_after_step_1):
    timed, made = fake_timing
    config = tiny_config(train_steps=3, conv_tune_min_steps=min_steps,
                         conv_plan_cache=str(tmp_path / "plans.json"))
    with caplog.at_level(logging.INFO, logger="absl"):
        results = loop.train_and_evaluate(config, str(tmp_path / "run"),
                                          data_override=(make_images(32), make_images(8)))
    assert results["step"] == 3
    log = caplog.text
    if timed_after_step_1:  # the 4 encoder and 3 decoder convs
        assert len(timed) == 7 and len(made) == 2
        assert log.index("step 1 ") < log.index("timed 7 in") < log.index("step 2 ")
        assert "changed form: the next step traces them" in log
    else:
        assert not timed and len(made) == 1
        assert "a fixed rule, untimed (3 steps left, --conv_tune_min_steps=4)" in log
