"""tpe: Optuna's TPESampler through ask/tell, one categorical parameter per op and one for the
sampling size, seeded. Optuna keeps the model; this strategy only translates.

A TPE sampler happily re-proposes configurations it has seen (it is told their recorded score again,
at no trial's cost); after several such repeats in a row, an unseen configuration is enqueued so the
search keeps moving, and the strategy ends once every configuration of the space has been seen.
"""

from __future__ import annotations

import warnings

from lpot_research.config import DEFAULT_SEED
from lpot_research.strategies.base import Proposals, Strategy, StrategyContext

SAMPLING = "__sampling_size__"


class TPEStrategy(Strategy):
    name = "tpe"

    def __init__(self, seed: int = DEFAULT_SEED, n_startup_trials: int = 5, multivariate: bool = True,
                 max_repeats: int = 10, **options: object) -> None:
        super().__init__(seed, **options)
        self.n_startup_trials, self.multivariate, self.max_repeats = int(n_startup_trials), multivariate, max_repeats

    def proposals(self, ctx: StrategyContext) -> Proposals:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, rng = ctx.space, self.rng()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
            sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials,
                                                 multivariate=self.multivariate)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        names = [SAMPLING, *space.op_names]
        seen: dict[str, float] = {}
        repeats, k = 0, 0
        while len(seen) < space.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = study.ask()
                idx = [trial.suggest_categorical(n, list(range(r))) for n, r in zip(names, space.radices, strict=True)]
            cfg = space.config_at(idx)
            if cfg.id in seen:  # known: tell optuna again, spend nothing
                study.tell(trial, seen[cfg.id])
                repeats += 1
                if repeats >= self.max_repeats:
                    unseen = self._unseen(space, rng, seen)
                    if unseen is not None:
                        study.enqueue_trial(dict(zip(names, unseen, strict=True)))
                    repeats = 0
                continue
            repeats = 0
            k += 1
            result = yield cfg.with_note(f"tpe {k}")
            score = ctx.score(result)
            seen[cfg.id] = score if score is not None else -1e6
            if score is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, score)
        return f"its space is exhausted: all {space.size} configuration(s) were seen"

    @staticmethod
    def _unseen(space, rng, seen: dict[str, float]) -> list[int] | None:
        """Index of a configuration not seen yet (uniform over the space, found by sampling, or by
        scanning when the space is small)."""
        for _ in range(256):
            idx = [int(rng.integers(r)) for r in space.radices]
            if space.config_at(idx).id not in seen:
                return idx
        for flat in range(min(space.size, 1 << 20)):
            c = space.config_at_flat(flat)
            if c.id not in seen:
                return space.index_of(c)
        return None
