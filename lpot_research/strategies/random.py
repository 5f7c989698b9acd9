"""random: seeded random configurations from the whole space, never the same one twice.

Small spaces are walked as a seeded permutation (so the strategy ends when it has seen everything);
large ones are sampled per op and duplicates rejected. Results teach it nothing, so it proposes
`batch` configurations at a time (parallel workers take them at once).
"""

from __future__ import annotations

from collections.abc import Iterator

from lpot_research.quant.space import TuneConfig
from lpot_research.strategies.base import DEFAULT_SEED, Proposals, Strategy, StrategyContext, batched

PERMUTE_BELOW = 1 << 20  # spaces up to this size are permuted outright


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
        yield from batched(self.configs(ctx), self.batch)
        return f"its space is exhausted: all {ctx.space.size} configuration(s) were tried"
