"""Built-in models. Each config in conf/model/ targets a spec class whose constructor only stores
arguments and whose `load(framework)` builds a `ModelBundle` (model + data + metric) in the form that
framework's adaptor takes: a PyTorch model also serves `onnxrt` (the adaptor exports it), while
TensorFlow and MXNet get the same trained weights in a Keras or Gluon counterpart."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
# Trained weights of the built-in models, produced by scripts/train_builtin_weights.py. They ship
# because training is not bit-identical across CPU classes (AVX2 and AVX-512 kernels round
# differently), so a model trained on each machine would start every run from a different FP32 model.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass
class ModelBundle:
    name: str
    model: Any
    calib_dataloader: Iterable[Any]
    eval_dataloader: Iterable[Any]
    metric: Any
    example_inputs: Any
    bench_batch_size: int = 32
    info: dict[str, Any] = field(default_factory=dict)


def check_framework(model: str, framework: str, supported: tuple[str, ...]) -> None:
    if framework not in supported:
        from lpot_research.core.errors import ConfigError

        raise ConfigError(f"model {model!r} is not available for framework {framework!r}; "
                          f"it is available for: {', '.join(supported)}")


def cache_dir() -> Path:
    """Where trained built-in weights are cached ($LPOT_RESEARCH_CACHE, else ~/.cache/lpot_research)."""
    d = Path(os.environ.get("LPOT_RESEARCH_CACHE", Path.home() / ".cache" / "lpot_research"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def trained_weights(name: str, key: str, train: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays of a built-in model's trained weights for one recipe (`key` hashes it): the copy
    shipped with the package, else a cached copy, else `train()` (then cached). Set
    LPOT_RESEARCH_RETRAIN=1 to ignore both copies (scripts/train_builtin_weights.py does)."""
    filename = f"{name}-{key}.npz"
    retrain = os.environ.get("LPOT_RESEARCH_RETRAIN") == "1"
    for path in () if retrain else (SHIPPED_WEIGHTS / filename, cache_dir() / filename):
        if path.exists():
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
    t0 = time.perf_counter()
    arrays = train()
    path = cache_dir() / filename
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    log.info("trained %s in %.1f s (cached at %s)", name, time.perf_counter() - t0, path)
    return arrays
