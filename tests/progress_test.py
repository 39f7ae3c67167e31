"""The progress bar: on stderr when it is a terminal or --progress=on, never otherwise; the log
lines stay, each on a line of its own; only the chief draws. (A training run with --progress=on
and a resume with auto, under a stderr that is not a terminal: train_test.py.)"""

import io
import logging
import re
import sys
import time

import pytest

from wae_tf.runtime import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _plain(text: str) -> str:
    """`text` without the bar's colours and line clearing."""
    return re.sub(r"\x1b\[[0-9;]*[mK]", "", text)


@pytest.mark.parametrize("mode, terminal, drawn", [
    ("auto", True, True), ("auto", False, False), ("on", False, True), ("off", True, False)])
def test_the_bar_is_drawn_on_a_terminal_or_when_forced(mode, terminal, drawn, monkeypatch):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert progress.shown(mode, stream) is drawn
    with progress.progress_bar(mode, 0, 2) as show:
        show(2, {"loss": 0.5})
    assert ("2/2" in stream.getvalue()) is drawn
    with progress.progress_bar(mode, 0, 2, chief=False) as show:  # other workers: never
        show(2, {"loss": 0.5})
    assert stream.getvalue().count("2/2") == drawn


def test_a_log_line_clears_the_bar_and_a_stopped_bar_ends_its_line(monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        with progress.progress_bar("auto", 10, 20) as show:  # a run resumed at step 10
            show(11, {"loss": 1.5})
            logging.getLogger("wae_tf_test").warning("a log line")
            time.sleep(0.06)  # Progbar draws at most every 0.05 s
            show(12, {"loss": 1.25})
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert progress.CLEAR_LINE + "a log line\n" in out
    assert out.endswith("\n")  # stopped at step 12 of 20: the line is ended for what follows
    last = _plain(out.rstrip("\n").split("\r")[-1])
    # Session steps 2 of 10, the time left, the time per step, the losses as they are.
    assert re.fullmatch(r" 2/10 ━+ \d+s \d+\w+/step - loss: 1\.2500", last), repr(last)
