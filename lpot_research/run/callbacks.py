"""What watches a run: the tuner calls each callback at the start, after the baseline, after every
trial and at the end (in the manner of Optuna's `optimize(..., callbacks=)`). A callback reads: it is
given a `RunView` of the run, never the tuner; the history is the run's state. Built in: the progress
log, the experiment tracker (W&B) and TensorBoard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lpot_research.measure.benchmark import plus_minus, ratio_text
from lpot_research.measure.objectives import Objective
from lpot_research.quant.criterion import AccuracyCriterion
from lpot_research.quant.space import TuningSpace
from lpot_research.run.history import TrialRecord, metric_ratio
from lpot_research.run.policy import ExitPolicy
from lpot_research.run.summary import EvaluationSummary, Summary
from lpot_research.run.tracking import TensorBoardDump, Tracker, trial_row

log = logging.getLogger("lpot_research")


class ReadHistory(Protocol):
    """The run's history, for reading (lpot_research.run.history.History)."""

    @property
    def trials(self) -> list[TrialRecord]: ...

    @property
    def stopped(self) -> list[dict[str, Any]]: ...

    @property
    def analysis(self) -> dict[str, Any]: ...

    @property
    def analysis_seconds(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class RunView:
    """What callbacks and the reporter see of a run, built by the tuner once the space exists (again once
    the baseline exists: `on_start`'s view has an empty `baseline` and no `evaluation` yet)."""

    names: dict[str, str]  # strategy, framework, model
    framework: str  # the adaptor's name
    space: TuningSpace
    criterion: AccuracyCriterion
    objective: Objective
    exit: ExitPolicy
    out: Path  # the run dir
    history: ReadHistory
    workers: int  # trials run at once (1: serial)
    cpu_notes: list[str]  # what this CPU changes in how the back end quantizes
    # the per-op outputs on the probe batch of `model` (None: the FP32 reference build), e.g. for TensorBoard
    op_outputs: Callable[[Any], dict[str, Any]]
    baseline: dict[str, Any]  # the FP32 baseline's accuracy and measurements
    evaluation: EvaluationSummary | None  # the evaluator: kind, samples, ranking samples, early stop


CALLBACK_EVENTS = ("on_start", "on_baseline", "on_trial", "on_finish", "close")  # what the tuner calls


class Callback:
    """Override any of these. `run` is a read-only `RunView` of the run (its history, space, criterion,
    objective, exit policy, names, baseline)."""

    def on_start(self, run: RunView) -> None:
        """Before the baseline."""

    def on_baseline(self, run: RunView, baseline: dict[str, Any]) -> None:
        """The FP32 baseline (measured now or read from the history of a resumed run)."""

    def on_trial(self, run: RunView, rec: TrialRecord, best: TrialRecord | None, model: Any, replayed: bool
                 ) -> None:
        """A finished trial (`replayed`: one of a resumed run, read from its history; `model` None)."""

    def on_finish(self, run: RunView, summary: Summary) -> None:
        """The run's summary (lpot_research.run.summary.Summary), once it is written."""

    def close(self, failed: bool) -> None:
        """Always called last, also when the run raised."""


class ProgressLog(Callback):
    """One line per trial: accuracy against FP32 (or where a rejected evaluation stopped), pass/fail,
    the objective, the latency ratio, the best so far and the trial's seconds."""

    def on_trial(self, run: RunView, rec: TrialRecord, best: TrialRecord | None, model: Any, replayed: bool
                 ) -> None:
        if replayed:
            return
        base = run.baseline["accuracy"]
        if rec.ok and rec.rejected:
            body = (f"acc <= {rec.accuracy_bound:.4f} fail (stopped after {rec.samples}/{run.evaluation.samples} "
                    f"samples: cannot reach {run.criterion.threshold(base):.4f})")
        elif rec.ok:
            delta = (rec.accuracy - base) / abs(base) if base else float("nan")
            body = f"acc {rec.accuracy:.4f} ({delta:+.2%}) {'PASS' if rec.passed else 'fail'}"
            if rec.passed:
                ratio = ratio_text(metric_ratio(rec, run.baseline, "latency_ms"))
                spread = plus_minus(rec.metrics.get("latency_spread"))
                body += f" | {run.objective.format(rec.objective)} | latency {ratio} fp32{spread}"
        else:
            body = f"FAILED: {rec.error}"
        best_s = "best -"
        if best is not None:
            acc = f"acc {best.accuracy:.4f}" if best.accuracy is not None else f"acc <= {best.accuracy_bound:.4f}"
            best_s = f"best #{best.trial} {acc}" + (f" {run.objective.format(best.objective)}" if best.passed
                                                     else " (not passing)")
        budget = ""
        if run.exit.timeout > 0:  # where the run stands against its time budget
            used = rec.elapsed_s / run.exit.timeout
            budget = f" | budget {min(used, 1):.0%} used, {max(run.exit.timeout - rec.elapsed_s, 0):.0f} s left"
        log.info("[%d/%d] %s | %s | %s | %.1fs%s", rec.trial, run.exit.max_trials, rec.note or rec.config_id, body,
                 best_s, rec.duration_s, budget)


class TrackerCallback(Callback):
    """An experiment `Tracker` (lpot_research.run.tracking) fed by the run: start, baseline, every trial
    (a resumed run replays its finished ones, so the curve is whole), the summary, finish."""

    def __init__(self, tracker: Tracker, config: dict[str, Any], run_dir: Path) -> None:
        self.tracker, self.config, self.run_dir = tracker, config, run_dir

    def on_start(self, run: RunView) -> None:
        self.tracker.start(run.names, self.config, self.run_dir)

    def on_baseline(self, run: RunView, baseline: dict[str, Any]) -> None:
        self.tracker.log_baseline({k: v for k, v in baseline.items() if not isinstance(v, dict)})

    def on_trial(self, run: RunView, rec: TrialRecord, best: TrialRecord | None, model: Any, replayed: bool
                 ) -> None:
        self.tracker.log_trial(trial_row(rec, best, run.baseline))

    def on_finish(self, run: RunView, summary: Summary) -> None:
        self.tracker.log_summary(summary)

    def close(self, failed: bool) -> None:
        self.tracker.finish(failed=failed)


class TensorBoardCallback(Callback):
    """`tensorboard: true`: histograms of every op's output on the probe batch, for the FP32 reference
    build (step 0) and for each trial's model (its trial number), plus accuracy scalars."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.dump: TensorBoardDump | None = None

    def _add(self, run: RunView, step: int, model: Any, accuracy: float | None) -> None:
        try:
            outputs = run.op_outputs(model)
        except Exception as e:  # a debugging aid must not end the run
            log.warning("tensorboard: per-op inspection failed at step %d (%s: %s)", step, type(e).__name__, e)
            return
        assert self.dump is not None
        self.dump.add(step, outputs, accuracy)

    def on_baseline(self, run: RunView, baseline: dict[str, Any]) -> None:
        self.dump = TensorBoardDump(self.logdir)
        self._add(run, 0, None, baseline["accuracy"])

    def on_trial(self, run: RunView, rec: TrialRecord, best: TrialRecord | None, model: Any, replayed: bool
                 ) -> None:
        if model is not None and self.dump is not None:
            self._add(run, rec.trial, model, rec.shown_accuracy)

    def close(self, failed: bool) -> None:
        if self.dump is not None:
            self.dump.close()
            self.dump = None
