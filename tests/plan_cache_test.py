"""The conv plans kept across processes: reused on the same machine and code, timed again
otherwise, and a damaged or unwritable file never stops a run."""

import json
import logging

import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf.perf import convs, fast_layers, plan_cache

# 2 * 4 * 8*8 * 4*4 * 64*128 = 67 MFLOP: above convs.MIN_TUNED_FLOPS.
SHAPE = convs.LayerShape(True, 4, 8, 64, 128, 4)


@pytest.fixture
def timings(monkeypatch):
    """A fresh process's plans, and fake timings: every form but the sub-pixel one takes 1 s;
    returns the list of timed calls."""
    monkeypatch.setattr(convs, "_PLANS", {})
    calls = []

    def fake_seconds(fn, *args, **kwargs):
        calls.append(fn)
        return 0.5 if "subpixel" in fn.python_function.args else 1.0
    monkeypatch.setattr(convs, "_seconds", fake_seconds)
    return calls


def _new_process(monkeypatch):
    monkeypatch.setattr(convs, "_PLANS", {})


def test_a_timed_plan_is_reused_by_the_next_process(tmp_path, timings, monkeypatch):
    path = str(tmp_path / "plans.json")
    plan = convs.tune(SHAPE, cache=path)
    assert plan == convs.ConvPlan(convs.SUBPIXEL, convs.SUBPIXEL, convs.SUBPIXEL)
    assert len(timings) == 12  # 3 parts x 4 forms
    entries = json.load(open(path))["plans"]
    (entry,) = entries.values()
    assert entry["plan"] == dict(forward="subpixel", input_grad="subpixel",
                                 kernel_grad="subpixel")
    assert entry["seconds"]["forward"]["native"] == 1.0 and "k=4" in entry["layer"]
    timings.clear()
    _new_process(monkeypatch)
    assert convs.tune(SHAPE, cache=path) == plan and not timings
    # Without the file, or for another dtype, the layer is timed.
    _new_process(monkeypatch)
    convs.tune(SHAPE)
    convs.tune(SHAPE, tf.float16, cache=path)
    assert len(timings) == 12 + 9  # float16: no Winograd form
    assert len(json.load(open(path))["plans"]) == 2


@pytest.mark.parametrize("change", ["machine", "oneDNN"])
def test_another_machine_or_setting_times_again(tmp_path, timings, monkeypatch, change):
    path = str(tmp_path / "plans.json")
    convs.tune(SHAPE, cache=path)
    _new_process(monkeypatch)
    if change == "machine":
        monkeypatch.setattr(plan_cache, "machine_key", lambda: "another CPU")
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI")
    timings.clear()
    convs.tune(SHAPE, cache=path)
    assert len(timings) == 12
    assert len(json.load(open(path))["plans"]) == 2


def test_the_machine_key_names_the_software_and_the_code():
    key = plan_cache.machine_key()
    assert f"tf {tf.__version__}" in key and "code " in key and "threads" in key


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "plans": []}', "[1, 2]"])
def test_a_damaged_cache_is_reported_ignored_and_rewritten(tmp_path, timings, caplog,
                                                           content):
    path = tmp_path / "plans.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        plan = convs.tune(SHAPE, cache=str(path))
    assert len(timings) == 12 and "Ignoring the conv plan cache" in caplog.text
    (entry,) = json.load(open(path))["plans"].values()
    assert entry["plan"]["forward"] == plan.forward


def test_an_entry_naming_a_form_the_layer_lacks_is_timed_again(tmp_path, timings,
                                                                 monkeypatch):
    path = str(tmp_path / "plans.json")
    convs.tune(SHAPE, cache=path)
    content = json.load(open(path))
    for entry in content["plans"].values():
        entry["plan"]["forward"] = "im2col"  # not a form of this code
    with open(path, "w") as f:
        json.dump(content, f)
    _new_process(monkeypatch)
    timings.clear()
    assert convs.tune(SHAPE, cache=path).forward == convs.SUBPIXEL and len(timings) == 12


def test_an_unwritable_cache_only_warns(tmp_path, timings, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        plan = convs.tune(SHAPE, cache=str(blocker / "plans.json"))  # under a file: no dir
    assert plan.forward == convs.SUBPIXEL
    assert "Could not write the conv plan cache" in caplog.text


def test_the_flag_picks_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert plan_cache.resolve("auto") == str(tmp_path / "wae_tf" / "conv_plans.json")
    assert plan_cache.resolve("") is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert plan_cache.resolve("~/p.json") == str(tmp_path / "p.json")
    seen = []
    monkeypatch.setattr(convs, "tune", lambda shape, dtype, cache: seen.append(cache))
    fast_layers.conv_plan(tiny_config(conv_plan_cache=""), SHAPE)
    fast_layers.conv_plan(tiny_config(), SHAPE)
    assert seen == [None, str(tmp_path / "wae_tf" / "conv_plans.json")]
