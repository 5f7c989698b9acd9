"""The tuning loop: FP32 baseline once, then strategy proposals until the exit policy says stop.

Every finished trial is appended to history.jsonl before the next one starts; a resumed run replays
the strategy against those records, so no finished trial is evaluated twice and the same seed gives
the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpot_research.adaptors.base import Adaptor
from lpot_research.cpu import cpu_info, cpu_summary
from lpot_research.criterion import AccuracyCriterion
from lpot_research.errors import ConfigError, DataError, LpotError
from lpot_research.history import History, TrialRecord, metric_ratio
from lpot_research.objectives import MEASUREMENTS, Benchmark, Objective
from lpot_research.space import OpChoice, TuneConfig, TuningSpace, build_space
from lpot_research.strategies.base import Result, Strategy, StrategyContext, select_best
from lpot_research.tracking import TensorBoardDump, Tracker, trial_row

log = logging.getLogger("lpot_research")

MAX_CONSECUTIVE_REPEATS = 10_000  # a strategy re-proposing only evaluated configs this long is stuck


@dataclass(frozen=True)
class ExitPolicy:
    """timeout: seconds of wall clock (0 = stop at the first config that meets the criterion);
    max_trials: evaluated configurations (repeats answered from history do not count)."""

    timeout: float = 0
    max_trials: int = 100

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout, int | float) and math.isfinite(self.timeout) and self.timeout >= 0):
            raise ConfigError(f"exit_policy.timeout={self.timeout!r} must be seconds >= 0 (0 = first passing config)")
        if not isinstance(self.max_trials, int) or isinstance(self.max_trials, bool) or self.max_trials < 1:
            raise ConfigError(f"exit_policy.max_trials={self.max_trials!r} must be an int >= 1")


@dataclass
class QuantizationSettings:
    approach: str = "post_training_static_quant"
    sampling_size: int | list[int] = 100
    model_wise: dict[str, Any] = field(default_factory=dict)
    op_wise: dict[str, Any] = field(default_factory=dict)
    qat: dict[str, Any] = field(default_factory=dict)  # quant_aware_training: the configured loop's settings
    calib_dataloader: dict[str, Any] | None = None  # a YAML-described calibration dataloader (data.build_dataloader)

    @classmethod
    def from_mapping(cls, q: dict[str, Any] | None) -> QuantizationSettings:
        q = dict(q or {})
        valid = ("approach", "calibration", "model_wise", "op_wise", "qat")
        for k in q:
            if k not in valid:
                raise ConfigError(f"quantization.{k} is not a known key; valid keys: {list(valid)}")
        calib = dict(q.get("calibration") or {})
        for k in calib:
            if k not in ("sampling_size", "dataloader"):
                raise ConfigError(f"quantization.calibration.{k} is not a known key; "
                                  "valid keys: ['sampling_size', 'dataloader']")
        return cls(
            approach=q.get("approach", cls.approach),
            sampling_size=calib.get("sampling_size", 100),
            model_wise=q.get("model_wise") or {},
            op_wise=q.get("op_wise") or {},
            qat=dict(q.get("qat") or {}),
            calib_dataloader=dict(calib["dataloader"]) if calib.get("dataloader") else None,
        )


@dataclass
class TuneResult:
    summary: dict[str, Any]
    best_config: TuneConfig | None
    model: Any  # the best quantized model (or the FP32 model when no trial succeeded)
    output_dir: Path
    space: TuningSpace

    @property
    def met_criterion(self) -> bool:
        return bool(self.summary["met_criterion"])


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


class Tuner:
    def __init__(
        self,
        *,
        adaptor: Adaptor,
        strategy: Strategy,
        model: Any,
        calib_dataloader: Iterable[Any],
        evaluate: Callable[[Any], float],
        criterion: AccuracyCriterion,
        objective: Objective,
        exit_policy: ExitPolicy,
        quantization: QuantizationSettings,
        bench: Benchmark,
        bench_inputs: Any,
        example_inputs: Any,
        output_dir: Path,
        run_key: str,
        names: dict[str, str],
        tracker: Tracker | None = None,
        tensorboard: bool = False,
        train_func: Callable[[Any], Any] | None = None,
    ) -> None:
        self.adaptor = adaptor
        self.strategy = strategy
        self.model = model
        self.calib = calib_dataloader
        self.evaluate = evaluate
        self.criterion = criterion
        self.objective = objective
        self.exit = exit_policy
        self.q = quantization
        self.bench = bench
        self.bench_inputs = bench_inputs
        self.example_inputs = example_inputs
        self.out = Path(output_dir)
        self.names = names
        self.tracker = tracker or Tracker()
        self.tensorboard = tensorboard
        self.train_func = train_func
        self._tb: TensorBoardDump | None = None
        self.history = History(self.out, run_key)
        self._best_model: tuple[str, Any] | None = None  # (config_id, model) of the best so far
        self._best: TrialRecord | None = None
        self._op_error_cache: dict[str, dict[str, float]] = {}
        self._probes: dict[int, Any] = {}  # sampling size -> the calibration batch per-op outputs are read on

    # ---------------------------------------------------------------- measurement
    def _measure(self, model: Any) -> dict[str, float]:
        m = {
            "latency_ms": self.adaptor.latency_ms(model, self.bench_inputs, self.bench.warmup, self.bench.iterations),
            "size_bytes": float(self.adaptor.size_bytes(model)),
        }
        for key in self.objective.needs():
            if key not in m:
                measurer = self.objective if key == self.objective.key else MEASUREMENTS[key]()
                m[key] = float(measurer.measure(self.adaptor, model, self.bench_inputs, self.bench))
        return m

    def _objective(self, metrics: dict[str, float], accuracy: float, baseline: dict[str, Any]) -> float:
        return float(self.objective.value(metrics, accuracy, baseline, self.criterion.hib))

    def _accuracy(self, model: Any, what: str) -> float:
        acc = self.evaluate(model)
        try:
            acc = float(acc)
        except (TypeError, ValueError):
            raise DataError(f"the evaluation of the {what} returned {acc!r}, not a number") from None
        if not math.isfinite(acc):
            raise DataError(f"the evaluation of the {what} returned {acc}; the metric must give a finite number")
        return acc

    def _baseline(self) -> dict[str, Any]:
        if self.history.baseline is not None:
            b = self.history.baseline
            log.info("resumed: FP32 baseline from history: accuracy %.4f, latency %.3f ms", b["accuracy"],
                     b["latency_ms"])
            return b
        t0 = time.perf_counter()
        acc = self._accuracy(self.model, "FP32 model")
        b = {"accuracy": acc, **self._measure(self.model)}
        b[self.objective.key] = self._objective(b, acc, b)
        b["duration_s"] = time.perf_counter() - t0
        self.history.set_baseline(b)
        log.info("FP32 baseline: accuracy %.4f | latency %.3f ms (batch %d) | size %.2f MB | %.1fs",
                 acc, b["latency_ms"], self.bench.batch_size, b["size_bytes"] / 1e6, b["duration_s"])
        return b

    def _trial(self, cfg: TuneConfig, n: int, elapsed0: float, t_start: float) -> tuple[TrialRecord, Any]:
        t0 = time.perf_counter()
        qmodel, acc, metrics, err = None, None, {}, None
        try:
            qmodel = self.adaptor.quantize(self.model, cfg, self.calib, self.example_inputs)
            acc = self._accuracy(qmodel, f"trial {n} model")
            metrics = self._measure(qmodel)
            metrics[self.objective.key] = self._objective(metrics, acc, self.baseline)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # one configuration failing must not end the run
            err = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("trial %d failed (%s): %s", n, cfg.note or cfg.id, err)
            log.debug("trial %d traceback:\n%s", n, traceback.format_exc())
            qmodel = None
        rec = TrialRecord(
            trial=n,
            config_id=cfg.id,
            config=cfg.to_dict(),
            status="ok" if err is None else "failed",
            accuracy=acc,
            objective=metrics.get(self.objective.key),
            passed=err is None and self.criterion.passes(acc, self.baseline["accuracy"]),
            metrics=metrics,
            note=cfg.note,
            error=err,
            duration_s=time.perf_counter() - t0,
            elapsed_s=elapsed0 + time.perf_counter() - t_start,
        )
        return rec, qmodel

    def _sampling_sizes(self) -> Any:
        """The sampling sizes worth trying: one for dynamic quantization (it does not calibrate), and
        none beyond what the calibration data holds (more would repeat the same model)."""
        sizes = self.q.sampling_size if isinstance(self.q.sampling_size, list | tuple) else [self.q.sampling_size]
        if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            return self.q.sampling_size  # build_space reports the bad value
        if self.q.approach == "post_training_dynamic_quant":
            if len(sizes) > 1:
                log.info("dynamic quantization does not calibrate: sampling_size %s reduced to %d", sizes, sizes[0])
            return [sizes[0]]
        available = self.adaptor.count_samples(self.calib, max(sizes))
        if available < max(sizes):
            clamped = list(dict.fromkeys(min(s, available) for s in sizes))
            log.warning("the calibration dataloader holds %d sample(s): sampling_size %s becomes %s", available,
                        sizes, clamped)
            return clamped
        return sizes

    def _probe(self, sampling_size: int) -> Any:
        """The fixed calibration batch (at most 32 samples) per-op outputs are compared on."""
        if sampling_size not in self._probes:
            self._probes[sampling_size] = self.adaptor.take_inputs(self.calib, min(sampling_size, 32), "calibration")
        return self._probes[sampling_size]

    def _fp32_build(self, cfg: TuneConfig) -> Any:
        """`cfg`'s graph with every op in FP32: the reference adaptors define for inspection (the same
        rewrites, e.g. fusions, with no quantization)."""
        return self.adaptor.quantize(self.model, cfg.with_ops({n: OpChoice("fp32") for n, _ in cfg.ops}),
                                     self.calib, self.example_inputs)

    def _op_errors(self, cfg: TuneConfig) -> dict[str, float]:
        """Normalized MSE (mse / mean square of the reference) of each quantized op's output in `cfg`
        against the same op in an all-FP32 build of the same graph, on a fixed calibration batch."""
        if cfg.id in self._op_error_cache:
            return self._op_error_cache[cfg.id]
        t0 = time.perf_counter()
        names = [n for n, c in cfg.ops if c.quantized]
        try:
            inputs = self._probe(cfg.sampling_size)
            reference = self._fp32_build(cfg)
            quantized = self.adaptor.quantize(self.model, cfg, self.calib, self.example_inputs)
            ref = self.adaptor.inspect(reference, inputs, names)
            got = self.adaptor.inspect(quantized, inputs, names)
        except Exception as e:  # e.g. the config does not quantize: no ranking rather than no run
            log.warning("per-op output inspection failed (%s: %s); falling back in model order", type(e).__name__, e)
            self._op_error_cache[cfg.id] = {}
            return {}
        errors = {}
        for n in names:
            a, b = np.asarray(ref[n], dtype=np.float64), np.asarray(got[n], dtype=np.float64)
            errors[n] = float(np.mean((a - b) ** 2) / (np.mean(a**2) + 1e-12))
        self._op_error_cache[cfg.id] = errors
        top = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
        log.info("per-op output error vs FP32 (%.1f s), largest: %s", time.perf_counter() - t0,
                 ", ".join(f"{n} {e:.2e}" for n, e in top))
        return errors

    def _dump_tensors(self, space: TuningSpace, step: int, model: Any, accuracy: float | None) -> None:
        """TensorBoard histograms of every op's output; `model` None = the FP32 reference (the
        all-FP32 build of the graph, as the adaptors define it for inspection)."""
        assert self._tb is not None
        try:
            inputs = self._probe(space.sampling_sizes[0])
            if model is None:
                model = self._fp32_build(space.model_wise_configs()[0])
            outputs = self.adaptor.inspect(model, inputs, space.op_names)
        except Exception as e:  # a debugging aid must not end the run
            log.warning("tensorboard: per-op inspection failed at step %d (%s: %s)", step, type(e).__name__, e)
            return
        self._tb.add(step, outputs, accuracy)

    # ---------------------------------------------------------------- results
    def _result(self, rec: TrialRecord) -> Result:
        return Result(TuneConfig.from_dict(rec.config, rec.note), rec.ok, rec.accuracy, rec.objective, rec.passed,
                      rec.trial)

    def _best_record(self) -> TrialRecord | None:
        return self._best_of(self.history.trials)

    def _best_of(self, trials: list[TrialRecord]) -> TrialRecord | None:
        by_trial = {r.trial: r for r in trials}
        best = select_best((self._result(r) for r in trials), self.criterion.hib)
        return by_trial[best.trial] if best else None

    def _better(self, best: TrialRecord | None, rec: TrialRecord) -> TrialRecord | None:
        """The best so far after `rec` (the ranking is a total order, so best-of-two carries over)."""
        return self._best_of([rec] if best is None else [best, rec])

    def _ratio(self, rec: TrialRecord | None, key: str) -> float | None:
        return metric_ratio(rec, self.baseline, key)

    def _progress(self, rec: TrialRecord, what: str) -> None:
        base = self.baseline["accuracy"]
        best = self._best
        if rec.ok:
            delta = (rec.accuracy - base) / abs(base) if base else float("nan")
            body = (f"acc {rec.accuracy:.4f} ({delta:+.2%}) {'PASS' if rec.passed else 'fail'} | "
                    f"{self.objective.format(rec.objective)} | "
                    f"latency {_fmt_ratio(self._ratio(rec, 'latency_ms'))} fp32")
        else:
            body = f"FAILED: {rec.error}"
        best_s = (f"best #{best.trial} acc {best.accuracy:.4f} {self.objective.format(best.objective)}"
                  f"{'' if best.passed else ' (not passing)'}") if best else "best -"
        log.info("[%d/%d] %s | %s | %s | %.1fs", rec.trial, self.exit.max_trials, what, body, best_s, rec.duration_s)

    def _pareto(self) -> list[TrialRecord]:
        ok = [r for r in self.history.trials if r.ok and r.objective is not None]
        hib = self.criterion.hib

        def dominates(a: TrialRecord, b: TrialRecord) -> bool:
            acc_ge = a.accuracy >= b.accuracy if hib else a.accuracy <= b.accuracy
            acc_gt = a.accuracy > b.accuracy if hib else a.accuracy < b.accuracy
            return acc_ge and a.objective <= b.objective and (acc_gt or a.objective < b.objective)

        front = [r for r in ok if not any(dominates(o, r) for o in ok)]
        uniq: dict[tuple[float, float], TrialRecord] = {}
        for r in front:
            uniq.setdefault((r.accuracy, r.objective), r)
        return sorted(uniq.values(), key=lambda r: r.objective)

    # ---------------------------------------------------------------- main loop
    def run(self) -> TuneResult:
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = bool(self.history.trials) or self.history.baseline is not None
        if resumed:
            log.info("resuming %s: %d finished trial(s) on record", self.out, len(self.history.trials))
        self.adaptor.check_approach(self.q.approach)
        log.info("CPU: %s | %s: %s", cpu_info().describe(), self.adaptor.name,
                 "; ".join(self.adaptor.cpu_notes()) or "nothing depends on the CPU class")
        if self.q.approach == "quant_aware_training":
            self.adaptor.set_training(self.train_func, self.q.qat)
        caps = self.adaptor.capabilities(self.model, self.q.approach, self.example_inputs)
        space = build_space(caps, self.q.approach, self._sampling_sizes(), self.q.model_wise, self.q.op_wise)
        log.info("tuning space: %d op(s), %d configuration(s) (%s); strategy %s, objective %s, criterion %s",
                 len(space.op_names), space.size, self.q.approach, self.strategy.name, self.objective.name,
                 self.criterion.describe())
        log.debug("ops and options: %s", {n: [o.short() for o in opts] for n, opts in space.options})
        self.baseline = self._baseline()
        self.tracker.log_baseline(self.baseline)
        best_then: TrialRecord | None = None
        for old in self.history.trials:  # a resumed run's tracker gets the whole curve
            best_then = self._better(best_then, old)
            self.tracker.log_trial(trial_row(old, best_then, self.baseline))
        if self.tensorboard:
            self._tb = TensorBoardDump(self.out / "tensorboard")
            self._dump_tensors(space, 0, None, self.baseline["accuracy"])
        elapsed0 = self.history.trials[-1].elapsed_s if self.history.trials else self.baseline.get("duration_s", 0.0)
        t_start = time.perf_counter()

        records = self.history.by_id()
        n_trials = len(self.history.trials)
        self._best = self._best_record()
        ctx = StrategyContext(space, self.criterion, self.baseline["accuracy"],
                              baseline_objective=self.baseline.get(self.objective.key),
                              max_trials=self.exit.max_trials, op_errors=self._op_errors,
                              first_pass_ends=self.exit.timeout == 0)
        gen = self.strategy.proposals(ctx)
        stop_reason = "strategy finished: its space is exhausted"
        repeats = 0
        previous: TuneConfig | None = None

        def budget_spent() -> str | None:
            if n_trials >= self.exit.max_trials:
                return f"max_trials ({self.exit.max_trials}) reached"
            if self.exit.timeout > 0 and elapsed0 + time.perf_counter() - t_start >= self.exit.timeout:
                return f"timeout ({self.exit.timeout:g} s) reached"
            return None

        try:
            cfg = next(gen)
            while True:
                if not space.contains(cfg):
                    raise LpotError(f"strategy {self.strategy.name!r} proposed a configuration outside the tuning "
                                    f"space ({cfg.note or cfg.id}); this is a bug in the strategy")
                rec = records.get(cfg.id)
                if rec is not None:
                    repeats += 1
                    log.debug("config %s (%s) answered from history (trial %d)", cfg.id, cfg.note, rec.trial)
                    if repeats > MAX_CONSECUTIVE_REPEATS:
                        stop_reason = f"strategy stalled: {repeats} consecutive already-evaluated proposals"
                        log.warning(stop_reason)
                        break
                else:
                    repeats = 0
                    spent = budget_spent()  # also covers a resumed run whose budget is already used up
                    if spent:
                        stop_reason = spent
                        break
                    n_trials += 1
                    rec, qmodel = self._trial(cfg, n_trials, elapsed0, t_start)
                    self.history.add(rec)
                    records[rec.config_id] = rec
                    self._best = self._better(self._best, rec)
                    if qmodel is not None and self._best is rec:
                        self._best_model = (rec.config_id, qmodel)
                    self._progress(rec, cfg.note or (f"changed: {cfg.diff(previous)}" if previous else cfg.id))
                    self.tracker.log_trial(trial_row(rec, self._best, self.baseline))
                    if self._tb is not None and qmodel is not None:
                        self._dump_tensors(space, rec.trial, qmodel, rec.accuracy)
                    previous = cfg
                if self.exit.timeout == 0 and rec.passed:
                    stop_reason = "met the criterion (timeout=0: stop at the first passing config)"
                    break
                spent = budget_spent()  # stop now rather than make the strategy work on a proposal never run
                if spent:
                    stop_reason = spent
                    break
                cfg = gen.send(self._result(rec))
        except StopIteration:
            pass
        except Exception as e:  # a strategy bug must not cost the finished trials their summary
            stop_reason = f"strategy error: {type(e).__name__}: {e}"
            log.error("the %s strategy raised %s; finishing with the %d trial(s) done", self.strategy.name,
                      stop_reason, n_trials)
            log.debug("strategy traceback:\n%s", traceback.format_exc())
        finally:
            gen.close()
            if self._tb is not None:
                self._tb.close()
        return self._finish(space, stop_reason, elapsed0 + time.perf_counter() - t_start)

    def _finish(self, space: TuningSpace, stop_reason: str, elapsed: float) -> TuneResult:
        best = self._best_record()
        met = bool(best and best.passed)
        model: Any = self.model
        best_cfg = TuneConfig.from_dict(best.config, best.note) if best else None
        model_path = None
        if best is not None:
            if self._best_model and self._best_model[0] == best.config_id:
                model = self._best_model[1]
            else:  # best came from an earlier process (resume): rebuild it deterministically
                model = self.adaptor.quantize(self.model, best_cfg, self.calib, self.example_inputs)
            model_path = self.adaptor.save(model, self.out / "best_model", self.example_inputs)
            _write_yaml(self.out / "best_config.yaml", {"config_id": best.config_id, "trial": best.trial,
                                                         "accuracy": best.accuracy, **best.config})
        summary = self._summary(space, best, met, stop_reason, elapsed, model_path)
        with open(self.out / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
        self.tracker.log_summary(summary)
        self._report(summary, best)
        return TuneResult(summary, best_cfg, model, self.out, space)

    def _summary(self, space: TuningSpace, best: TrialRecord | None, met: bool, stop_reason: str, elapsed: float,
                 model_path: Path | None) -> dict[str, Any]:
        b = self.baseline
        baseline = {k: b[k] for k in ("accuracy", "latency_ms", "size_bytes", self.objective.key) if k in b}
        lat_ratio = self._ratio(best, "latency_ms")
        best_d: dict[str, Any] | None = None
        if best is not None:
            fb = TuneConfig.from_dict(best.config).fallback_ops
            best_d = {
                "trial": best.trial,
                "config_id": best.config_id,
                "accuracy": best.accuracy,
                **{k: best.metrics.get(k) for k in ("latency_ms", "size_bytes")},
                "objective": best.objective,
                "latency_ratio": lat_ratio,
                "size_ratio": self._ratio(best, "size_bytes"),
                "fallback_ops": list(fb),
                "fallback_dtypes": fb,
                "passed": best.passed,
                "model_path": str(model_path) if model_path else None,
            }
        return {
            **self.names,
            "objective": self.objective.name,
            "criterion": {"kind": self.criterion.kind, "tolerance": self.criterion.tolerance,
                          "higher_is_better": self.criterion.hib,
                          "threshold": self.criterion.threshold(b["accuracy"])},
            "baseline": baseline,
            "best": best_d,
            "trials": len(self.history.trials),
            "failed_trials": sum(not r.ok for r in self.history.trials),
            "met_criterion": met,
            "faster_than_fp32": bool(lat_ratio is not None and lat_ratio < 1.0),
            "stop_reason": stop_reason,
            "elapsed_s": round(elapsed, 3),
            "cpu": cpu_summary(),
            "cpu_notes": self.adaptor.cpu_notes(),
            "space_size": space.size,
            "pareto_front": [
                {"trial": r.trial, "accuracy": r.accuracy, "objective": r.objective, "note": r.note}
                for r in self._pareto()
            ],
        }

    def _report(self, s: dict[str, Any], best: TrialRecord | None) -> None:
        rows = [("FP32", "baseline", self.baseline["accuracy"], self.baseline.get("latency_ms"), 1.0,
                 self.baseline.get("size_bytes"), "")]
        shown = {best.trial} if best else set()
        if best:
            rows.append((f"#{best.trial}", "best", best.accuracy, best.metrics.get("latency_ms"),
                         self._ratio(best, "latency_ms"), best.metrics.get("size_bytes"), best.note))
        for p in self._pareto():
            if p.trial not in shown:
                shown.add(p.trial)
                rows.append((f"#{p.trial}", "pareto", p.accuracy, p.metrics.get("latency_ms"),
                             self._ratio(p, "latency_ms"), p.metrics.get("size_bytes"), p.note))
        lines = [f"{'trial':>6} {'role':<8} {'accuracy':>9} {'latency ms':>11} {'vs fp32':>8} {'size MB':>8}  config"]
        for t, role, acc, lat, ratio, size, note in rows:
            lines.append(f"{t:>6} {role:<8} {acc:>9.4f} {lat if lat is not None else float('nan'):>11.3f} "
                         f"{_fmt_ratio(ratio):>8} {(size or 0) / 1e6:>8.3f}  {note}")
        log.info("tuning finished: %s; %d trial(s) (%d failed) in %.1f s\n%s", s["stop_reason"], s["trials"],
                 s["failed_trials"], s["elapsed_s"], "\n".join(lines))
        if best is None:
            log.warning("no trial produced a working quantized model; the FP32 model is the result")
            return
        if s["met_criterion"]:
            log.info("best: trial %d meets the criterion: accuracy %.4f vs FP32 %.4f (threshold %.4f)",
                     best.trial, best.accuracy, self.baseline["accuracy"], s["criterion"]["threshold"])
        else:
            log.warning("NO configuration met the criterion (threshold %.4f); best effort: trial %d with accuracy "
                        "%.4f. See the Pareto front in summary.json", s["criterion"]["threshold"], best.trial,
                        best.accuracy)
        ratio = s["best"]["latency_ratio"]
        if ratio is not None:
            if ratio < 1.0:
                log.info("INT8/FP32 latency ratio: %.2fx (%.1fx faster than FP32)", ratio, 1 / ratio)
            else:
                log.warning("the tuned model is SLOWER than FP32: latency ratio %.2fx (%.3f ms vs %.3f ms); "
                            "it is not an optimized model", ratio, best.metrics["latency_ms"],
                            self.baseline["latency_ms"])
        if s["best"]["fallback_ops"]:
            log.info("fallback ops: %s", s["best"]["fallback_dtypes"])


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    from omegaconf import OmegaConf

    path.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
