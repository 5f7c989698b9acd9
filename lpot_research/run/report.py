"""The end of a run: summary.json, the closing table and lines (each telling the truth about what was
done), where the time went, and the best model and its configuration in the run dir."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpot_research.core.cpu import cpu_summary
from lpot_research.measure.benchmark import plus_minus, ratio_text
from lpot_research.measure.op_costs import OpCosts
from lpot_research.quant.ranking import pareto_front, within_noise
from lpot_research.quant.space import TuneConfig, TuningSpace, describe_recipes
from lpot_research.run.callbacks import RunView
from lpot_research.run.history import TrialRecord, metric_ratio
from lpot_research.run.summary import BestSummary, Costs, CriterionSummary, ParetoPoint, Summary

log = logging.getLogger("lpot_research")
# a trial's (and the baseline's) steps; compile_s: compiling models to time them (the export back end)
COSTS = ("calibrate_s", "quantize_s", "evaluate_s", "benchmark_s", "compile_s")
TIMED = (*COSTS, "analysis_s")  # plus per-op analyses (sensitivity, output errors): what the run timed


def _num(x: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def fallback_ops(space: TuningSpace, config: dict[str, Any]) -> dict[str, str]:
    """Ops the framework could quantize that this configuration keeps in BF16/FP32 (by the strategy's
    choice or an op_wise constraint); an op it cannot quantize, e.g. a conv under dynamic INT8, is not
    a fallback."""
    return {n: d for n, d in TuneConfig.from_dict(config).fallback_ops.items() if n in space.quantizable}


def cost_totals(trials: list[TrialRecord], baseline: dict[str, Any], analysis_seconds: dict[str, float],
                elapsed: float, workers: int = 1) -> dict[str, Any]:
    """Seconds per step over the whole run (baseline and analyses included), samples evaluated, full
    evaluations; `other_s`: the wall time no step accounts for (start-up, the strategy's own work,
    serialization, reporting). With parallel workers the steps are summed over processes (worker
    seconds), so they are not parts of the wall time and `other_s` is None."""
    totals = {k: sum(t.costs.get(k, 0.0) for t in trials) for k in COSTS}
    for k, v in (baseline.get("costs") or {}).items():
        totals[k] = totals.get(k, 0.0) + v
    totals["analysis_s"] = sum(analysis_seconds.values())
    ok = [t for t in trials if t.ok]
    # a resumed run's clock misses what a killed session spent after its last record (it may have
    # finished an analysis then), hence the floor at 0
    other = max(0.0, elapsed - sum(totals[k] for k in TIMED)) if workers == 1 else None
    return {**{k: round(v, 3) for k, v in totals.items()},
            "other_s": None if other is None else round(other, 3), "workers": workers,
            "samples_evaluated": sum(t.samples or 0 for t in ok) or None,
            "full_evaluations": sum(t.accuracy is not None for t in ok),
            "rejected_early": sum(t.rejected for t in ok),
            "benchmarked": sum("latency_ms" in t.metrics for t in trials)}


def latency_of(metrics: dict[str, float]) -> dict[str, float | None]:
    """A trial's latency measurements (its ratio to FP32 from interleaved pairs, their spread)."""
    return {k: metrics.get(k) for k in ("latency_ms", "latency_ratio", "latency_spread", "fp32_latency_ms")}


def cost_line(c: Costs) -> str:
    """Where the time went, in one line (the closing log and report.md)."""
    other = (f", other {c.other_s:.1f} s" if c.other_s is not None
             else f" (worker seconds over {c.workers} processes)")
    return (f"calibration {c.calibrate_s:.1f} s, quantization {c.quantize_s:.1f} s, evaluation "
            f"{c.evaluate_s:.1f} s ({c.full_evaluations} whole-set, {c.rejected_early} stopped early"
            + (f", {c.samples_evaluated} samples" if c.samples_evaluated else "")
            + f"), benchmark {c.benchmark_s:.1f} s ({c.benchmarked} trials timed)"
            + (f", compilation for timing {c.compile_s:.1f} s" if c.compile_s else "") + ", per-op analysis "
            f"{c.analysis_s:.1f} s{other}")


def latency_rivals(trials: list[TrialRecord], best: TrialRecord, baseline: dict[str, Any]) -> list[TrialRecord]:
    """The other passing trials whose measured latency ratio overlaps the best's within their spreads:
    the measurement cannot tell them apart from the best (the choice between them is not a measured one)."""
    ratio = metric_ratio(best, baseline, "latency_ms")
    if not best.passed or ratio is None:
        return []
    spread = best.metrics.get("latency_spread")
    return [t for t in trials if t.passed and t.trial != best.trial
            and within_noise(metric_ratio(t, baseline, "latency_ms"), t.metrics.get("latency_spread"), ratio, spread)]


@dataclass(frozen=True)
class ModelWriter:
    """How the reporter writes the best model: the framework's `save(model, path)` (returns the saved
    path) and `predict(model, inputs)`, and the inputs its check file records (the first 16 are)."""

    save: Callable[[Any, Path], Path]
    predict: Callable[[Any, Any], Any]
    check_inputs: Any


def fallback_costs(s: Summary) -> list[tuple[str, float | None, float | None, float | None]]:
    """Per fallback op of the best: (op, FP32 ms, INT8 ms, what falling back costs over INT8), costliest
    first (ops the profiler saw no kernel of last)."""
    if not s.op_costs or s.best is None:
        return []
    costs = OpCosts.from_dict(s.op_costs)
    rows = [(op, costs.fp32_ms.get(op), costs.int8_ms.get(op), costs.saving(op)) for op in s.best.fallback_ops]
    return sorted(rows, key=lambda r: -r[3] if r[3] is not None else float("inf"))


def fallback_cost_table(s: Summary) -> list[str]:
    """report.md's lines on what each fallback op costs (none without profiled op costs or fallbacks)."""
    costs = fallback_costs(s)
    if not costs or s.op_costs is None:
        return []
    lines = ["", f"What each fallback op costs, from {s.op_costs['profiler']} of the FP32 and the all-INT8 model "
             f"(ms of one benchmark batch, median of {s.op_costs['runs']} runs; the INT8 time includes the "
             "conversions around the op):", "",
             "| fallback op | FP32 ms | INT8 ms | falling back costs ms |", "|---|---|---|---|"]
    lines += [f"| `{op}` | {_ms(f)} | {_ms(i)} | {'-' if c is None else f'{c:+.3f}'} |" for op, f, i, c in costs]
    rest = s.op_costs["rest"]
    lines.append(f"| (the rest: ops not tuned, layout conversions) | {_ms(rest['fp32_ms'])} | "
                 f"{_ms(rest['int8_ms'])} | |")
    return lines


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


class Reporter:
    """The end of a run, from a read-only view of it (`RunView`) and how to write its best model."""

    def __init__(self, run: RunView, writer: ModelWriter) -> None:
        self.run, self.writer = run, writer

    def summary(self, best: TrialRecord | None, stop_reason: str, elapsed: float, model_path: Path | None,
                all_int8: dict[str, Any] | None = None, op_costs: dict[str, Any] | None = None) -> Summary:
        run = self.run
        b, trials, space = run.baseline, run.history.trials, run.space
        assert run.evaluation is not None  # the view after the baseline
        baseline = {k: b[k] for k in ("accuracy", "latency_ms", "latency_spread", "size_bytes", run.objective.key)
                    if k in b}
        best_s: BestSummary | None = None
        if best is not None:
            fb = fallback_ops(space, best.config)
            best_s = BestSummary(
                trial=best.trial, config_id=best.config_id, accuracy=best.accuracy,
                **{k: best.metrics.get(k) for k in ("latency_ms", "latency_spread", "fp32_latency_ms", "size_bytes")},
                objective=best.objective,
                latency_ratio=metric_ratio(best, b, "latency_ms"),
                size_ratio=metric_ratio(best, b, "size_bytes"),
                quantized_ops=sum(1 for _, c in TuneConfig.from_dict(best.config).ops if c.quantized),
                fallback_ops=list(fb), fallback_dtypes=fb,
                unquantizable_ops=[n for n in space.op_names if n not in space.quantizable],
                passed=best.passed,
                model_path=str(model_path) if model_path else None,
                within_noise=[t.trial for t in latency_rivals(trials, best, b)],
                recipes=dict(TuneConfig.from_dict(best.config).recipes),
            )
        ratio = best_s.latency_ratio if best_s else None
        if all_int8 is not None and best_s is not None:
            limit = all_int8.get("latency_ratio")
            all_int8 = {**all_int8, "fallbacks": len(best_s.fallback_ops),
                        "fallback_cost": round(ratio / limit - 1, 4) if ratio and limit else None}
        return Summary(
            names=dict(run.names),
            objective=run.objective.name,
            criterion=CriterionSummary(kind=run.criterion.kind, tolerance=run.criterion.tolerance,
                                       higher_is_better=run.criterion.hib,
                                       threshold=run.criterion.threshold(b["accuracy"])),
            baseline=baseline,
            best=best_s,
            trials=len(trials),
            failed_trials=sum(not t.ok for t in trials),
            met_criterion=bool(best and best.passed),
            faster_than_fp32=bool(ratio is not None and ratio < 1.0 and best_s and best_s.quantized_ops),
            stop_reason=stop_reason,
            stopped_trials=run.history.stopped,
            elapsed_s=round(elapsed, 3),
            costs=Costs(**cost_totals(trials, b, run.history.analysis_seconds, elapsed, run.workers)),
            evaluation=run.evaluation,
            cpu=cpu_summary(),
            cpu_notes=run.cpu_notes,
            space_size=space.size,
            pareto_front=[ParetoPoint(trial=r.trial, accuracy=r.accuracy, objective=r.objective, note=r.note)
                          for r in pareto_front(trials, run.criterion.hib)],
            run_dir=str(run.out),
            all_int8=all_int8,
            op_costs=op_costs,
        )

    def write(self, summary: Summary, best: TrialRecord | None, best_model: Any) -> Path | None:
        """summary.json and best_config.yaml; the best model in its framework's format (returns its path),
        with best_model_check.npz: inputs and the tuned model's outputs on them, so that
        scripts/verify_saved_model.py can check the saved file on any run (an API run too)."""
        run = self.run
        path = None
        if best is not None and best_model is not None:
            path = self.writer.save(best_model, run.out / "best_model")
            assert summary.best is not None
            summary.best.model_path = str(path)
            self._write_check(best_model)
            _write_yaml(run.out / "best_config.yaml", {"config_id": best.config_id, "trial": best.trial,
                                                        "accuracy": best.accuracy, **best.config})
        with open(run.out / "summary.json", "w") as f:
            json.dump(summary.to_dict(), f, indent=2)
        write_report(run.out, summary, run.history.trials)
        return path

    def _write_check(self, model: Any) -> None:
        import numpy as np

        from lpot_research.adaptors.base import numpy_inputs
        from lpot_research.core.batches import first

        inputs = first(self.writer.check_inputs, 16)
        outputs = self.writer.predict(model, inputs)
        arrays = {}
        names = list(inputs) if isinstance(inputs, dict) else None
        for i, a in enumerate(numpy_inputs(inputs)):
            arrays[f"input:{names[i]}" if names else f"input{i}"] = a
        for i, o in enumerate(outputs if isinstance(outputs, tuple | list) else (outputs,)):
            arrays[f"output{i}"] = numpy_inputs(o)[0]
        np.savez(self.run.out / "best_model_check.npz", **arrays)

    def _table(self, s: Summary, best: TrialRecord | None) -> list[str]:
        """The closing table: FP32, the best and the Pareto front, then the run's costs."""
        run = self.run
        b = run.baseline
        rows = [("FP32", "baseline", b["accuracy"], b.get("latency_ms"), None, 1.0, b.get("size_bytes"),
                 f"(timed alone at the start{plus_minus(b.get('latency_spread'))})")]
        shown = {best.trial} if best else set()
        if best:
            rows.append((f"#{best.trial}", "best", best.shown_accuracy, best.metrics.get("latency_ms"),
                         best.metrics.get("fp32_latency_ms"), metric_ratio(best, b, "latency_ms"),
                         best.metrics.get("size_bytes"), best.note))
        a = s.all_int8
        if a and a["fallbacks"] and a.get("trial") not in shown:
            t = run.history.trials[a["trial"] - 1] if a.get("trial") else None
            shown.add(a.get("trial"))
            rows.append((f"#{a['trial']}" if t else "-", "all-int8", t.shown_accuracy if t else None, a["latency_ms"],
                         a.get("fp32_latency_ms"), a.get("latency_ratio"), t.metrics.get("size_bytes") if t else None,
                         "every quantizable op INT8 (model-wise)"))
        for p in pareto_front(run.history.trials, run.criterion.hib):
            if p.trial not in shown:
                shown.add(p.trial)
                rows.append((f"#{p.trial}", "pareto", p.accuracy, p.metrics.get("latency_ms"),
                             p.metrics.get("fp32_latency_ms"), metric_ratio(p, b, "latency_ms"),
                             p.metrics.get("size_bytes"), p.note))
        # a trial's FP32 ms is the FP32 model's median in the same interleaved pairs as its ratio
        lines = [f"{'trial':>6} {'role':<8} {'accuracy':>9} {'latency ms':>11} {'fp32 ms':>10} {'vs fp32':>8} "
                 f"{'size MB':>8}  config"]
        for t, role, acc, lat, fp32, ratio, size, note in rows:
            lines.append(f"{t:>6} {role:<8} {_num(acc, 9, 4)} {_num(lat, 11, 3)} {_num(fp32, 10, 3)} "
                         f"{ratio_text(ratio):>8} {(size or 0) / 1e6:>8.3f}  {note}")
        lines.append(f"time: {cost_line(s.costs)}")
        return lines

    def log(self, s: Summary, best: TrialRecord | None) -> None:
        run = self.run
        b = run.baseline
        log.info("tuning finished: %s; %d trial(s) (%d failed) in %.1f s\n%s", s.stop_reason, s.trials,
                 s.failed_trials, s.elapsed_s, "\n".join(self._table(s, best)))
        if best is None:
            log.warning("no trial produced a working quantized model; the FP32 model is the result")
            return
        if s.met_criterion:
            log.info("best: trial %d meets the criterion: accuracy %.4f vs FP32 %.4f (threshold %.4f)",
                     best.trial, best.accuracy, b["accuracy"], s.criterion.threshold)
        else:
            log.warning("NO configuration met the criterion (threshold %.4f); best effort: trial %d with accuracy "
                        "%.4f. See the Pareto front in summary.json", s.criterion.threshold, best.trial,
                        best.shown_accuracy)
        d = s.best
        assert d is not None
        if not d.quantized_ops:
            log.warning("the best configuration quantizes no op (every op stays FP32/BF16): it is not an INT8 "
                        "model, and no speed-up from quantization can be claimed")
        elif run.objective.key == "size_bytes" and d.size_ratio is not None:
            log.info("INT8/FP32 model size ratio: %.2fx (%.1f MB vs %.1f MB)", d.size_ratio,
                     (d.size_bytes or 0) / 1e6, b["size_bytes"] / 1e6)
        if d.latency_ratio is not None and d.quantized_ops:
            _log_speed(d, best, b)
        if s.all_int8 and s.all_int8.get("latency_ratio") and s.all_int8["fallbacks"]:
            a = s.all_int8
            log.info("all-INT8 (%s) %.2fx FP32%s: the %d fallback op(s) cost %+.0f%% latency over it",
                     f"trial {a['trial']}" if a["trial"] else "measured apart", a["latency_ratio"],
                     plus_minus(a.get("latency_spread")), a["fallbacks"], 100 * (a["fallback_cost"] or 0))
        if d.within_noise:
            log.info("within measurement noise of the best's latency (as fast, as far as can be measured): trial(s) %s",
                     ", ".join(f"#{t}" for t in d.within_noise))
        if d.recipes:
            log.info("recipes: %s", describe_recipes(d.recipes))
        if d.fallback_ops:
            log.info("fallback ops: %s", d.fallback_dtypes)
            costs = fallback_costs(s)
            if costs:
                log.info("what each fallback costs over INT8 (%s, ms per batch): %s", s.op_costs["profiler"],
                         ", ".join(f"{op} {c:+.3f}" for op, _, _, c in costs))
        if d.unquantizable_ops:
            log.info("not quantizable by %s with %s (left FP32): %s", run.framework, run.space.approach,
                     ", ".join(d.unquantizable_ops))


def _log_speed(d: BestSummary, best: TrialRecord, b: dict[str, Any]) -> None:
    """The verdict on the best's latency ratio `d.latency_ratio`: as fast as FP32 within its spread,
    faster, or slower."""
    ratio, spread = d.latency_ratio, d.latency_spread
    assert ratio is not None
    noise = plus_minus(spread)
    if within_noise(ratio, spread, 1.0, 0.0):
        log.warning("the tuned model is as fast as FP32 within measurement noise: latency ratio %.2fx%s",
                    ratio, noise)
    elif ratio < 1.0:
        log.info("INT8/FP32 latency ratio: %.2fx%s (%.1fx faster than FP32)", ratio, noise, 1 / ratio)
    else:
        log.warning("the tuned model is SLOWER than FP32: latency ratio %.2fx%s (%.3f ms vs %.3f ms); "
                    "it is not an optimized model", ratio, noise, best.metrics["latency_ms"],
                    best.metrics.get("fp32_latency_ms", b["latency_ms"]))


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    from omegaconf import OmegaConf

    path.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))


def _acc(t: TrialRecord) -> str:
    if not t.ok:
        return "failed"
    return f"{t.accuracy:.4f}" if t.accuracy is not None else f"<= {t.accuracy_bound:.4f} (stopped at {t.samples})"


def tuning_curve(path: Path, summary: Summary, trials: list[TrialRecord]) -> None:
    """Best-so-far accuracy against the threshold, and the accuracy of each trial, per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hib = summary.criterion.higher_is_better
    xs, each, best, b = [], [], [], None
    for t in trials:
        a = t.accuracy if t.accuracy is not None else t.accuracy_bound
        if t.ok and a is not None and (b is None or (a > b if hib else a < b)):
            b = a
        xs.append(t.trial)
        each.append(a if t.ok else float("nan"))
        best.append(b if b is not None else float("nan"))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, each, "o", ms=3, alpha=0.5, label="trial (a stopped one at its bound)")
    ax.plot(xs, best, "-", label="best so far")
    ax.axhline(summary.criterion.threshold, ls="--", c="gray", label="threshold")
    ax.axhline(summary.baseline["accuracy"], ls=":", c="black", label="FP32")
    ax.set_xlabel("trial")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{summary.strategy} / {summary.framework} / {summary.model}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, s: Summary, trials: list[TrialRecord]) -> None:
    """report.md: the run for people, with the numbers of summary.json and the tuning curve."""
    b, best, c = s.baseline, s.best, s.costs
    curve = "(one trial: no tuning curve)\n"
    if len(trials) > 1:
        try:
            tuning_curve(out / "tuning_curve.png", s, trials)
            curve = "![tuning curve](tuning_curve.png)\n"
        except Exception as e:  # noqa: BLE001 - a picture must not cost the run its report
            curve = f"(no tuning curve: {type(e).__name__}: {e})\n"
    cr = s.criterion
    lines = [
        f"# {s.strategy} / {s.framework} / {s.model}",
        "",
        f"- CPU: {s.cpu['model']} [{s.cpu['class']}: {s.cpu['features']}]"
        + (f", capped from {s.cpu['capped_from']}" if s.cpu.get("capped_from") else ""),
        f"- {s.framework}: {'; '.join(s.cpu_notes) or 'nothing depends on the CPU class'}",
        f"- criterion: {cr.kind} {cr.tolerance} (threshold {cr.threshold:.4f}), objective: {s.objective}",
        f"- result: {'met the criterion' if s.met_criterion else 'did NOT meet the criterion'}; "
        f"{s.trials} trial(s), {s.failed_trials} failed, in {s.elapsed_s:.1f} s; stop: {s.stop_reason}",
        "",
        "| | accuracy | latency ms | FP32 ms in the same pairs | vs FP32 | size MB | size vs FP32 |",
        "|---|---|---|---|---|---|---|",
        f"| FP32 baseline (timed alone at the start{plus_minus(b.get('latency_spread'))}) | {b['accuracy']:.4f} | "
        f"{b.get('latency_ms', float('nan')):.3f} | - | 1.00x | {b['size_bytes'] / 1e6:.3f} | 1.00x |",
    ]
    if best:
        lat, fp32 = best.latency_ms, best.fp32_latency_ms
        lines.append(f"| best (trial {best.trial}) | {best.accuracy:.4f} | "
                     f"{'-' if lat is None else f'{lat:.3f}'} | {'-' if fp32 is None else f'{fp32:.3f}'} | "
                     f"{ratio_text(best.latency_ratio)}{plus_minus(best.latency_spread)}"
                     f" | {(best.size_bytes or 0) / 1e6:.3f} | {ratio_text(best.size_ratio)} |")
        a = s.all_int8
        if a and a["fallbacks"]:
            lat, fp32 = a.get("latency_ms"), a.get("fp32_latency_ms")
            where = f"trial {a['trial']}" if a.get("trial") else "measured apart"
            lines.append(f"| all-INT8 ({where}; the {a['fallbacks']} fallback(s) cost "
                         f"{100 * (a['fallback_cost'] or 0):+.0f}% latency) | - | "
                         f"{'-' if lat is None else f'{lat:.3f}'} | {'-' if fp32 is None else f'{fp32:.3f}'} | "
                         f"{ratio_text(a.get('latency_ratio'))}{plus_minus(a.get('latency_spread'))} | - | - |")
        lines += ["", f"Quantized ops: {best.quantized_ops}; fallback ops: "
                  + (", ".join(f"`{n}` ({d})" for n, d in best.fallback_dtypes.items()) or "none")
                  + (f"; recipes: {describe_recipes(best.recipes)}" if best.recipes else "")]
        lines += fallback_cost_table(s)
        if best.within_noise:
            lines += ["", "Within measurement noise of the best's latency: trial(s) "
                      + ", ".join(str(t) for t in best.within_noise)]
    lines += ["", curve, "## Where the time went", "", f"{cost_line(c)}; wall time {s.elapsed_s:.1f} s", "",
              "## Trials", "",
              "| trial | configuration | accuracy | passed | latency vs FP32 | seconds |", "|---|---|---|---|---|---|"]
    for t in trials:
        lines.append(f"| {t.trial} | {t.note or t.config_id} | {_acc(t)} | {'yes' if t.passed else 'no'} | "
                     f"{ratio_text(metric_ratio(t, b, 'latency_ms'))} | {t.duration_s:.1f} |")
    if s.stopped_trials:
        lines += ["", "Stopped (not finished, run again on resume): "
                  + "; ".join(f"trial {x['trial']} ({x['reason']})" for x in s.stopped_trials)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
