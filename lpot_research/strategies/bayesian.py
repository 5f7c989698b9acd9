"""bayesian: a Gaussian process over a one-hot encoding of per-op choices, proposing the unevaluated
candidates with the highest expected improvement, `batch` at a time by the kriging believer rule: after
each pick the GP is refit as if the pick had scored its predicted mean, so the next pick goes where
that leaves most to gain (parallel workers evaluate the batch together). The initial design is what
the run knows (`prior`, the default; `start_from_what_the_run_knows`, shared with tpe): every model-wise
configuration (one batch), then, from the best of them, the run's per-op sensitivity ladder (its 1, 2, 4,
... most sensitive ops falling back) and the configs that fill it between its rungs; without it (or
without sensitivity), the recommended model-wise config and random ones up to `n_init`.

The target is `StrategyContext.score` (passing configs by objective, failing ones by how far they miss).
Candidates are every unevaluated configuration when the space is small, else a seeded pool of random
configurations plus one- and two-op mutations of the best ones. The strategy ends when no unevaluated
candidate is left: on a small space it stops after trying everything instead of looping on
"already evaluated" as the anchor's does.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import norm

from lpot_research.quant.space import TuningSpace
from lpot_research.strategies.base import (
    DEFAULT_SEED,
    Proposals,
    Strategy,
    StrategyContext,
    start_from_what_the_run_knows,
)

Index = tuple[int, ...]  # a point of the space: one index per dimension (sampling size, then each op)


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = 0.01) -> np.ndarray:
    sigma = np.maximum(sigma, 1e-9)
    z = (mu - best - xi) / sigma
    return (mu - best - xi) * norm.cdf(z) + sigma * norm.pdf(z)


class BayesianStrategy(Strategy):
    name = "bayesian"

    def __init__(self, seed: int = DEFAULT_SEED, n_init: int = 4, pool: int = 2048, batch: int = 4,
                 prior: bool = True, **options: object) -> None:
        super().__init__(seed, **options)
        self.n_init, self.pool, self.batch = int(n_init), int(pool), max(1, int(batch))
        self.prior = bool(prior)

    def candidates(self, ctx: StrategyContext, rng: np.random.Generator, seen: set[Index],
                   ranked: list[Index]) -> list[Index]:
        """Unevaluated points as per-dimension indices (see `TuningSpace.radices`): configurations are
        built only for the picks, so a pool of thousands at 100 ops costs milliseconds, not seconds."""
        space = ctx.space
        radices = space.radices
        if space.size <= self.pool:
            grid = np.unravel_index(np.arange(space.size), radices)  # mixed radix, last op fastest
            return [i for i in zip(*(d.tolist() for d in grid), strict=True) if i not in seen]
        out: dict[Index, None] = {}
        for base in ranked[:8]:  # local moves around the best configurations so far
            for _ in range(self.pool // 16):
                idx = list(base)
                for d in rng.choice(len(radices), size=min(len(radices), int(rng.integers(1, 3))), replace=False):
                    idx[d] = int(rng.integers(radices[d]))
                if (t := tuple(idx)) not in seen:
                    out.setdefault(t)
        # one call for the whole pool: the same draws, in the same order, as one call per digit
        for t in map(tuple, rng.integers(np.tile(radices, (self.pool, 1))).tolist()):
            if t not in seen:
                out.setdefault(t)
        return list(out)

    def proposals(self, ctx: StrategyContext) -> Proposals:
        space, rng = ctx.space, self.rng()
        seen: set[Index] = set()
        points: list[Index] = []
        ys: list[float | None] = []
        first = tuple(space.index_of(space.model_wise_configs()[0]))  # an informed first point
        k = 0
        if self.prior:  # the initial design: what the run knows
            for result in (yield from start_from_what_the_run_knows(ctx, self.name)):
                pick = tuple(space.index_of(result.config))
                seen.add(pick)
                points.append(pick)
                ys.append(ctx.score(result))
            k = len(points)
        while True:
            order = sorted(range(len(ys)), key=lambda i: -(ys[i] if ys[i] is not None else -np.inf))
            cands = self.candidates(ctx, rng, seen, [points[i] for i in order])
            if not cands:
                return "its space is exhausted: no unevaluated candidate is left"
            picks = (self.initial(rng, cands, first, seen, k) if k < self.n_init
                     else self.believer(space, cands, points, ys))
            k += len(picks)
            results = yield [space.config_at(p, f"bayesian {k - len(picks) + i} ({how})")
                             for i, (p, how) in enumerate(picks, 1)]
            for (pick, _), result in zip(picks, results, strict=True):
                seen.add(pick)
                points.append(pick)
                ys.append(ctx.score(result))

    def initial(self, rng: np.random.Generator, cands: list[Index], first: Index, seen: set[Index],
                k: int) -> list[tuple[Index, str]]:
        """The initial design: the model-wise config first, then distinct random candidates up to n_init."""
        picks = [(first, "initial: model-wise")] if k == 0 and first not in seen else []
        rest = [c for c in cands if c != first]
        for i in rng.permutation(len(rest))[: max(0, self.n_init - k - len(picks))]:
            picks.append((rest[int(i)], "initial: random"))
        return picks or [(rest[0] if rest else cands[0], "initial: random")]

    def believer(self, space: TuningSpace, cands: list[Index], points: list[Index], ys: list[float | None]
                 ) -> list[tuple[Index, str]]:
        """Up to `batch` candidates by expected improvement, each refit believing the previous picks scored
        their predicted mean (the kriging believer)."""
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        y = np.array([v if v is not None else np.nan for v in ys], dtype=float)
        floor = np.nanmin(y) - 1.0 if np.isfinite(y).any() else -1.0
        x, y = space.one_hot(points), np.where(np.isnan(y), floor, y)  # errored configs rank below all seen
        grid = space.one_hot(cands)
        left = list(range(len(cands)))
        picks: list[tuple[Index, str]] = []
        best = float(y.max())
        while left and len(picks) < self.batch:
            kernel = ConstantKernel(1.0) * Matern(length_scale=np.sqrt(x.shape[1]), nu=2.5) + WhiteKernel(1e-3)
            gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gp.fit(x, y)
                mu, sigma = gp.predict(grid[left], return_std=True)
            ei = expected_improvement(mu, sigma, best)
            j = int(np.argmax(ei))
            i = left.pop(j)
            picks.append((cands[i], f"EI {ei[j]:.3g}"))
            x, y = np.vstack([x, grid[i]]), np.append(y, mu[j])  # believe the prediction
        return picks
