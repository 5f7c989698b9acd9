"""Tuning strategies. Built-in names map to classes (imported lazily); any Strategy subclass can be
used through a config's `_target_`."""

from __future__ import annotations

from typing import Any

from lpot_research.core._lazy import load_object
from lpot_research.core.errors import ConfigError
from lpot_research.strategies.base import DEFAULT_SEED, Result, Strategy, StrategyContext, rank_key, select_best

BUILTIN = {
    "basic": "lpot_research.strategies.basic:BasicStrategy",
    "mse": "lpot_research.strategies.mse:MSEStrategy",
    "exhaustive": "lpot_research.strategies.exhaustive:ExhaustiveStrategy",
    "random": "lpot_research.strategies.random:RandomStrategy",
    "bayesian": "lpot_research.strategies.bayesian:BayesianStrategy",
    "tpe": "lpot_research.strategies.tpe:TPEStrategy",
}

STRATEGIES = BUILTIN
__all__ = ["BUILTIN", "STRATEGIES", "Result", "Strategy", "StrategyContext", "make_strategy", "rank_key", "select_best"]


def make_strategy(name: str, seed: int = DEFAULT_SEED, **options: Any) -> Strategy:
    if name not in BUILTIN:
        raise ConfigError(f"unknown strategy {name!r}; valid strategies: {', '.join(BUILTIN)}")
    return load_object(BUILTIN[name])(seed=seed, **options)
