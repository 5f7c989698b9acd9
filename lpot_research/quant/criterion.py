"""Accuracy criterion: one rule, used everywhere (`meets` is the only comparison with a threshold: `passes`
and the evaluation's early rejection both use it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from lpot_research.core.errors import ConfigError

KINDS = ("relative", "absolute")


def meets(value: float, threshold: float, higher_is_better: bool) -> bool:
    """`value` is at `threshold` or on its better side (inclusive, with a tiny epsilon so that e.g. 0.99
    vs 1.0*(1-0.01) is not lost to float rounding)."""
    eps = 1e-12 * max(1.0, abs(threshold))
    return value >= threshold - eps if higher_is_better else value <= threshold + eps


@dataclass(frozen=True)
class AccuracyCriterion:
    """relative: pass iff acc >= base - |base|*tol (higher is better) or acc <= base + |base|*tol;
    absolute: pass iff acc >= base - tol (higher is better) or acc <= base + tol.

    Inclusive on both kinds and both directions: meeting the threshold exactly passes.
    """

    kind: str = "relative"
    tolerance: float = 0.01
    higher_is_better: bool | None = None  # None: the metric's own direction (`for_metric`), else True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"accuracy_criterion.kind={self.kind!r} is unknown; valid choices: {list(KINDS)}")
        tol = float(self.tolerance)
        if not math.isfinite(tol) or tol < 0:
            raise ConfigError(f"accuracy_criterion.tolerance={self.tolerance!r} must be a finite number >= 0")
        if self.kind == "relative" and tol >= 1:
            raise ConfigError(
                f"accuracy_criterion.tolerance={self.tolerance!r} is a fraction for kind=relative "
                "(0.01 = 1%); use a value below 1 or kind=absolute"
            )

    def for_metric(self, metric: object) -> AccuracyCriterion:
        """This criterion with its direction taken from the metric when it was left unset."""
        if self.higher_is_better is not None:
            return self
        return replace(self, higher_is_better=bool(getattr(metric, "higher_is_better", True)))

    @property
    def hib(self) -> bool:
        return self.higher_is_better is not False

    def threshold(self, baseline: float) -> float:
        margin = abs(baseline) * self.tolerance if self.kind == "relative" else self.tolerance
        return baseline - margin if self.hib else baseline + margin

    def passes(self, accuracy: float | None, baseline: float) -> bool:
        if accuracy is None or not math.isfinite(accuracy):
            return False
        return meets(accuracy, self.threshold(baseline), self.hib)

    def describe(self) -> str:
        tol = f"{self.tolerance:.2%}" if self.kind == "relative" else f"{self.tolerance:g}"
        direction = "higher is better" if self.hib else "lower is better"
        return f"{self.kind} {tol} ({direction})"
