"""Batches of any framework, without importing one: split a dataloader's batch into (inputs, labels),
count its samples, take samples from it and join batches.

Inputs are one array/tensor, a tuple or list of them (a model with several inputs), or a dict of them
(input name -> array, the ONNX Runtime habit). Labels are an array/tensor or a list (e.g. strings).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lpot_research.core.errors import DataError


def split_batch(batch: Any, what: str) -> tuple[Any, Any]:
    """A dataloader's batch as (inputs, labels): it must be a pair."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    kind = f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, tuple | list) else "")
    raise DataError(f"the {what} dataloader must yield (inputs, labels) pairs (labels may be None for calibration); "
                    f"it yielded {kind}")


def batches(loader: Iterable[Any], what: str) -> Iterator[tuple[Any, Any]]:
    """The (inputs, labels) batches of a dataloader, raising a clear error if it yields none."""
    n = 0
    for batch in loader:
        n += 1
        yield split_batch(batch, what)
    if n == 0:
        raise DataError(f"the {what} dataloader yielded no batch; give it at least one (inputs, labels) batch")


def _length(x: Any) -> int:
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return len(x)


def batch_len(inputs: Any) -> int:
    """Samples in one batch of inputs."""
    if isinstance(inputs, Mapping):
        return _length(next(iter(inputs.values())))
    return _length(inputs[0] if isinstance(inputs, tuple | list) else inputs)


def take(x: Any, index: Sequence[int] | np.ndarray, inputs: bool = True) -> Any:
    """The samples `index` of a batch of inputs (`inputs=True`) or of labels, in the same structure."""
    idx = np.asarray(index, dtype=np.int64)
    if isinstance(x, Mapping):
        return {k: take(v, idx) for k, v in x.items()}
    if inputs and isinstance(x, tuple | list):
        return type(x)(take(v, idx) for v in x)
    if hasattr(x, "index_select"):  # torch, without importing it
        import torch

        return x.index_select(0, torch.as_tensor(idx, device=x.device))
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and hasattr(x, "shape"):
        return np.asarray(x)[idx]
    return [x[i] for i in idx]  # a list of labels (e.g. strings, dicts)


def first(x: Any, n: int, inputs: bool = True) -> Any:
    """The first `n` samples of a batch."""
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if inputs and isinstance(x, tuple | list):
        return type(x)(v[:n] for v in x)
    return x[:n]


def concat(parts: Sequence[Any], inputs: bool = True) -> Any:
    """Batches joined along the sample axis, in the structure of the first."""
    head = parts[0]
    if isinstance(head, dict):
        return {k: concat([p[k] for p in parts]) for k in head}
    if inputs and isinstance(head, tuple | list):
        return type(head)(concat([p[i] for p in parts]) for i in range(len(head)))
    if hasattr(head, "index_select"):
        import torch

        return torch.cat(list(parts))
    if isinstance(head, np.ndarray):
        return np.concatenate(parts)
    return [item for p in parts for item in p]


def limited_batches(loader: Iterable[Any], limit: int, what: str) -> Iterator[Any]:
    """The input batches of a dataloader, the last one cut, so that `limit` samples come out (fewer
    when the dataloader holds fewer)."""
    seen = 0
    for inputs, _ in batches(loader, what):
        take_n = min(batch_len(inputs), limit - seen)
        yield first(inputs, take_n)
        seen += take_n
        if seen >= limit:
            return
