"""The training loop's one-line progress bar with the time left (keras.utils.Progbar) on stderr."""

import contextlib
import io
import logging
import sys

import keras
from absl import logging as absl_logging

CLEAR_LINE = "\r\x1b[K"  # back to the line's start, erase it


def shown(mode: str, stream) -> bool:
    """Whether --progress=`mode` draws on `stream`: on, off, or auto when it is a terminal (not in
    CI or a log file)."""
    if mode == "auto":
        return bool(getattr(stream, "isatty", None) and stream.isatty())
    return mode == "on"


class _Bar:
    """A Progbar over the session's steps (a resumed run's from where it resumed) on stderr.

    Progbar writes to stdout; its text goes to stderr, where the log lines are. A log line first
    clears the bar's line, and the next update draws the bar again below it.
    """

    def __init__(self, start: int, total: int):
        self._start = start
        # No stateless metrics: the losses are shown as they are, not averaged over the steps.
        self._bar = keras.utils.Progbar(total - start, stateless_metrics=())
        self._on_line = False  # the bar's text is on the terminal's current line

    def update(self, step: int, losses: dict) -> None:
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            self._bar.update(step - self._start, list(losses.items()))
        if text.getvalue():  # Progbar draws at most every 0.05 s, and always the last step
            sys.stderr.write(text.getvalue())
            sys.stderr.flush()
            self._on_line = not text.getvalue().endswith("\n")

    def clear(self, record=None) -> bool:
        """A logging filter: erases the bar's line before a log line; lets every record through."""
        del record
        if self._on_line:
            sys.stderr.write(CLEAR_LINE)
            self._on_line = False
        return True

    def close(self) -> None:
        """Ends a bar left mid-line (a stop or an error before the last step)."""
        if self._on_line:
            sys.stderr.write("\n")
            self._on_line = False


@contextlib.contextmanager
def progress_bar(mode: str, start: int, total: int, chief: bool = True):
    """Yields update(step, losses), which draws the bar on the chief when `shown(mode, stderr)`
    and does nothing otherwise. `losses` are floats the caller already has: drawing adds no
    device sync."""
    if not (chief and shown(mode, sys.stderr)) or total <= start:
        yield lambda step, losses: None
        return
    bar = _Bar(start, total)
    handlers = set(logging.getLogger().handlers) | {absl_logging.get_absl_handler()}
    for handler in handlers:
        handler.addFilter(bar.clear)
    try:
        yield bar.update
    finally:
        for handler in handlers:
            handler.removeFilter(bar.clear)
        bar.close()
