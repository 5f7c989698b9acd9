"""Errors a user can act on. Each message names the bad value and the valid choices."""


class LpotError(Exception):
    """Base class of this package's errors."""


class ConfigError(LpotError, ValueError):
    """A configuration value is invalid (unknown name, value outside a capability, ...)."""


class DataError(LpotError, ValueError):
    """A dataloader or metric produced something unusable (no batches, NaN, ...)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by tune.py's handler: the run finishes like Ctrl-C (summary,
    best model, the resume command), with its own stop reason and exit status (143)."""


def interrupt_reason(e: BaseException) -> str:
    """The stop reason of a run or trial ended by Ctrl-C or SIGTERM."""
    return "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
