"""The errors the entry points report in one line instead of a traceback (stdlib only)."""


class ConfigError(ValueError):
    """A user error in the flags, the data or the workdir; the message says what to do."""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or Inf; the run stops without saving the broken state."""


class Preempted(Exception):
    """SIGTERM stopped training after saving a checkpoint; entry points exit with code 143."""
