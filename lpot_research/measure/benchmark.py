"""Latency, measured so that it can be compared: the candidate interleaved with the FP32 model, until
the ratio is stable.

A trial's latency is not a fixed number of runs measured once against an FP32 time taken at the start:
machine load changes during a run (the same config measured 0.50x and 1.23x in two runs of the old
scheme). Here each timed candidate run is paired with an FP32 run right beside it; the result is the
median of the per-pair ratios, with the relative half-width of its confidence interval (order
statistics of the median, ~95%) as its spread. Measurement stops once that spread is within
`tolerance`, after at least `min_iterations` and at most `iterations` pairs, or once `max_seconds` of
timed runs are spent (a slow model on a loaded machine: 30 pairs of a 2.7 s FP32 run took 86 s for one
trial); a measurement the time bound stopped says so (`Latency.bounded`) with the spread it reached.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lpot_research.core import deadline
from lpot_research.core.errors import ConfigError


@dataclass(frozen=True)
class Benchmark:
    """How latency is measured: a fixed batch, warm-up runs, then timed runs until the median is stable
    (relative spread <= tolerance) or `iterations` runs (pairs, against FP32) have been made."""

    batch_size: int = 32
    warmup: int = 3
    iterations: int = 30
    min_iterations: int = 5
    tolerance: float = 0.03
    max_seconds: float = 20.0  # of timed runs per measurement (pairs count both), after min_iterations

    def __post_init__(self) -> None:
        checks = (("batch_size", self.batch_size, 1), ("warmup", self.warmup, 0), ("iterations", self.iterations, 1),
                  ("min_iterations", self.min_iterations, 1))
        for key, value, low in checks:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"benchmark.{key}={value!r} must be an int >= {low}")
        if not (isinstance(self.tolerance, int | float) and 0 < self.tolerance < 1):
            raise ConfigError(f"benchmark.tolerance={self.tolerance!r} must be a fraction in (0, 1), e.g. 0.03")
        m = self.max_seconds
        if isinstance(m, bool) or not (isinstance(m, int | float) and math.isfinite(m) and m > 0):
            raise ConfigError(f"benchmark.max_seconds={m!r} must be seconds > 0, e.g. 20")


@dataclass(frozen=True)
class Latency:
    latency_ms: float  # median of the candidate's runs
    spread: float  # relative half-width of the median ratio's (or time's) confidence interval
    runs: int
    fp32_ms: float | None = None  # median of the FP32 runs interleaved with it
    ratio: float | None = None  # median of candidate/FP32 per pair
    seconds: float = 0.0  # spent in timed runs
    bounded: bool = False  # max_seconds stopped it before its spread reached the tolerance

    def as_metrics(self) -> dict[str, float]:
        m = {"latency_ms": self.latency_ms, "latency_spread": self.spread, "latency_runs": float(self.runs),
             "latency_seconds": round(self.seconds, 3)}
        if self.bounded:
            m["latency_bounded"] = 1.0
        if self.ratio is not None:
            m.update(latency_ratio=self.ratio, fp32_latency_ms=float(self.fp32_ms or 0.0))
        return m


def ratio_text(ratio: float | None) -> str:
    """A latency (or size) ratio to FP32 as people read it: "0.45x", "-" when not measured."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def plus_minus(spread: float | None) -> str:
    """A measurement's spread as it follows its value (" +-4%"); nothing while it is unknown (None, or
    inf before `min_iterations` runs)."""
    return f" +-{spread:.0%}" if spread is not None and math.isfinite(spread) else ""


def median_spread(values: list[float]) -> float:
    """Relative half-width of a ~95% confidence interval of the median (order statistics)."""
    n = len(values)
    s = sorted(values)
    m = statistics.median(s)
    k = max(0, math.floor((n - 1.96 * math.sqrt(n)) / 2))
    return (s[n - 1 - k] - s[k]) / 2 / m if m > 0 else math.inf


def _timed(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def measure(run: Callable[[], Any], bench: Benchmark, reference: Callable[[], Any] | None = None) -> Latency:
    """Time `run` (one inference per call), paired with `reference` runs when given."""
    for _ in range(bench.warmup):
        run()
        if reference is not None:
            reference()
    times: list[float] = []
    refs: list[float] = []
    ratios: list[float] = []
    spread = math.inf
    bounded = False
    while len(times) < bench.iterations:
        deadline.check()
        if reference is None:
            times.append(_timed(run))
        else:  # alternate which goes first, so neither always follows the other
            first_candidate = len(times) % 2 == 0
            if first_candidate:
                times.append(_timed(run))
            refs.append(_timed(reference))
            if not first_candidate:
                times.append(_timed(run))
            ratios.append(times[-1] / refs[-1] if refs[-1] > 0 else math.inf)
        if len(times) >= bench.min_iterations:
            spread = median_spread(ratios if reference is not None else times)
            if spread <= bench.tolerance:
                break
            if sum(times) + sum(refs) >= bench.max_seconds:
                bounded = True
                break
    med = statistics.median(times) * 1e3
    spent = sum(times) + sum(refs)
    if reference is None:
        return Latency(med, spread, len(times), seconds=spent, bounded=bounded)
    return Latency(med, spread, len(times), statistics.median(refs) * 1e3, statistics.median(ratios), spent, bounded)
