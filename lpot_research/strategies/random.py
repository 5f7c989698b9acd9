"""random: seeded random configurations from the whole space, never the same one twice: the baseline the
other strategies are measured against (it learns nothing; on a space of many ops it covers a vanishing
share, which it says at the start).

Small spaces are walked as a seeded permutation (so the strategy ends when it has seen everything);
large ones are sampled per op and duplicates rejected. Results teach it nothing, so it proposes
`batch` configurations at a time (parallel workers take them at once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from lpot_research.quant.space import TuneConfig
from lpot_research.strategies.base import DEFAULT_SEED, Proposals, Strategy, StrategyContext, batched

PERMUTE_BELOW = 1 << 20  # spaces up to this size are permuted outright
log = logging.getLogger("lpot_research")


def coverage(tried: int | None, size: int) -> str:
    """What share of a space of `size` configurations `tried` of them are, e.g. "2.5e-25%"."""
    if tried is None:
        return "an unbounded number"
    share = min(1.0, tried / size)
    return f"{share:.0%}" if share >= 0.01 else f"{100 * share:.2g}%"


class RandomStrategy(Strategy):
    name = "random"

    def __init__(self, seed: int = DEFAULT_SEED, batch: int = 16, **options: object) -> None:
        super().__init__(seed, **options)
        self.batch = int(batch)

    def configs(self, ctx: StrategyContext) -> Iterator[TuneConfig]:
        space, rng = ctx.space, self.rng()
        size = space.size
        if size <= PERMUTE_BELOW:
            for k, flat in enumerate(rng.permutation(size), 1):
                yield space.config_at_flat(int(flat), f"random {k}")
            return
        seen: set[str] = set()
        while len(seen) < size:
            cfg = space.config_at([int(rng.integers(r)) for r in space.radices])
            if cfg.id not in seen:
                seen.add(cfg.id)
                yield cfg.with_note(f"random {len(seen)}")

    def proposals(self, ctx: StrategyContext) -> Proposals:
        log.info("random (a baseline: uniform configurations, it learns nothing): %.3g configuration(s); "
                 "max_trials=%s covers at most %s of them", ctx.space.size, ctx.max_trials,
                 coverage(ctx.max_trials, ctx.space.size))
        yield from batched(self.configs(ctx), self.batch)
        return f"its space is exhausted: all {ctx.space.size} configuration(s) were tried"
