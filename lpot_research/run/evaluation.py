"""Measuring a model's accuracy, and stopping as soon as a trial can no longer meet the criterion.

Three kinds of evaluation:
- a metric that is a mean of per-sample scores (it has `sample_scores(predictions, labels)` and a
  `sample_range`: top-k, exact match, character accuracy, user metrics that declare it; not a subclass
  that overrides `result`, which is scored as it aggregates, on the whole set). The
  evaluation data is held in memory and scored sample by sample, which allows
  - an informative order: once the first INT8 trial is scored, the samples on which it and FP32
    disagree most come first, then those FP32 gets wrong, and the ones every model gets right last
    (the order holds for the whole run);
  - a ranking subset: a failing configuration is ranked by its accuracy on the first
    `ranking_samples` samples of that order (at most half the set, so that early rejection can save
    the other half of a small set), a number that does not depend on where its evaluation stopped;
  - exact early rejection: after the ranking subset, a trial stops as soon as the criterion cannot be
    met whatever the remaining samples score (the best possible mean is already below the threshold).
    A passing trial is always scored on the whole set, so pass/fail and every ranking decision are
    the same as with full evaluation.
- any other metric (F1, COCO mAP): the whole set, batch by batch.
- the user's `eval_func(model)`: called once; it decides everything itself.
Between batches the run's time budget is checked (lpot_research.core.deadline).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpot_research.core import deadline
from lpot_research.core.batches import batch_len, batches, concat, take
from lpot_research.core.errors import ConfigError, DataError
from lpot_research.quant.criterion import meets

log = logging.getLogger("lpot_research")


def _owner(cls: type, attr: str) -> type | None:
    """The class of `cls`'s MRO that defines `attr`."""
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def scored_per_sample(metric: Any) -> bool:
    """Whether the run may score `metric` sample by sample: it declares `sample_scores`, and its `result`
    is the one written beside them (a subclass that overrides `result` below the class defining
    `sample_scores`, e.g. a TopK that aggregates its own way, is scored as it says: on the whole set)."""
    if not callable(getattr(metric, "sample_scores", None)):
        return False
    cls = type(metric)
    scores, result = _owner(cls, "sample_scores"), _owner(cls, "result")
    if scores is None or result is None or result is scores or not issubclass(result, scores):
        return True
    log.info("metric %s overrides result() of %s, which defines sample_scores(): it is scored on the whole set "
             "(no per-sample ranking or early rejection)", cls.__name__, scores.__name__)
    return False


@dataclass
class Outcome:
    accuracy: float | None  # on the whole set (None when rejected)
    rank_accuracy: float | None  # on the ranking subset (= accuracy when there is none)
    samples: int | None = None  # samples scored (None for an eval_func)
    rejected: bool = False
    bound: float | None = None  # when rejected: the best whole-set accuracy still reachable
    scores: np.ndarray | None = None  # per-sample scores by sample index (NaN where not scored)


def progress(items: Any, what: str, total: int | None = None, unit: str = "batch") -> Any:
    """A progress bar on a terminal (evaluation batches, sensitivity ops), shown when the work lasts more
    than a few seconds (none in logs and CI: tqdm turns itself off when stderr is not a terminal)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with optuna
        return items
    return tqdm(items, desc=what, total=total, delay=3, leave=False, disable=None, unit=unit)


def check_metric(metric: Any) -> None:
    missing = [m for m in ("reset", "update", "result") if not callable(getattr(metric, m, None))]
    if missing:
        raise ConfigError(f"metric={metric!r} is not a metric: it lacks {missing}; a metric has update(predictions, "
                          "labels), reset() and result() -> float (see lpot_research.measure.metrics)")


def as_accuracy(value: Any, what: str) -> float:
    """A metric's or eval_func's value as a finite float (a bool or a non-number is an error)."""
    if isinstance(value, bool | np.bool_):
        raise DataError(f"the evaluation of the {what} returned {value!r}, a bool; return the metric's value as a "
                        "number")
    try:
        acc = float(value)
    except (TypeError, ValueError):
        raise DataError(f"the evaluation of the {what} returned {value!r}, not a number") from None
    if not math.isfinite(acc):
        raise DataError(f"the evaluation of the {what} returned {acc}; the metric must give a finite number")
    return acc


class Evaluator:
    """The accuracy of models on one evaluation (see the module docstring)."""

    def __init__(self, adaptor: Any, dataloader: Iterable[Any] | None, metric: Any = None,
                 eval_func: Callable[[Any], Any] | None = None, ranking_samples: int = 300,
                 early_stop: bool = True) -> None:
        if eval_func is None:
            check_metric(metric)
        self.adaptor, self.dataloader, self.metric, self.eval_func = adaptor, dataloader, metric, eval_func
        self.ranking_samples, self.early_stop = ranking_samples, early_stop
        self.per_sample = eval_func is None and scored_per_sample(metric)
        rng = getattr(metric, "sample_range", None)
        self.sample_range: tuple[float, float] | None = tuple(rng) if rng is not None else None  # type: ignore
        self.order: np.ndarray | None = None  # None until the informative order is set
        self._data: tuple[Any, Any, int, int] | None = None  # (inputs, labels, n, batch size)
        self._ordered: list[tuple[np.ndarray, Any, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:  # to a worker process: the data once (its dataloader), not thrice
        return {**self.__dict__, "_data": None, "_ordered": None}

    @property
    def kind(self) -> str:
        if self.eval_func is not None:
            return "eval_func"
        return "per-sample" if self.per_sample else "whole-set"

    # ------------------------------------------------------------------ the data
    def _load(self) -> tuple[Any, Any, int, int]:
        if self._data is None:
            parts = list(batches(self.dataloader, "evaluation"))
            inputs = concat([p[0] for p in parts])
            labels = concat([p[1] for p in parts], inputs=False)
            self._data = (inputs, labels, batch_len(inputs), batch_len(parts[0][0]))
        return self._data

    @property
    def samples(self) -> int | None:
        """Samples in the evaluation set (None for an eval_func)."""
        if self.eval_func is not None:
            return None
        if self.per_sample:
            return self._load()[2]
        return sum(batch_len(x) for x, _ in batches(self.dataloader, "evaluation"))

    def _ranking(self, n: int) -> int:
        return max(1, min(self.ranking_samples, n // 2))

    @property
    def ranking_size(self) -> int | None:
        return self._ranking(self._load()[2]) if self.per_sample else None

    def set_order(self, order: Iterable[int]) -> None:
        n = self._load()[2]
        order = np.asarray(list(order), dtype=np.int64)
        if sorted(order.tolist()) != list(range(n)):
            raise DataError(f"the evaluation order on record is not a permutation of the {n} evaluation samples "
                            "(the evaluation data changed since the run started)")
        self.order, self._ordered = order, None

    def informative_order(self, fp32: np.ndarray, int8: np.ndarray) -> np.ndarray:
        """Samples by decreasing disagreement between FP32's and an INT8 model's scores; among equals,
        those FP32 scores worst first. The samples left for last are then those every model scores well:
        the best case early rejection assumes for the unscored rest is close to the truth, so the
        bound is tight early (on a metric where FP32 misses many samples, e.g. 27% on MiniLM, scoring
        those late would keep the bound loose until the end)."""
        fp32, int8 = np.asarray(fp32, float), np.asarray(int8, float)
        hib = getattr(self.metric, "higher_is_better", True) is not False
        worst_first = fp32 if hib else -fp32
        return np.lexsort((np.arange(len(fp32)), worst_first, -np.abs(fp32 - int8)))

    def _batches(self) -> list[tuple[np.ndarray, Any, Any]]:
        if self._ordered is None:
            inputs, labels, n, b = self._load()
            order = self.order if self.order is not None else np.arange(n)
            self._ordered = [(order[i:i + b], take(inputs, order[i:i + b]), take(labels, order[i:i + b], False))
                             for i in range(0, n, b)]
        return self._ordered

    # ------------------------------------------------------------------ evaluating
    def evaluate(self, model: Any, what: str, threshold: float | None = None, higher_is_better: bool = True
                 ) -> Outcome:
        """The accuracy of `model`. With a threshold (and the order set), stop early once it cannot be met."""
        if self.eval_func is not None:
            acc = as_accuracy(self.eval_func(model), what)
            return Outcome(acc, acc)
        if not self.per_sample:
            self.metric.reset()
            for inputs, labels in progress(batches(self.dataloader, "evaluation"), what):
                deadline.check()
                self.metric.update(self.adaptor.predict(model, inputs), labels)
            acc = as_accuracy(self.metric.result(), what)
            return Outcome(acc, acc)
        return self._per_sample(model, what, threshold, higher_is_better)

    def _per_sample(self, model: Any, what: str, threshold: float | None, hib: bool) -> Outcome:
        n = self._load()[2]
        ranked = self.order if self.order is not None else np.arange(n)
        r = self._ranking(n)
        can_stop = (self.early_stop and threshold is not None and self.order is not None
                    and self.sample_range is not None)
        lo, hi = self.sample_range or (0.0, 1.0)
        scores = np.full(n, np.nan)
        seen, total = 0, 0.0
        for ids, inputs, labels in progress(self._batches(), what):
            deadline.check()
            s = np.asarray(self.metric.sample_scores(self.adaptor.predict(model, inputs), labels), dtype=np.float64)
            s = s.reshape(-1)
            if s.shape[0] != len(ids) or not np.isfinite(s).all():
                raise DataError(f"the evaluation of the {what}: {type(self.metric).__name__}.sample_scores gave "
                                f"{s.shape[0]} score(s) for {len(ids)} samples"
                                + ("" if s.shape[0] != len(ids) else ", some not finite"))
            scores[ids] = s
            seen += len(ids)
            total += float(s.sum())
            if can_stop and seen >= r and seen < n:
                best = (total + (n - seen) * (hi if hib else lo)) / n  # finite: every score was checked
                if not meets(best, threshold, hib):
                    return Outcome(None, float(np.mean(scores[ranked[:r]])), seen, True, best, scores)
        acc = as_accuracy(math.fsum(scores) / n, what)
        return Outcome(acc, float(np.mean(scores[ranked[:r]])), n, False, None, scores)

    def rank_accuracy(self, scores: np.ndarray) -> float:
        """The ranking accuracy of fully scored samples under the current order."""
        n = len(scores)
        ranked = self.order if self.order is not None else np.arange(n)
        return float(np.mean(scores[ranked[:self._ranking(n)]]))
