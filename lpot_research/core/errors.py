"""Errors a user can act on. Each message names the bad value and the valid choices."""


class LpotError(Exception):
    """Base class of this package's errors."""


class ConfigError(LpotError, ValueError):
    """A configuration value is invalid (unknown name, value outside a capability, ...)."""


class DataError(LpotError, ValueError):
    """A dataloader or metric produced something unusable (no batches, NaN, ...)."""
