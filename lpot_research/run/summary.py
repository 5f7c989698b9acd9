"""The summary of a run, typed: what `TuneResult.summary` holds and what summary.json stores.

`Summary.to_dict()` is summary.json's content (its keys in their order); `Summary.from_dict()` reads a
summary.json back. The open-ended parts stay mappings: the run's names (strategy, framework, model), the
baseline's measurements, the CPU, stopped trials as the history records them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _plain(obj: Any) -> dict[str, Any]:
    """A flat dataclass as a dict in its field order (values are copied, not converted)."""
    return {k: getattr(obj, k) for k in _fields(type(obj))}


# keys added to summary.json after its first typed release (0e2fb4b's runs lack them) and what they read as
_ADDED_LATER: dict[str, Any] = {"fp32_latency_ms": None, "analysis_s": 0.0, "compile_s": 0.0, "other_s": None,
                                "workers": 1}


def _take(cls: type, d: dict[str, Any]) -> Any:
    missing = [k for k in _fields(cls) if k not in d and k not in _ADDED_LATER]
    if missing:
        raise ValueError(f"summary.json's {cls.__name__} lacks {missing}: not a summary this version reads")
    return cls(**{k: d.get(k, _ADDED_LATER.get(k)) for k in _fields(cls)})


class _Flat:
    """A flat part of the summary: a dict in its field order, and back."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return _take(cls, d)


@dataclass
class CriterionSummary(_Flat):
    kind: str
    tolerance: float
    higher_is_better: bool
    threshold: float


@dataclass
class BestSummary(_Flat):
    """The best trial (the best effort when none passed)."""

    trial: int
    config_id: str
    accuracy: float | None
    latency_ms: float | None
    latency_spread: float | None
    fp32_latency_ms: float | None  # the FP32 median of the same interleaved pairs as latency_ratio
    size_bytes: float | None
    objective: float | None
    latency_ratio: float | None
    size_ratio: float | None
    quantized_ops: int
    fallback_ops: list[str]
    fallback_dtypes: dict[str, str]
    unquantizable_ops: list[str]
    passed: bool
    model_path: str | None
    within_noise: list[int]  # passing trials as fast as the best within the measurement spread
    recipes: dict[str, Any] = field(default_factory=dict)  # the recipes the best applies (quantization.recipes)


@dataclass
class Costs(_Flat):
    """Seconds per step over the whole run (worker seconds with parallel workers, then `other_s` is None)."""

    calibrate_s: float
    quantize_s: float
    evaluate_s: float
    benchmark_s: float
    analysis_s: float
    compile_s: float
    other_s: float | None
    workers: int
    samples_evaluated: int | None
    full_evaluations: int
    rejected_early: int
    benchmarked: int


@dataclass
class EvaluationSummary(_Flat):
    kind: str
    samples: int | None
    ranking_samples: int | None
    early_stop: bool


@dataclass
class ParetoPoint(_Flat):
    trial: int
    accuracy: float | None
    objective: float | None
    note: str


@dataclass
class Summary:
    names: dict[str, str]  # strategy, framework, model: the first keys of summary.json
    objective: str
    criterion: CriterionSummary
    baseline: dict[str, Any]  # accuracy, latency_ms, latency_spread, size_bytes (and the objective's key)
    best: BestSummary | None
    trials: int
    failed_trials: int
    met_criterion: bool
    faster_than_fp32: bool
    stop_reason: str
    stopped_trials: list[dict[str, Any]]
    elapsed_s: float
    costs: Costs
    evaluation: EvaluationSummary
    cpu: dict[str, Any]
    cpu_notes: list[str]
    space_size: int
    pareto_front: list[ParetoPoint] = field(default_factory=list)
    run_dir: str = ""
    # the all-INT8 model's latency beside a passing best: {config_id, trial (None: measured apart),
    # latency_ms, latency_ratio, latency_spread, fp32_latency_ms, fallbacks, fallback_cost (the best's
    # latency over it, minus 1: what the fallbacks give back)}
    all_int8: dict[str, Any] | None = None
    # per-op milliseconds of one benchmark batch in the FP32 and the all-INT8 model, from the framework's
    # profiler (lpot_research.measure.op_costs.OpCosts.to_dict()); None where none is wired
    op_costs: dict[str, Any] | None = None

    @property
    def strategy(self) -> str:
        return self.names["strategy"]

    @property
    def framework(self) -> str:
        return self.names["framework"]

    @property
    def model(self) -> str:
        return self.names["model"]

    def to_dict(self) -> dict[str, Any]:
        """summary.json's content."""
        d: dict[str, Any] = dict(self.names)
        for k in _fields(Summary)[1:]:
            v = getattr(self, k)
            if k == "pareto_front":
                v = [p.to_dict() for p in v]
            elif dataclasses.is_dataclass(v):
                v = v.to_dict()  # type: ignore[union-attr]
            d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        """A summary.json read back."""
        rest = set(_fields(cls)) - {"names"}
        return cls(
            names={k: v for k, v in d.items() if k not in rest},
            objective=d["objective"],
            criterion=CriterionSummary.from_dict(d["criterion"]),
            baseline=dict(d["baseline"]),
            best=BestSummary.from_dict(d["best"]) if d.get("best") else None,
            trials=d["trials"], failed_trials=d["failed_trials"], met_criterion=d["met_criterion"],
            faster_than_fp32=d["faster_than_fp32"], stop_reason=d["stop_reason"],
            stopped_trials=list(d["stopped_trials"]), elapsed_s=d["elapsed_s"],
            costs=Costs.from_dict(d["costs"]), evaluation=EvaluationSummary.from_dict(d["evaluation"]),
            cpu=dict(d["cpu"]), cpu_notes=list(d["cpu_notes"]), space_size=d["space_size"],
            pareto_front=[ParetoPoint.from_dict(p) for p in d["pareto_front"]], run_dir=d["run_dir"],
            all_int8=d.get("all_int8"), op_costs=d.get("op_costs"),  # (added later: older summaries lack them)
        )
