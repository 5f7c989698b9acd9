"""Built-in models. Each config in conf/model/ targets a spec class whose constructor only stores
arguments and whose `load(framework)` builds a `ModelBundle` (model + data + metric) in the form that
framework's adaptor takes: a PyTorch model also serves `onnxrt` (the adaptor exports it), while
TensorFlow and MXNet get the same trained weights in a Keras or Gluon counterpart."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        from lpot_research.errors import ConfigError

        raise ConfigError(f"model {model!r} is not available for framework {framework!r}; "
                          f"it is available for: {', '.join(supported)}")


def cache_dir() -> Path:
    """Where trained built-in weights are cached ($LPOT_RESEARCH_CACHE, else ~/.cache/lpot_research)."""
    d = Path(os.environ.get("LPOT_RESEARCH_CACHE", Path.home() / ".cache" / "lpot_research"))
    d.mkdir(parents=True, exist_ok=True)
    return d
