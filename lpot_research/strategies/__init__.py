"""Tuning strategies. Built-in names map to classes (imported lazily); any Strategy subclass can be
used through a config's `_target_`."""

from __future__ import annotations

import importlib
from typing import Any

from lpot_research.errors import ConfigError
from lpot_research.strategies.base import Result, Strategy, StrategyContext, rank_key, select_best

BUILTIN = {
    "basic": "lpot_research.strategies.basic:BasicStrategy",
}

__all__ = ["BUILTIN", "Result", "Strategy", "StrategyContext", "make_strategy", "rank_key", "select_best"]


def load_class(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_strategy(name: str, seed: int = 9527, **options: Any) -> Strategy:
    if name not in BUILTIN:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(BUILTIN)}")
    return load_class(BUILTIN[name])(seed=seed, **options)
