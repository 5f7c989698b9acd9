"""Objectives: what to minimize among configurations that meet the accuracy criterion.

Every trial measures latency and size (the summary reports both); an objective picks the key that
ranks passing configurations and measures it if it is not one of those two.
"""

from __future__ import annotations

import ctypes
import gc
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Benchmark:
    """How latency is measured: a fixed batch, warm-up runs, then the median of timed runs."""

    batch_size: int = 32
    warmup: int = 5
    iterations: int = 30


class Objective:
    key: str = ""
    unit: str = ""
    name: str = ""

    def measure(self, adaptor: Any, model: Any, inputs: Any, bench: Benchmark) -> float:
        raise NotImplementedError

    def format(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.3f} {self.unit}" if self.unit == "ms" else f"{value / 1e6:.2f} MB"


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
    return max(0, _status_kb("VmHWM") - before) * 1024


OBJECTIVES: dict[str, type[Objective]] = {"performance": Performance, "modelsize": ModelSize, "footprint": Footprint}
