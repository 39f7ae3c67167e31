"""The errors the entry points report in one line instead of a traceback (stdlib only)."""


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
