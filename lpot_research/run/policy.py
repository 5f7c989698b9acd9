"""The settings a run's loop obeys: when it stops (ExitPolicy) and where its trials run (Parallel).
Defined here, below the tuner and scheduler that read them; lpot_research.config puts them in the one
settings schema."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional  # noqa: UP035 - OmegaConf reads this form

from lpot_research.core.errors import ConfigError


@dataclass(frozen=True)
class ExitPolicy:
    """timeout: seconds of wall clock, each trial included (0 = stop at the first config that meets the
    criterion); max_trials: evaluated configurations (repeats answered from history do not count)."""

    timeout: float = 0
    max_trials: int = 100

    def __post_init__(self) -> None:
        t = self.timeout
        if isinstance(t, bool) or not (isinstance(t, int | float) and math.isfinite(t) and t >= 0):
            raise ConfigError(f"exit_policy.timeout={t!r} must be seconds >= 0 (0 = stop at the first passing "
                              "config)")
        if not isinstance(self.max_trials, int) or isinstance(self.max_trials, bool) or self.max_trials < 1:
            raise ConfigError(f"exit_policy.max_trials={self.max_trials!r} must be an int >= 1")


BACKENDS = ("loky", "dask")


@dataclass
class Parallel:
    """workers: trials evaluated at once (1 = in this process, unless `isolate`); backend: loky (processes
    on this machine) or dask (a dask.distributed cluster: the one at `address`, else a local one of
    `workers` processes). Each worker runs `threads` intra-op threads; latency is measured in the tuning
    process alone. isolate: one trial at a time on a worker process of its own even with workers=1, so
    a trial that kills its process (a kernel's segfault, the OOM killer) is recorded as failed and the
    run goes on (workers > 1 are isolated anyway)."""

    workers: int = 1
    backend: str = "loky"
    address: Optional[str] = None  # noqa: UP045 - a dask scheduler, e.g. tcp://10.0.0.1:8786
    isolate: bool = False
    connect_timeout: float = 30.0  # seconds the dask scheduler at `address` has to answer

    @property
    def pooled(self) -> bool:
        """Trials run on worker processes."""
        return self.workers > 1 or self.isolate

    def __post_init__(self) -> None:
        w = self.workers
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise ConfigError(f"parallel.workers={w!r} must be an int >= 1")
        t = self.connect_timeout
        if isinstance(t, bool) or not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
            raise ConfigError(f"parallel.connect_timeout={t!r} must be seconds > 0")
        if not isinstance(self.isolate, bool):
            raise ConfigError(f"parallel.isolate={self.isolate!r} must be true or false")
        if self.backend not in BACKENDS:
            raise ConfigError(f"parallel.backend={self.backend!r} is unknown; valid choices: {list(BACKENDS)}")
        if self.address is not None and self.backend != "dask":
            raise ConfigError(f"parallel.address={self.address!r} is a dask scheduler's; it needs "
                              "parallel.backend=dask")
