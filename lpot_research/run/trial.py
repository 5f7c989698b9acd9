"""One trial: quantize a configuration, evaluate it (stopping early when it cannot pass), and measure
what decides something; with the seconds each step took.

A trial's record is written as soon as its accuracy is known; a trial that meets the criterion is then
measured (`measure_recorded`: its objective ranks it), in the tuning process with nothing else running,
serial and parallel runs alike; a failing one only when a report needs it. Size is always read (it costs
a serialization).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from lpot_research.core.deadline import TrialTimeout
from lpot_research.measure.benchmark import Benchmark
from lpot_research.measure.objectives import MEASUREMENTS, Objective
from lpot_research.quant.criterion import AccuracyCriterion
from lpot_research.quant.space import TuneConfig
from lpot_research.run.evaluation import Evaluator, Outcome
from lpot_research.run.history import History, RunRecordError, TrialRecord

log = logging.getLogger("lpot_research")
# the FP32 latency measured at the start is measured again (twice at most) when its spread is wider
# than this: a busy machine made it unreliable (ratios never use it: they come from interleaved pairs)
BASELINE_SPREAD = 0.10


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


class TrialRunner:
    """Runs trials of one model: everything a trial needs, built once per job."""

    def __init__(self, adaptor: Any, model: Any, calib: Iterable[Any], example_inputs: Any, evaluator: Evaluator,
                 criterion: AccuracyCriterion, objective: Objective, bench: Benchmark, bench_inputs: Any) -> None:
        self.adaptor, self.model, self.calib, self.example_inputs = adaptor, model, calib, example_inputs
        self.evaluator, self.criterion, self.objective = evaluator, criterion, objective
        self.bench, self.bench_inputs = bench, bench_inputs
        self.baseline: dict[str, Any] = {}
        # told (trial, config id, phase) as a trial enters quantize and evaluate, so that the process's
        # death in it is known afterwards (lpot_research.run.crashes)
        self.on_phase: Callable[[int, str, str], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """To a worker process: the model in the form its adaptor sends (Adaptor.portable); the worker
        keeps its own record of phases."""
        state = dict(self.__dict__)
        state["model"] = self.adaptor.portable(self.model, self.example_inputs)
        state["on_phase"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.model = self.adaptor.restore(self.model, self.example_inputs)

    def quantize(self, cfg: TuneConfig) -> tuple[Any, dict[str, float]]:
        cal0, t0 = self.adaptor.calibration.seconds, time.perf_counter()
        qmodel = self.adaptor.quantize(self.model, cfg, self.calib, self.example_inputs)
        calibrate = self.adaptor.calibration.seconds - cal0
        return qmodel, {"calibrate_s": calibrate, "quantize_s": time.perf_counter() - t0 - calibrate}

    def run(self, cfg: TuneConfig, n: int, elapsed: float) -> tuple[TrialRecord, Any, Outcome | None]:
        """Trial `n` of `cfg`: its accuracy phase (quantize, evaluate, size). A failure of the
        configuration (it does not quantize, its metric is NaN) is recorded; the budget running out
        (TrialTimeout), Ctrl-C and the run's own record errors are not the configuration's and
        propagate."""
        t0 = time.perf_counter()
        qmodel, outcome, metrics, costs, err = None, None, {}, {}, None
        base = self.baseline["accuracy"]
        try:
            self._phase(n, cfg, "quantize")
            qmodel, costs = self.quantize(cfg)
            self._phase(n, cfg, "evaluate")
            t1 = time.perf_counter()
            outcome = self.evaluator.evaluate(qmodel, f"trial {n} model", self.criterion.threshold(base),
                                              self.criterion.hib)
            costs["evaluate_s"] = time.perf_counter() - t1
            metrics["size_bytes"] = float(self.adaptor.size_bytes(qmodel))
        except (TrialTimeout, KeyboardInterrupt, SystemExit, RunRecordError):
            raise
        except Exception as e:  # one configuration failing must not end the run
            err = one_line(e)
            log.warning("trial %d failed (%s): %s", n, cfg.note or cfg.id, err)
            log.debug("trial %d traceback:\n%s", n, traceback.format_exc())
            qmodel, outcome = None, None
        ok = err is None and outcome is not None
        rec = TrialRecord(
            trial=n, config_id=cfg.id, config=cfg.to_dict(), status="ok" if ok else "failed",
            accuracy=outcome.accuracy if ok else None,
            passed=bool(ok and not outcome.rejected and self.criterion.passes(outcome.accuracy, base)),
            rank_accuracy=outcome.rank_accuracy if ok else None, rejected=bool(ok and outcome.rejected),
            accuracy_bound=outcome.bound if ok else None, samples=outcome.samples if ok else None,
            metrics=metrics, costs=costs, note=cfg.note, error=err,
        )
        rec.objective = self.objective_value(rec)
        rec.duration_s = time.perf_counter() - t0
        rec.elapsed_s = elapsed + rec.duration_s
        return rec, qmodel, outcome

    def _phase(self, n: int, cfg: TuneConfig, phase: str) -> None:
        if self.on_phase is not None:
            self.on_phase(n, cfg.id, phase)

    def unmeasured(self, rec: TrialRecord) -> bool:
        """A passing trial that lacks a measurement it gets (`needs`)."""
        return rec.passed and any(k not in rec.metrics for k in self.needs())

    def needs(self) -> tuple[str, ...]:
        """The measurements a passing trial gets: latency always (every report shows it), plus the
        objective's."""
        return tuple(dict.fromkeys(("latency_ms", *self.objective.needs())))

    def measure(self, rec: TrialRecord, qmodel: Any, keys: tuple[str, ...] | None = None) -> dict[str, float]:
        """Measure what `rec` still lacks of `keys` (default: `needs()`); returns the new values."""
        t0, c0 = time.perf_counter(), self.compile_seconds()
        new: dict[str, float] = {}
        for key in keys or self.needs():
            if key in rec.metrics:
                continue
            if key == "latency_ms":
                lat = self.adaptor.measure_latency(qmodel, self.bench_inputs, self.bench, reference=self.model)
                new.update(lat.as_metrics())
                if lat.bounded:
                    log.info("trial %d latency: %d pairs in %.1f s, stopped at benchmark.max_seconds=%g with "
                             "the ratio's spread at +-%.0f%% (tolerance %.0f%%)", rec.trial, lat.runs, lat.seconds,
                             self.bench.max_seconds, 100 * lat.spread, 100 * self.bench.tolerance)
            elif key == "size_bytes":
                new[key] = float(self.adaptor.size_bytes(qmodel))
            else:
                measurer = self.objective if key == self.objective.key else MEASUREMENTS[key]()
                new[key] = float(measurer.measure(self.adaptor, qmodel, self.bench_inputs, self.bench))
        rec.metrics.update(new)
        compiled = self.compile_seconds() - c0
        rec.costs["benchmark_s"] = rec.costs.get("benchmark_s", 0.0) + time.perf_counter() - t0 - compiled
        if compiled:
            rec.costs["compile_s"] = rec.costs.get("compile_s", 0.0) + compiled
        return new

    def compile_seconds(self) -> float:
        """Seconds the adaptor has spent compiling models for timing (not latency, counted apart)."""
        return float(getattr(self.adaptor, "compile_seconds", 0.0))

    def rebuild(self, rec: TrialRecord) -> Any:
        """The quantized model of a recorded trial (quantization is deterministic: the same model); its
        seconds are added to the trial's costs."""
        qmodel, costs = self.quantize(TuneConfig.from_dict(rec.config))
        for k, v in costs.items():
            rec.costs[k] = rec.costs.get(k, 0.0) + v
        return qmodel

    def measure_recorded(self, history: History, rec: TrialRecord, qmodel: Any, keys: tuple[str, ...] | None = None,
                         **completed: Any) -> None:
        """`measure` a trial already on record, update its objective and write both to `history`
        (`completed`: e.g. the whole-set accuracy and samples of a trial whose evaluation stopped early)."""
        new = self.measure(rec, qmodel, keys)
        rec.objective = self.objective_value(rec)
        history.measure(rec, **completed, metrics=new, objective=rec.objective, costs=dict(rec.costs))

    def objective_value(self, rec: TrialRecord) -> float | None:
        """The objective of a trial, when everything it reads is measured."""
        if not rec.ok or any(k not in rec.metrics for k in self.objective.needs()):
            return None
        acc = rec.accuracy if rec.accuracy is not None else rec.rank_accuracy
        return float(self.objective.value(rec.metrics, acc, self.baseline, self.criterion.hib))

    def measure_baseline(self) -> dict[str, Any]:
        """The FP32 model's accuracy (scores kept for the evaluation order) and measurements."""
        t0 = time.perf_counter()
        out = self.evaluator.evaluate(self.model, "FP32 model")
        t1, c1 = time.perf_counter(), self.compile_seconds()
        lat = self.adaptor.measure_latency(self.model, self.bench_inputs, self.bench)
        for _ in range(2):
            if lat.spread <= BASELINE_SPREAD:
                break
            log.info("FP32 latency %.3f ms varied +-%.0f%% over %d runs: measuring it again", lat.latency_ms,
                     100 * lat.spread, lat.runs)
            again = self.adaptor.measure_latency(self.model, self.bench_inputs, self.bench)
            lat = min(lat, again, key=lambda x: x.spread)
        if lat.spread > BASELINE_SPREAD:
            log.warning("the FP32 latency is unstable on this machine (+-%.0f%%, is it busy?): the absolute "
                        "latencies of this run are unreliable; every ratio to FP32 is measured in interleaved "
                        "pairs, each with its own spread", 100 * lat.spread)
        b: dict[str, Any] = {"accuracy": out.accuracy, "latency_ms": lat.latency_ms, "latency_spread": lat.spread,
                             "size_bytes": float(self.adaptor.size_bytes(self.model)), "samples": out.samples}
        for key in self.objective.needs():
            if key not in b:
                measurer = self.objective if key == self.objective.key else MEASUREMENTS[key]()
                b[key] = float(measurer.measure(self.adaptor, self.model, self.bench_inputs, self.bench))
        b[self.objective.key] = float(self.objective.value(b, out.accuracy, b, self.criterion.hib))
        compiled = self.compile_seconds() - c1
        b["costs"] = {"evaluate_s": t1 - t0, "benchmark_s": time.perf_counter() - t1 - compiled, "compile_s": compiled}
        b["duration_s"] = time.perf_counter() - t0
        self.baseline = b
        return {**b, "_scores": out.scores}
