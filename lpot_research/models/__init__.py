"""Built-in models. Each config in conf/model/ targets a spec class whose constructor only stores
arguments and whose `load()` builds a `ModelBundle` (model + data + metric)."""

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


def cache_dir() -> Path:
    """Where trained built-in weights are cached ($LPOT_RESEARCH_CACHE, else ~/.cache/lpot_research)."""
    d = Path(os.environ.get("LPOT_RESEARCH_CACHE", Path.home() / ".cache" / "lpot_research"))
    d.mkdir(parents=True, exist_ok=True)
    return d
