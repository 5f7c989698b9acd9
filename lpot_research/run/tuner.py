"""The tuning loop: the FP32 baseline once, then the strategy's proposals until the exit policy says stop.

The parts, each with one job: `TrialRunner` (quantize, evaluate, measure: lpot_research.run.trial),
`Evaluator` (accuracy, early rejection), `Inspector` (per-op outputs and sensitivity), `ranking` (the one
ordering of results), `History` (the run's state on disk), `Reporter` (summary, table, saved model)
and callbacks for whatever watches (progress log, W&B, TensorBoard). Every finished trial is in the
history as soon as it is known; a resumed run replays the strategy against it, so no finished trial
is evaluated twice and the same seed ends as an uninterrupted run does. `TrialScheduler`
(lpot_research.run.scheduler) runs each batch of proposals, one trial at a time or on parallel workers.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpot_research.core.cpu import cpu_info
from lpot_research.core.errors import LpotError, interrupt_reason
from lpot_research.measure.objectives import Objective
from lpot_research.measure.op_costs import OpCosts
from lpot_research.quant.criterion import AccuracyCriterion
from lpot_research.quant.ranking import better, rank_key
from lpot_research.quant.space import TuneConfig, TuningSpace, build_space, recipe_dimensions
from lpot_research.run.callbacks import Callback, RunView
from lpot_research.run.history import ALL_INT8, EVAL_ORDER, FP32_SCORES, OP_COSTS, History, TrialRecord
from lpot_research.run.inspector import Inspector
from lpot_research.run.policy import ExitPolicy, Parallel
from lpot_research.run.report import ModelWriter, Reporter, fallback_ops, latency_of
from lpot_research.run.scheduler import Stop, TrialScheduler
from lpot_research.run.summary import EvaluationSummary, Summary
from lpot_research.run.trial import TrialRunner, one_line
from lpot_research.strategies.base import Result, Strategy, StrategyContext, UntilPass

log = logging.getLogger("lpot_research")
PARETO_MEASURED = 3  # when nothing passes, the most accurate trials measured for the Pareto front
PROFILED_RUNS = 10  # inferences of the FP32 and of the all-INT8 model profiled for per-op costs (medians)


@dataclass
class TuneResult:
    summary: Summary
    best_config: TuneConfig | None
    model: Any  # the best quantized model (or the FP32 model when no trial succeeded)
    output_dir: Path
    space: TuningSpace
    interrupted: bool = False  # Ctrl-C or SIGTERM ended it (everything finished is saved)

    @property
    def met_criterion(self) -> bool:
        return bool(self.summary.met_criterion)


@dataclass
class Tuner:
    adaptor: Any
    strategy: Strategy
    runner: TrialRunner
    inspector: Inspector
    history: History
    space_settings: dict[str, Any]  # approach, sampling_sizes, model_wise, op_wise, recipes
    criterion: AccuracyCriterion
    objective: Objective
    exit: ExitPolicy
    example_inputs: Any
    out: Path
    names: dict[str, str]
    callbacks: list[Callback] = field(default_factory=list)
    resume_hint: str = ""
    parallel: Parallel | None = None  # None: one trial at a time, in this process
    threads: int = 1

    def __post_init__(self) -> None:
        self.evaluator, self.best, self._best_model = self.runner.evaluator, None, None
        self.baseline: dict[str, Any] = {}
        self.view: RunView | None = None  # what callbacks and the reporter see, once the space exists

    def _view(self, evaluation: EvaluationSummary | None) -> RunView:
        """A read-only view of the run as it stands (its baseline so far)."""
        return RunView(names=self.names, framework=self.adaptor.name, space=self.space, criterion=self.criterion,
                       objective=self.objective, exit=self.exit, out=self.out, history=self.history,
                       workers=self.parallel.workers if self.parallel is not None else 1,
                       cpu_notes=self.adaptor.cpu_notes(), op_outputs=self._op_outputs, baseline=self.baseline,
                       evaluation=evaluation)

    def _op_outputs(self, model: Any) -> dict[str, Any]:
        """The per-op outputs of `model` (None: the FP32 reference build) on the probe batch."""
        space = self.space
        if model is None:
            model = self.inspector.fp32_build(space.model_wise_configs()[0])
        return self.inspector.outputs(model, space.op_names, space.sampling_sizes[0])

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.view, *args)

    def _result(self, rec: TrialRecord) -> Result:
        cfg = self.space.canonical(TuneConfig.from_dict(rec.config, rec.note))
        return Result(cfg, rec.ok, rec.decision_accuracy, rec.objective, rec.passed, rec.trial)

    def _elapsed(self) -> float:
        return self._elapsed0 + time.perf_counter() - self._t0

    # ---------------------------------------------------------------- the run
    def run(self) -> TuneResult:
        s = self.space_settings
        self.history.start()  # an unwritable run dir fails here, before any work
        caps = self.adaptor.capabilities(self.runner.model, s["approach"], self.example_inputs)
        recipes = recipe_dimensions(s.get("recipes"), self.adaptor.recipes, self.adaptor.name, s["approach"])
        self.space = build_space(caps, s["approach"], s["sampling_sizes"], s["model_wise"], s["op_wise"], recipes)
        log.info("CPU: %s | %s: %s", cpu_info().describe(), self.adaptor.name,
                 "; ".join(self.adaptor.cpu_notes()) or "nothing depends on the CPU class")
        log.info("run dir %s | space: %d op(s), %d configuration(s) (%s) | strategy %s, objective %s, criterion %s, "
                 "evaluation %s", self.out, len(self.space.op_names), self.space.size, s["approach"],
                 self.strategy.name, self.objective.name, self.criterion.describe(), self.evaluator.kind)
        if self.space.recipes:
            log.info("recipes tuned: %s", "; ".join(f"{n} {list(v[1:])}" for n, v in self.space.recipes))
        log.debug("ops and options: %s", {n: [o.short() for o in opts] for n, opts in self.space.options})
        self.view = self._view(None)
        self._emit("on_start")
        self._baseline()
        for rec in self.history.trials:  # a resumed run: a passing trial killed before its measurement gets it
            if self.runner.unmeasured(rec):
                self._complete(rec)
        for rec in self.history.trials:  # a resumed run's watchers get the whole curve
            self.best = better(self.best, rec, self.criterion.hib)
            self._emit("on_trial", rec, self.best, None, True)
        self._elapsed0 = self.history.trials[-1].elapsed_s if self.history.trials else self.baseline["duration_s"]
        self._t0 = time.perf_counter()
        refines = bool(getattr(self.strategy, "refines_first_pass", False))  # (it ends the run itself)
        self.trials = TrialScheduler(self.runner, self.history, self.exit, self._elapsed, self._on_record,
                                     self.parallel, self.threads, first_pass_ends=not refines)
        if self.trials.workers > 1:
            self.inspector.spread = self.trials.spread
        interrupted = False
        try:
            stop_reason = self._loop()
        except KeyboardInterrupt as e:
            stop_reason, interrupted = interrupt_reason(e), True
        finally:
            self.trials.close()
        return self._finish(stop_reason, interrupted)

    def _baseline(self) -> None:
        h = self.history
        if h.baseline is None:
            b = self.runner.measure_baseline()
            scores = b.pop("_scores")
            if scores is not None:
                h.add_analysis(FP32_SCORES, scores.tolist())
            h.set_baseline(b)
            log.info("FP32 baseline: accuracy %.4f | latency %.3f ms (batch %d) | size %.2f MB | %.1fs", b["accuracy"],
                     b["latency_ms"], self.runner.bench.batch_size, b["size_bytes"] / 1e6, b["duration_s"])
        else:
            self.runner.baseline = h.baseline
            log.info("resuming: FP32 baseline accuracy %.4f and %d finished trial(s) from %s", h.baseline["accuracy"],
                     len(h.trials), h.path)
        self.baseline = self.runner.baseline
        if EVAL_ORDER in h.analysis:
            self.evaluator.set_order(h.analysis[EVAL_ORDER])
        ev = self.evaluator
        self.view = self._view(EvaluationSummary(kind=ev.kind, samples=ev.samples, ranking_samples=ev.ranking_size,
                                                 early_stop=ev.early_stop and ev.per_sample))
        self._emit("on_baseline", self.baseline)

    def _ask(self, gen: Any, value: Any) -> Any:
        """The strategy's next proposal; its end or its error ends the run (never the tuner's own)."""
        try:
            return gen.send(value)
        except StopIteration as e:
            raise Stop(f"strategy finished: {e.value}" if e.value else "strategy finished: it proposed nothing "
                       "more") from None
        except Exception as e:
            log.error("the %s strategy raised %s; finishing with the %d trial(s) done", self.strategy.name,
                      one_line(e), len(self.history.trials))
            log.debug("strategy traceback:\n%s", traceback.format_exc())
            raise Stop(f"strategy error: {one_line(e)}") from None

    def _canonical(self, raw: Any) -> TuneConfig:
        cfg = self.space.canonical(raw) if isinstance(raw, TuneConfig) else None
        if cfg is None:
            raise Stop(f"strategy error: {self.strategy.name!r} proposed {raw!r:.200}, which is not a configuration "
                       "of the tuning space (a bug in the strategy)")
        return cfg

    def _loop(self) -> str:
        ctx = StrategyContext(self.space, self.criterion, self.baseline["accuracy"],
                              baseline_objective=self.baseline.get(self.objective.key), max_trials=self.exit.max_trials,
                              op_errors=self.inspector.op_errors, sensitivity=self.inspector.sensitivity,
                              first_pass_ends=self.exit.timeout == 0,
                              op_costs=self._strategy_op_costs if self._profiles_for_speed() else None)
        gen = self.strategy.proposals(ctx)
        try:
            proposal = self._ask(gen, None)
            while True:
                batch = proposal if isinstance(proposal, list) else [proposal]
                records = self.trials.run([self._canonical(raw) for raw in batch], isinstance(proposal, UntilPass))
                spent = self.trials.budget_spent()  # rather than make the strategy work on a proposal never run
                if spent:
                    raise Stop(spent)
                results = [self._result(r) for r in records]
                proposal = self._ask(gen, results if isinstance(proposal, list) else results[0])
        except Stop as stop:
            return str(stop)
        finally:
            gen.close()

    def _on_record(self, rec: TrialRecord, model: Any) -> None:
        self.best = better(self.best, rec, self.criterion.hib)
        if self.best is rec and model is not None:
            self._best_model = (rec.config_id, model)
        self._emit("on_trial", rec, self.best, model, False)

    # ---------------------------------------------------------------- the end
    def _model_of(self, rec: TrialRecord) -> Any:
        if self._best_model and self._best_model[0] == rec.config_id and self._best_model[1] is not None:
            return self._best_model[1]
        return self.runner.rebuild(rec)

    def _complete(self, rec: TrialRecord, keys: tuple[str, ...] | None = None) -> None:
        """Measure what a report needs of `rec`: its whole-set accuracy (if its evaluation stopped
        early) and its measurements."""
        model = self._model_of(rec)
        accuracy = samples = None
        if rec.accuracy is None:
            t0 = time.perf_counter()
            out = self.evaluator.evaluate(model, f"trial {rec.trial} model")
            rec.costs["evaluate_s"] = rec.costs.get("evaluate_s", 0.0) + time.perf_counter() - t0
            accuracy, samples = out.accuracy, out.samples
            rec.accuracy = accuracy
        self.runner.measure_recorded(self.history, rec, model, keys, accuracy=accuracy, samples=samples)

    def _all_int8(self, best: TrialRecord) -> dict[str, Any] | None:
        """The latency of the all-INT8 model (every quantizable op INT8: a model-wise configuration), the
        limit fallback gives speed back from: the most accurate model-wise trial on record, measured now
        if it was not; else the first model-wise configuration, quantized and measured once per run (kept
        in the history for a resume)."""
        model_wise = {c.id: c for c in self.space.model_wise_configs()}
        on_record = sorted((t for t in self.history.trials if t.ok and t.config_id in model_wise),
                           key=lambda t: rank_key(t, self.criterion.hib))
        if on_record:
            rec = on_record[0]
            if "latency_ms" not in rec.metrics:
                self.runner.measure_recorded(self.history, rec, self._model_of(rec), ("latency_ms",))
            return {"config_id": rec.config_id, "trial": rec.trial, **latency_of(rec.metrics)}
        if not model_wise:
            return None
        if ALL_INT8 not in self.history.analysis:
            cfg = next(iter(model_wise.values()))
            t0 = time.perf_counter()
            probe = TrialRecord(trial=0, config_id=cfg.id, config=cfg.to_dict(), status="ok")
            try:
                qmodel, _ = self.runner.quantize(cfg)
                self.runner.measure(probe, qmodel, ("latency_ms",))
            except Exception as e:  # noqa: BLE001 - a reference that does not build is said, not fatal
                log.warning("the all-INT8 reference (%s) could not be measured: %s", cfg.id, one_line(e))
                return None
            self.history.add_analysis(ALL_INT8, {"config_id": cfg.id, "trial": None, **latency_of(probe.metrics)},
                                      seconds=time.perf_counter() - t0)
        return dict(self.history.analysis[ALL_INT8])

    def _op_costs(self) -> dict[str, Any] | None:
        """Per-op milliseconds in the FP32 model and the all-INT8 one (the first model-wise configuration)
        from the framework's profiler, once per run (kept in the history, so a resume proposes as the run
        did); None where the back end has no profiler wired or the profile fails. The all-INT8 model is
        the best trial's when that is it (already compiled where the back end compiles for timing)."""
        if OP_COSTS not in self.history.analysis:
            if not self.adaptor.profiler:
                return None
            cfg = self.space.model_wise_configs()[0]
            t0 = time.perf_counter()
            try:
                if self._best_model and self._best_model[0] == cfg.id and self._best_model[1] is not None:
                    qmodel = self._best_model[1]
                else:
                    qmodel, _ = self.runner.quantize(cfg)
                costs = self.adaptor.op_costs(self.runner.model, qmodel, self.runner.bench_inputs,
                                              sorted(self.space.quantizable), PROFILED_RUNS)
            except Exception as e:  # noqa: BLE001 - tuning goes on without them
                log.warning("per-op costs (%s) could not be profiled: %s", self.adaptor.profiler, one_line(e))
                return None
            costs.config_id = cfg.id
            self.history.add_analysis(OP_COSTS, costs.to_dict(), seconds=time.perf_counter() - t0)
            slower = sorted(o for o in costs.int8_ms if (costs.saving(o) or 0.0) < 0.0)
            log.info("per-op costs from %s (%.1f s): %d op(s) profiled; INT8 is slower than FP32 for %d%s%s",
                     costs.profiler, time.perf_counter() - t0, len(costs.int8_ms), len(slower),
                     ": " + ", ".join(slower[:8]) + (", ..." if len(slower) > 8 else "") if slower else "",
                     "".join(f"; {n}" for n in costs.notes))
        return dict(self.history.analysis[OP_COSTS])

    def _profiles_for_speed(self) -> bool:
        return bool(self.adaptor.profiler) and "latency_ms" in self.objective.needs()

    def _strategy_op_costs(self) -> OpCosts | None:
        """`ctx.op_costs`: the profiled costs for a strategy to find the fastest passing model."""
        costs = self._op_costs()
        return OpCosts.from_dict(costs) if costs is not None else None

    def _finish(self, stop_reason: str, interrupted: bool) -> TuneResult:
        hib = self.criterion.hib
        ranked = sorted((r for r in self.history.trials if r.ok), key=lambda r: rank_key(r, hib))
        best = ranked[0] if ranked else None
        if best is not None and not best.passed:  # best effort: its real accuracy, and a Pareto front
            for r in ranked[:PARETO_MEASURED]:
                if r.objective is None or r.accuracy is None:
                    self._complete(r)
        elif best is not None and "latency_ms" not in best.metrics:  # e.g. objective=modelsize
            self._complete(best, ("latency_ms",))
        model = self._model_of(best) if best is not None else self.runner.model
        all_int8 = self._all_int8(best) if best is not None and best.passed else None
        # (measured for the report when a fallback op's cost is worth showing, or already measured)
        shown = all_int8 is not None and (OP_COSTS in self.history.analysis or fallback_ops(self.space, best.config))
        op_costs = self._op_costs() if shown else None
        assert self.view is not None
        reporter = Reporter(self.view, ModelWriter(lambda m, path: self.adaptor.save(m, path, self.example_inputs),
                                                   self.adaptor.predict, self.runner.bench_inputs))
        summary = reporter.summary(best, stop_reason, self._elapsed(), None, all_int8, op_costs)
        reporter.write(summary, best, model if best is not None else None)
        self._emit("on_finish", summary)
        reporter.log(summary, best)
        log.info("run dir: %s", self.out)
        if self.resume_hint and (interrupted or "reached" in stop_reason or "error" in stop_reason):
            log.info("to continue this run: %s", self.resume_hint)
        best_cfg = TuneConfig.from_dict(best.config, best.note) if best else None
        return TuneResult(summary, best_cfg, model, self.out, self.space, interrupted)


__all__ = ["ExitPolicy", "LpotError", "TuneResult", "Tuner"]
