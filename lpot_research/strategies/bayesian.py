"""bayesian: a Gaussian process over a one-hot encoding of per-op choices, proposing the unevaluated
candidate with the highest expected improvement.

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

from lpot_research.config import DEFAULT_SEED
from lpot_research.space import TuneConfig
from lpot_research.strategies.base import Proposals, Strategy, StrategyContext


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = 0.01) -> np.ndarray:
    sigma = np.maximum(sigma, 1e-9)
    z = (mu - best - xi) / sigma
    return (mu - best - xi) * norm.cdf(z) + sigma * norm.pdf(z)


class BayesianStrategy(Strategy):
    name = "bayesian"

    def __init__(self, seed: int = DEFAULT_SEED, n_init: int = 4, pool: int = 2048, **options: object) -> None:
        super().__init__(seed, **options)
        self.n_init, self.pool = int(n_init), int(pool)

    def candidates(self, ctx: StrategyContext, rng: np.random.Generator, seen: set[str],
                   ranked: list[TuneConfig]) -> list[TuneConfig]:
        space = ctx.space
        if space.size <= self.pool:
            return [c for c in (space.config_at_flat(i) for i in range(space.size)) if c.id not in seen]
        out: dict[str, TuneConfig] = {}
        radices = space.radices
        for parent in ranked[:8]:  # local moves around the best configurations so far
            base = space.index_of(parent)
            for _ in range(self.pool // 16):
                idx = list(base)
                for d in rng.choice(len(radices), size=min(len(radices), int(rng.integers(1, 3))), replace=False):
                    idx[d] = int(rng.integers(radices[d]))
                c = space.config_at(idx)
                if c.id not in seen:
                    out.setdefault(c.id, c)
        for _ in range(self.pool):
            c = space.config_at([int(rng.integers(r)) for r in radices])
            if c.id not in seen:
                out.setdefault(c.id, c)
        return list(out.values())

    def proposals(self, ctx: StrategyContext) -> Proposals:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        space, rng = ctx.space, self.rng()
        seen: set[str] = set()
        xs: list[list[float]] = []
        ys: list[float | None] = []
        configs: list[TuneConfig] = []
        first = space.model_wise_configs()[0]  # an informed first point: the recommended settings
        k = 0
        while True:
            order = sorted(range(len(ys)), key=lambda i: -(ys[i] if ys[i] is not None else -np.inf))
            cands = self.candidates(ctx, rng, seen, [configs[i] for i in order])
            if not cands:
                return "its space is exhausted: no unevaluated candidate is left"
            if k == 0 and first.id not in seen:
                pick, how = first, "initial: model-wise"
            elif k < self.n_init:
                pick, how = cands[int(rng.integers(len(cands)))], "initial: random"
            else:
                y = np.array([v if v is not None else np.nan for v in ys], dtype=float)
                floor = np.nanmin(y) - 1.0 if np.isfinite(y).any() else -1.0
                y = np.where(np.isnan(y), floor, y)  # errored configs rank below everything seen
                kernel = ConstantKernel(1.0) * Matern(length_scale=np.sqrt(len(xs[0])), nu=2.5) + WhiteKernel(1e-3)
                gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    gp.fit(np.array(xs), y)
                    mu, sigma = gp.predict(np.array([space.one_hot(c) for c in cands]), return_std=True)
                ei = expected_improvement(mu, sigma, float(y.max()))
                i = int(np.argmax(ei))
                pick, how = cands[i], f"EI {ei[i]:.3g}"
            k += 1
            result = yield pick.with_note(f"bayesian {k} ({how})")
            seen.add(pick.id)
            configs.append(pick)
            xs.append(space.one_hot(pick))
            ys.append(ctx.score(result))
