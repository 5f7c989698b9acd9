"""The strategy protocol.

A strategy is a generator: it yields the next `TuneConfig` to try and receives that config's
`Result` back (`result = yield config`). It keeps no state but what it derives from the results it
is sent, owns its RNG (seeded), and returns when it has nothing left to propose. The tuner answers
configs that were already evaluated from its records without spending a trial, and enforces the exit
policy, so a strategy never needs to track trials, time or duplicates itself.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lpot_research.criterion import AccuracyCriterion
from lpot_research.space import TuneConfig, TuningSpace


@dataclass(frozen=True)
class Result:
    """What a strategy learns about one configuration."""

    config: TuneConfig
    ok: bool  # False when quantization or evaluation failed
    accuracy: float | None
    objective: float | None
    passed: bool
    trial: int


@dataclass
class StrategyContext:
    space: TuningSpace
    criterion: AccuracyCriterion
    baseline_accuracy: float
    baseline_objective: float | None = None  # the FP32 model's objective value (e.g. latency)
    max_trials: int | None = None  # for information (the tuner enforces it)
    # True when the first passing config ends the run (exit_policy.timeout == 0): a strategy then
    # proposes in order of preference rather than e.g. bisecting from a passing upper bound
    first_pass_ends: bool = False
    # Per-op output error of a quantized config vs FP32 ({op: normalized mse}); used by mse.
    op_errors: Callable[[TuneConfig], dict[str, float]] | None = None

    def score(self, r: Result) -> float | None:
        """One number to maximize, for model-based strategies. A passing config scores in [0, 10]:
        10 minus its objective relative to FP32 (capped at 10x), so faster is higher; a failing one
        scores below -1, lower the further it misses the accuracy threshold; so every passing config
        outranks every failing one. None for errored trials."""
        if not r.ok or r.accuracy is None:
            return None
        if r.passed:
            obj = r.objective if r.objective is not None else 1.0
            base = self.baseline_objective
            ratio = obj / base if base and base > 0 else obj
            return 10.0 - min(max(ratio, 0.0), 10.0)
        thr = self.criterion.threshold(self.baseline_accuracy)
        miss = (thr - r.accuracy) if self.criterion.hib else (r.accuracy - thr)
        return -1.0 - 100.0 * max(miss, 0.0) / max(abs(self.baseline_accuracy), 1e-12)


Proposals = Generator[TuneConfig, Result, None]


def rank_key(r: Result, higher_is_better: bool = True) -> tuple[Any, ...]:
    """Sort key, best first: passing before failing-the-criterion before errored; among passing the
    lower objective wins (then higher accuracy); otherwise the better accuracy wins."""
    acc = r.accuracy if r.accuracy is not None else float("-inf") if higher_is_better else float("inf")
    signed = -acc if higher_is_better else acc
    obj = r.objective if r.objective is not None else float("inf")
    if not r.ok:
        return (2, 0.0, 0.0, r.trial)
    if r.passed:
        return (0, obj, signed, r.trial)
    return (1, signed, obj, r.trial)


def select_best(results: Iterable[Result], higher_is_better: bool = True) -> Result | None:
    ok = [r for r in results if r.ok]
    return min(ok, key=lambda r: rank_key(r, higher_is_better)) if ok else None


class Strategy:
    """Base class. Subclasses implement `proposals`; users subclass it in their own modules and
    point a config's `_target_` at the subclass."""

    name = "base"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # user subclasses are named after their class
            cls.name = cls.__name__

    def __init__(self, seed: int = 9527, **options: Any) -> None:
        self.seed = int(seed)
        self.options = options

    def rng(self) -> np.random.Generator:
        """A fresh generator per run: the same seed gives the same sequence, in any process."""
        return np.random.default_rng(self.seed)

    def proposals(self, ctx: StrategyContext) -> Proposals:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"
