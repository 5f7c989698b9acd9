"""Built-in metrics. A metric has update(predictions, labels) / reset() / result() -> float."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from lpot_research.errors import ConfigError


class Metric(Protocol):
    higher_is_better: bool

    def reset(self) -> None: ...
    def update(self, predictions: Any, labels: Any) -> None: ...
    def result(self) -> float: ...


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors, without importing torch here
        x = x.detach()
        if hasattr(x, "dequantize") and getattr(x, "is_quantized", False):
            x = x.dequantize()
        return x.float().cpu().numpy()
    return np.asarray(x)


class TopK:
    """Fraction of samples whose label is among the k highest scores."""

    higher_is_better = True

    def __init__(self, k: int = 1) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"metric k={k!r} must be an int >= 1")
        self.k = k
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, predictions: Any, labels: Any) -> None:
        scores = to_numpy(predictions)
        labels = to_numpy(labels).astype(np.int64).reshape(-1)
        if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
            raise ValueError(f"TopK expects scores of shape (N, C) and N labels, got {scores.shape} and {labels.shape}")
        if self.k > scores.shape[1]:
            raise ConfigError(f"metric k={self.k} exceeds the number of classes ({scores.shape[1]})")
        topk = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        self.correct += int((topk == labels[:, None]).any(axis=1).sum())
        self.total += labels.shape[0]

    def result(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def __repr__(self) -> str:
        return f"TopK(k={self.k})"
