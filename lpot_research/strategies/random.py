"""random: seeded random configurations from the whole space, never the same one twice.

Small spaces are walked as a seeded permutation (so the strategy ends when it has seen everything);
large ones are sampled per op and duplicates rejected.
"""

from __future__ import annotations

from lpot_research.strategies.base import Proposals, Strategy, StrategyContext

PERMUTE_BELOW = 1 << 20  # spaces up to this size are permuted outright


class RandomStrategy(Strategy):
    name = "random"

    def proposals(self, ctx: StrategyContext) -> Proposals:
        space, rng = ctx.space, self.rng()
        size = space.size
        if size <= PERMUTE_BELOW:
            for k, flat in enumerate(rng.permutation(size), 1):
                yield space.config_at_flat(int(flat), f"random {k}")
            return f"its space is exhausted: all {size} configuration(s) were tried"
        seen: set[str] = set()
        k = 0
        while len(seen) < size:
            cfg = space.config_at([int(rng.integers(r)) for r in space.radices])
            if cfg.id in seen:
                continue
            seen.add(cfg.id)
            k += 1
            yield cfg.with_note(f"random {k}")
        return f"its space is exhausted: all {size} configuration(s) were tried"
