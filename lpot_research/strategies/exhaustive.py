"""exhaustive: every quantized configuration of the space, in a deterministic order: a baseline, and
the answer on a space small enough to walk (it says at the start how much of it max_trials covers).

As in the seed, only quantized choices are walked (an op that has none keeps its only option); the
sampling size is the slowest-changing dimension and the last op the fastest. Proposed `batch` at a
time (results do not change the walk; parallel workers take a batch at once).
"""

from __future__ import annotations

import itertools
import logging

from lpot_research.strategies.base import DEFAULT_SEED, Proposals, Strategy, StrategyContext, batched
from lpot_research.strategies.random import coverage

log = logging.getLogger("lpot_research")


class ExhaustiveStrategy(Strategy):
    name = "exhaustive"

    def __init__(self, seed: int = DEFAULT_SEED, batch: int = 16, **options: object) -> None:
        super().__init__(seed, **options)
        self.batch = int(batch)

    def proposals(self, ctx: StrategyContext) -> Proposals:
        space = ctx.space
        per_op = [[i for i, o in enumerate(opts) if o.quantized] or [0] for _, opts in space.options]
        size = space.quantized_size()
        log.info("exhaustive: %d quantized configuration(s) to walk", size)
        if ctx.max_trials is not None and size > ctx.max_trials:
            log.warning("exhaustive: the space (%.3g configs) exceeds max_trials (%d); only the first %d will be tried "
                        "(%s of it)", size, ctx.max_trials, ctx.max_trials, coverage(ctx.max_trials, size))
        walk = itertools.product(range(len(space.sampling_sizes)), *(range(len(v)) for _, v in space.recipes), *per_op)
        yield from batched((space.config_at(index, f"exhaustive {k}/{size}") for k, index in enumerate(walk, 1)),
                             self.batch)
        return f"all {size} quantized configuration(s) were tried"
