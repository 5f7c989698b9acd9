"""tpe: Optuna's TPESampler through ask/tell, one categorical parameter per op and one for the
sampling size, seeded. Optuna keeps the model; this strategy only translates.

It asks `batch` configurations at a time (Optuna's constant liar keeps the ones still running from
being asked again and spreads the batch), which parallel workers evaluate together. One rule for what
Optuna is told: each distinct configuration is one observation, COMPLETE with its score (a config that
failed to quantize or evaluate scores FAILED, below every real score, so the sampler learns to avoid
it); every later proposal of a configuration already seen or already in the batch is told FAIL, which
the sampler ignores, so repeats never weigh more in its densities. A TPE sampler happily re-proposes
configurations it has seen; after several repeats in a row an unseen configuration is enqueued so the
search keeps moving, and the strategy ends once every configuration of the space has been seen.

With `prior` (the default) the sampler starts from what the run knows instead of random points
(`start_from_what_the_run_knows`, shared with bayesian): the model-wise configurations, then, from the
best of them, the run's per-op sensitivity ladder (its 1, 2, 4, ... most sensitive ops falling back) and
the configs that fill it between its rungs. They are evaluated first and told to the study as ordinary
observations (Optuna's `add_trial`), and TPE goes on from there: on a space of 10^60 configurations a
sampler that starts from random points does not find the few ops that carry the error.
"""

from __future__ import annotations

import warnings

from lpot_research.strategies.base import (
    DEFAULT_SEED,
    Proposals,
    Strategy,
    StrategyContext,
    start_from_what_the_run_knows,
)

SAMPLING = "__sampling_size__"
FAILED = -1e6  # the score Optuna is told for a config that failed (TPE ranks observations: only order matters)


class TPEStrategy(Strategy):
    name = "tpe"

    def __init__(self, seed: int = DEFAULT_SEED, n_startup_trials: int = 5, multivariate: bool = True,
                 max_repeats: int = 10, batch: int = 4, prior: bool = True, **options: object) -> None:
        super().__init__(seed, **options)
        self.n_startup_trials, self.multivariate, self.max_repeats = int(n_startup_trials), multivariate, max_repeats
        self.batch, self.prior = int(batch), bool(prior)
        self._study = None

    @property
    def study(self):  # noqa: ANN201 - optuna is imported lazily
        """The last run's optuna.Study (e.g. for optuna.visualization), None before a run."""
        return self._study

    def proposals(self, ctx: StrategyContext) -> Proposals:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, rng = ctx.space, self.rng()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE and the constant liar are flagged experimental
            sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials,
                                                 multivariate=self.multivariate, constant_liar=True)
        study = self._study = optuna.create_study(direction="maximize", sampler=sampler)
        names = [SAMPLING, *(f"__recipe_{n}__" for n, _ in space.recipes), *space.op_names]
        dists = {n: optuna.distributions.CategoricalDistribution(list(range(r)))
                 for n, r in zip(names, space.radices, strict=True)}
        seen: set[str] = set()
        k = 0
        if self.prior:  # what the run knows, told to the sampler as ordinary observations
            known = yield from start_from_what_the_run_knows(ctx, self.name)
            for result in known:
                score = ctx.score(result)
                study.add_trial(optuna.trial.create_trial(
                    params=dict(zip(names, space.index_of(result.config), strict=True)), distributions=dists,
                    value=score if score is not None else FAILED))
                seen.add(result.config.id)
            k = len(known)
        repeats = 0
        while len(seen) < space.size:
            batch: dict[str, tuple] = {}  # config id -> (optuna trial, config)
            while len(batch) < min(self.batch, space.size - len(seen)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trial = study.ask()
                    idx = [trial.suggest_categorical(n, list(range(r))) for n, r in zip(names, space.radices,
                                                                                      strict=True)]
                cfg = space.config_at(idx)
                if cfg.id in seen or cfg.id in batch:  # a repeat: no new observation, no trial
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    repeats += 1
                    if repeats >= self.max_repeats:
                        unseen = self._unseen(space, rng, seen | set(batch))
                        if unseen is not None:
                            study.enqueue_trial(dict(zip(names, unseen, strict=True)))
                        repeats = 0
                    continue
                repeats = 0
                k += 1
                batch[cfg.id] = (trial, cfg.with_note(f"tpe {k}"))
            results = yield [c for _, c in batch.values()]
            for (trial, cfg), result in zip(batch.values(), results, strict=True):
                score = ctx.score(result)
                study.tell(trial, score if score is not None else FAILED)
                seen.add(cfg.id)
        return f"its space is exhausted: all {space.size} configuration(s) were seen"

    @staticmethod
    def _unseen(space, rng, seen: set[str]) -> list[int] | None:
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
