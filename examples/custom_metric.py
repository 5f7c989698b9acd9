"""A user metric: the error rate (lower is better). Any object with update / reset / result works;
`higher_is_better = False` makes the accuracy criterion and every ranking read it the other way.

    python tune.py +metric._target_=examples.custom_metric.ErrorRate
    lpot_research.tune(model, calib, eval_loader, metric=ErrorRate(), ...)
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ErrorRate:
    higher_is_better = False

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.wrong = 0
        self.total = 0

    def update(self, predictions: Any, labels: Any) -> None:
        scores = np.asarray(predictions.detach() if hasattr(predictions, "detach") else predictions, dtype=np.float32)
        labels = np.asarray(labels).reshape(-1)
        self.wrong += int((scores.argmax(axis=1) != labels).sum())
        self.total += len(labels)

    def result(self) -> float:
        return self.wrong / self.total if self.total else float("nan")
