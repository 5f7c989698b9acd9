"""Objectives: what to minimize among configurations that meet the accuracy criterion.

Every trial measures latency and size (the summary reports both). An objective names the key that
ranks passing configurations (`key`, lower is better) and measures it when it is not one of those
two (`measure`); `value` may instead combine the measurements (see `Weighted`). A user objective
subclasses `Objective` (examples/custom_objective.py) and is picked with `objective._target_=...`.
"""

from __future__ import annotations

import ctypes
import gc
import re
from collections.abc import Callable
from typing import Any

from lpot_research.core.errors import ConfigError
from lpot_research.measure.benchmark import Benchmark  # what `measure` receives (user objectives import it from here)


class Objective:
    key: str = ""  # the measurement this objective minimizes
    unit: str = ""  # "ms", "B", or anything else (printed as a plain number)
    name: str = ""

    def measure(self, adaptor: Any, model: Any, inputs: Any, bench: Benchmark) -> float:
        """Measure `key` on `model` (called only when `key` is not already measured: latency_ms and
        size_bytes always are)."""
        raise NotImplementedError

    def needs(self) -> tuple[str, ...]:
        """The measurements `value` reads (each measured by this objective's `measure` when it is
        `key`, else by the built-in objective of that key)."""
        return (self.key,)

    def value(self, metrics: dict[str, float], accuracy: float, baseline: dict[str, Any],
              higher_is_better: bool) -> float:
        """The number to minimize, from a model's measurements and accuracy (the FP32 baseline's
        are given for normalizing). Default: the measurement `key`."""
        return metrics[self.key]

    def format(self, value: float | None) -> str:
        if value is None:
            return "-"
        if self.unit == "ms":
            return f"{value:.3f} ms"
        if self.unit == "B":
            return f"{value / 1e6:.2f} MB"
        return f"{value:.4g}{' ' + self.unit if self.unit else ''}"


class Performance(Objective):
    """Latency of one inference on the benchmark batch (median after warm-up)."""

    key, unit, name = "latency_ms", "ms", "performance"

    def measure(self, adaptor: Any, model: Any, inputs: Any, bench: Benchmark) -> float:
        return adaptor.latency_ms(model, inputs, bench.warmup, bench.iterations)


class ModelSize(Objective):
    """Bytes of the serialized model."""

    key, unit, name = "size_bytes", "B", "modelsize"

    def measure(self, adaptor: Any, model: Any, inputs: Any, bench: Benchmark) -> float:
        return float(adaptor.size_bytes(model))


class Footprint(Objective):
    """Peak resident memory (RSS high-water mark) of materializing the model and running it once."""

    key, unit, name = "footprint_bytes", "B", "footprint"

    def measure(self, adaptor: Any, model: Any, inputs: Any, bench: Benchmark) -> float:
        return float(adaptor.footprint_bytes(model, inputs))


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.M)
    if not m:
        raise RuntimeError(f"/proc/self/status has no {field_name}")
    return int(m.group(1))


def peak_rss_increase(fn: Callable[[], Any]) -> int:
    """Bytes by which the process's peak RSS rises above its current RSS while `fn` runs.

    Linux: freed heap is returned to the OS first (malloc_trim), then the high-water mark is reset
    through /proc/self/clear_refs, so the reading is this call's own peak, not an earlier one.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) * 1024  # >= 0: the mark never falls below the RSS it was reset to


class Weighted(Objective):
    """Several objectives at once: a weighted sum of latency, size and footprint, each relative to
    FP32 (1.0 = as FP32), plus the relative accuracy loss against FP32. Lower is better; among
    passing configs the tuner keeps the lowest. E.g. weights {latency: 1, size: 0.5, accuracy: 10}
    trades 1% of accuracy for 10% of latency."""

    key, unit, name = "weighted_score", "", "weighted"
    MEASURES = {"latency": "latency_ms", "size": "size_bytes", "footprint": "footprint_bytes"}

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = dict(weights if weights is not None else {"latency": 1.0})
        valid = [*self.MEASURES, "accuracy"]
        for k, w in self.weights.items():
            if k not in valid:
                raise ConfigError(f"objective weight {k!r} is unknown; valid weights: {valid}")
            if not isinstance(w, int | float) or isinstance(w, bool) or w < 0:
                raise ConfigError(f"objective weight {k}={w!r} must be a number >= 0")
        if not any(self.weights.values()):
            raise ConfigError(f"objective weights {self.weights} are all zero; give at least one a weight > 0")

    def needs(self) -> tuple[str, ...]:
        return tuple(key for k, key in self.MEASURES.items() if self.weights.get(k))

    def value(self, metrics: dict[str, float], accuracy: float, baseline: dict[str, Any],
              higher_is_better: bool) -> float:
        score = 0.0
        for k, key in self.MEASURES.items():
            if self.weights.get(k):
                score += self.weights[k] * metrics[key] / baseline[key]
        if self.weights.get("accuracy"):
            base = baseline["accuracy"]
            loss = (base - accuracy) if higher_is_better else (accuracy - base)
            score += self.weights["accuracy"] * loss / (abs(base) or 1.0)
        return score


MEASUREMENTS: dict[str, type[Objective]] = {"latency_ms": Performance, "size_bytes": ModelSize,
                                            "footprint_bytes": Footprint}
OBJECTIVES: dict[str, type[Objective]] = {"performance": Performance, "modelsize": ModelSize, "footprint": Footprint,
                                          "weighted": Weighted}
