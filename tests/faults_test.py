"""The fault-injection tool's bookkeeping: where each interrupted run resumed, what it recomputed
and lost, the tables, the scenarios' plan (the runs themselves: python -m wae_tf.fault_injection,
BUILD.md)."""

import signal

from wae_tf.tools import faults


def _record(fault, killed_after, on_disk, resumed_from, exit_code, startup=False):
    return dict(fault=fault, signal=signal.Signals(faults_by_name()[fault].signum).name,
                killed_after_step=killed_after, checkpoint_on_disk=on_disk,
                resumed_from=resumed_from, exit_code=exit_code, in_startup=startup,
                exit_ok=exit_code in faults_by_name()[fault].exit_codes, traceback=False)


def faults_by_name():
    return {f.name: f for f in faults.faults(kills=1)}


def test_every_fault_is_planned_in_order():
    names = list(faults_by_name())
    assert names == ["SIGKILL", "SIGTERM", "SIGINT", "SIGTERM during start-up",
                     "SIGINT during start-up", "state file deleted (after SIGKILL)",
                     "state file empty (after SIGKILL)"]


def test_resumes_skip_runs_stopped_before_restoring_and_lost_steps_are_counted():
    interruptions = [
        _record("SIGKILL", 30, 25, 0, -9),
        _record("SIGINT during start-up", -1, 25, -1, 130, startup=True),  # never restored
        _record("SIGTERM", 40, 40, 25, 143),
        _record("state file deleted (after SIGKILL)", 52, 50, 40, -9),
    ]
    final = dict(resumed_from=25)  # went back past ckpt-50: 25 checkpointed steps lost
    faults._link_resumes(interruptions, final)  # pylint: disable=protected-access
    assert [r["resumed_next"] for r in interruptions] == [25, 25, 40, 25]
    assert [r["recomputed"] for r in interruptions] == [5, 0, 0, 27]
    assert [r["lost"] for r in interruptions] == [0, 0, 0, 25]
    rows = faults._rows(interruptions, checkpoint_every=25)  # pylint: disable=protected-access
    survived = {row["fault"]: row["survived"] for row in rows}
    assert survived == {"SIGKILL": 1, "SIGINT during start-up": 1, "SIGTERM": 1,
                        "state file deleted (after SIGKILL)": 0}
    table = faults.table(rows)
    assert table.splitlines()[0] == "| fault | tries | survived | steps recomputed | data lost |"
    assert "| state file deleted (after SIGKILL) | 1 | 0 | 27 | 25 |" in table


def test_a_sigterm_that_did_not_save_its_step_did_not_survive():
    record = _record("SIGTERM", 40, 25, 25, 143)
    faults._link_resumes([record], dict(resumed_from=25))  # pylint: disable=protected-access
    assert not faults._survived(record, 25)  # pylint: disable=protected-access


def test_the_scenarios_are_planned_in_order_and_tabulated():
    names = [scenario.name for scenario in faults.scenarios()]
    assert names == ["SIGTERM during the export", "SIGKILL during the export",
                     "shared --export_dir", "config.json deleted",
                     "second trainer, then stale lock", "image replaced under --cache_dir",
                     "bad file fixed under --cache_dir"]
    rows = [dict(fault="shared --export_dir", expected="refused", observed="exit 0", ok=False)]
    assert faults.scenario_table(rows).splitlines() == [
        "| fault | expected | observed | ok |", "|---|---|---|---|",
        "| shared --export_dir | refused | exit 0 | NO |"]


def test_the_scenarios_png_decodes_to_its_one_value():
    """The cache scenarios write PNGs by hand (the tool loads no TF): check them with TF's
    decoder."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    pixels = tf.io.decode_png(faults._png(200, size=5)).numpy()  # pylint: disable=protected-access
    assert pixels.shape == (5, 5, 1) and (pixels == 200).all()


def test_one_line_is_the_single_error_or_stop_line_without_a_traceback(tmp_path):
    log = tmp_path / "log"
    log.write_text("I1204 step 3\nstopped: SIGTERM after training\n")
    assert faults.one_line(str(log)) == "stopped: SIGTERM after training"
    log.write_text("Traceback (most recent call last):\nerror: x\n")
    assert faults.one_line(str(log)) == ""
    log.write_text("error: x\nerror: y\n")
    assert faults.one_line(str(log)) == ""
