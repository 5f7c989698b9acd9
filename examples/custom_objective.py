"""A user objective: the 90th-percentile latency of single-sample inference (tail latency for an
online service), lower is better.

    python tune.py objective._target_=examples.custom_objective.TailLatency
    lpot_research.tune(..., objective=TailLatency(percentile=90))
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lpot_research.measure.objectives import Benchmark, Objective


class TailLatency(Objective):
    key, unit, name = "p90_latency_ms", "ms", "tail_latency"

    def __init__(self, percentile: float = 90.0, runs: int = 50) -> None:
        self.percentile, self.runs = percentile, runs

    def measure(self, adaptor: Any, model: Any, inputs: Any, bench: Benchmark) -> float:
        one = tuple(x[:1] for x in inputs) if isinstance(inputs, tuple) else inputs[:1]
        for _ in range(bench.warmup):
            adaptor.predict(model, one)
        times = []
        for _ in range(self.runs):
            t0 = time.perf_counter()
            adaptor.predict(model, one)
            times.append(time.perf_counter() - t0)
        return float(np.percentile(times, self.percentile) * 1e3)
