"""The errors the entry points report in one line instead of a traceback (stdlib only)."""

import re


class ConfigError(ValueError):
    """A user error in the flags, the data or the workdir; the message says what to do."""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or Inf; the run stops without saving the broken state."""


class Preempted(Exception):
    """SIGTERM or SIGINT stopped the run (training saves a checkpoint first); entry points exit
    with 128 + the signal's number: 143 (SIGTERM) or 130 (SIGINT)."""

    def __init__(self, message: str, signum: int = 15):
        super().__init__(message)
        self.signum = signum


def error_summary(error: Exception, limit: int = 300) -> str:
    """An exception's message in one line: TensorFlow's op errors by their cause (the line
    before `[[{{node ...}}]]`, without "Graph execution error", stack notes, `{{function_node
    ...}}` and `[Op:...]`), others by their first line; the type's name if it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and _tf_op_error(error):
        cause = [line for line in lines if not line.startswith(("[[", "<stack traces"))
                 and not re.match(r"(Graph execution error|Detected at node)", line)]
        lines = cause[-1:] or lines
    text = re.sub(r"\{\{[^}]*\}\}|\s*\[Op:\w+\].*$", "", lines[0]) if lines else ""
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _tf_op_error(error: Exception) -> bool:
    """Whether `error` is a tf.errors.OpError (without importing TensorFlow for it)."""
    return any(c.__module__.startswith("tensorflow.") and c.__name__ == "OpError"
               for c in type(error).__mro__)
