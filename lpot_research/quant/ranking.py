"""The one place that ranks configurations: best-of, the strategies' score, the Pareto front and
whether two latencies are within noise of each other.

Everything ranks objects with the attributes of a `Result` / `TrialRecord`: `ok`, `passed`,
`accuracy`, `objective`, `trial`. For a configuration that failed the criterion, `accuracy` is its
ranking accuracy (see lpot_research.run.evaluation): the same number whether or not its evaluation
stopped early, so every decision made from it is the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class Ranked(Protocol):
    ok: bool
    passed: bool
    accuracy: float | None
    objective: float | None
    trial: int


def decision_accuracy(r: Any) -> float | None:
    """The accuracy decisions are made on: a record's `decision_accuracy` (ranking accuracy when it
    failed), else `accuracy` (a strategy's Result already holds that)."""
    return getattr(r, "decision_accuracy", r.accuracy)


def rank_key(r: Ranked, higher_is_better: bool = True) -> tuple[Any, ...]:
    """Sort key, best first: passing before failing-the-criterion before errored; among passing the
    lower objective wins (then the better accuracy); among failing the better (ranking) accuracy;
    ties go to the earlier trial. A failing config's objective is not used: it is measured only when
    a report needs it, and a decision must not depend on that."""
    acc = decision_accuracy(r)
    acc = acc if acc is not None else float("-inf") if higher_is_better else float("inf")
    signed = -acc if higher_is_better else acc
    if not r.ok:
        return (2, 0.0, 0.0, r.trial)
    if r.passed:
        obj = r.objective if r.objective is not None else float("inf")
        return (0, obj, signed, r.trial)
    return (1, signed, 0.0, r.trial)


def select_best(results: Iterable[Any], higher_is_better: bool = True) -> Any:
    """The best of `results` (None when none succeeded)."""
    ok = [r for r in results if r.ok]
    return min(ok, key=lambda r: rank_key(r, higher_is_better)) if ok else None


def better(best: Any, candidate: Any, higher_is_better: bool = True) -> Any:
    """The best after `candidate` joins (the ranking is a total order, so best-of-two carries over)."""
    if best is None:
        return candidate if candidate.ok else None
    return select_best([best, candidate], higher_is_better)


def score(r: Ranked, threshold: float, baseline_accuracy: float, baseline_objective: float | None,
          higher_is_better: bool = True) -> float | None:
    """One number to maximize, for model-based strategies. A passing config scores in [0, 10]: 10
    minus its objective relative to FP32 (capped at 10x), so faster is higher; a failing one scores
    below -1, lower the further it misses the threshold; so every passing config outranks every
    failing one. None for errored trials."""
    if not r.ok or r.accuracy is None:
        return None
    if r.passed:
        obj = r.objective if r.objective is not None else 1.0
        ratio = obj / baseline_objective if baseline_objective and baseline_objective > 0 else obj
        return 10.0 - min(max(ratio, 0.0), 10.0)
    miss = (threshold - r.accuracy) if higher_is_better else (r.accuracy - threshold)
    return -1.0 - 100.0 * max(miss, 0.0) / max(abs(baseline_accuracy), 1e-12)


def pareto_front(records: Sequence[Any], higher_is_better: bool = True) -> list[Any]:
    """Trials no other trial beats on both accuracy and objective (those with both measured), one
    per (accuracy, objective) point, by increasing objective."""
    ok = [r for r in records if r.ok and r.objective is not None and r.accuracy is not None]

    def dominates(a: Any, b: Any) -> bool:
        acc_ge = a.accuracy >= b.accuracy if higher_is_better else a.accuracy <= b.accuracy
        acc_gt = a.accuracy > b.accuracy if higher_is_better else a.accuracy < b.accuracy
        return acc_ge and a.objective <= b.objective and (acc_gt or a.objective < b.objective)

    front = [r for r in ok if not any(dominates(o, r) for o in ok)]
    uniq: dict[tuple[float, float], Any] = {}
    for r in front:
        uniq.setdefault((r.accuracy, r.objective), r)
    return sorted(uniq.values(), key=lambda r: r.objective)


def within_noise(a: float | None, a_spread: float | None, b: float | None, b_spread: float | None) -> bool:
    """Whether two measured values (e.g. latency ratios), each with its relative spread, overlap:
    then the difference between them is not a measured one."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    lo_a, hi_a = a * (1 - (a_spread or 0.0)), a * (1 + (a_spread or 0.0))
    lo_b, hi_b = b * (1 - (b_spread or 0.0)), b * (1 + (b_spread or 0.0))
    return lo_a <= hi_b and lo_b <= hi_a
