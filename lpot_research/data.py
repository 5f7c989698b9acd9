"""Small re-iterable dataloaders over in-memory arrays (torch tensors or numpy arrays)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class ArrayLoader:
    """Yields (inputs, labels) batches in order; `inputs` may be one array or a tuple of arrays."""

    def __init__(self, inputs: Any, labels: Any, batch_size: int = 64) -> None:
        n = len(inputs[0]) if isinstance(inputs, tuple) else len(inputs)
        if n != len(labels):
            raise ValueError(f"inputs have {n} samples but labels have {len(labels)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        self.inputs, self.labels, self.batch_size, self.n = inputs, labels, batch_size, n

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for i in range(0, self.n, self.batch_size):
            s = slice(i, i + self.batch_size)
            x = tuple(a[s] for a in self.inputs) if isinstance(self.inputs, tuple) else self.inputs[s]
            yield x, self.labels[s]
