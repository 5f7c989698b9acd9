"""The strategy protocol.

A strategy is a generator: it yields the next `TuneConfig` to try and receives that config's
`Result` back (`result = yield config`), or yields a list of configs it already knows it will try
and receives their results in the same order (`results = yield [a, b, c]`: the tuner evaluates them
in parallel when it has workers); an `UntilPass([...])` batch stops at its first passing config.
What a strategy proposes must not depend on the number of workers (its batches are its own choice), so
that for a given seed the same configurations are evaluated and the same best found whatever it is. It keeps no state
but what it derives from the results it is sent, owns its RNG (seeded), and returns when it has
nothing left to propose (it may return a sentence saying why: the run's stop reason). The tuner
answers configs that were already evaluated from its records without spending a trial, and enforces
the exit policy, so a strategy never needs to track trials, time or duplicates itself.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lpot_research.measure.op_costs import OpCosts
from lpot_research.quant.criterion import AccuracyCriterion
from lpot_research.quant.ranking import rank_key, score, select_best
from lpot_research.quant.space import TuneConfig, TuningSpace

DEFAULT_SEED = 9527  # every strategy's seed when none is given (random_seed in the settings)

__all__ = ["DEFAULT_SEED", "Proposals", "batched", "Result", "Strategy", "StrategyContext", "UntilPass", "rank_key",
           "select_best", "FallbackLadder", "start_from_what_the_run_knows"]


@dataclass(frozen=True)
class Result:
    """What a strategy learns about one configuration. For a config that failed the criterion,
    `accuracy` is its ranking accuracy (lpot_research.run.evaluation): the same whether or not its
    evaluation stopped early; `objective` is None until measured (failing configs usually are not)."""

    config: TuneConfig
    ok: bool  # False when quantization or evaluation failed
    accuracy: float | None
    objective: float | None
    passed: bool
    trial: int


@dataclass
class StrategyContext:
    space: TuningSpace
    criterion: AccuracyCriterion
    baseline_accuracy: float
    baseline_objective: float | None = None  # the FP32 model's objective value (e.g. latency)
    max_trials: int | None = None  # for information (the tuner enforces it)
    # True when the first passing config ends the run (exit_policy.timeout == 0): a strategy then
    # proposes in order of preference rather than e.g. bisecting from a passing upper bound
    first_pass_ends: bool = False
    # Per-op output error of a quantized config vs FP32 ({op: normalized mse}); used by mse.
    op_errors: Callable[[TuneConfig], dict[str, float]] | None = None
    # How far each op quantized alone (as a config quantizes it, every other op FP32) moves the output
    # from FP32's ({op: share of the total}), measured without trials; used by basic's stage 2.
    sensitivity: Callable[[TuneConfig, list[str]], dict[str, float]] | None = None
    # Each op's time in FP32 and INT8 (lpot_research.measure.op_costs.OpCosts: `saving(op)` is what keeping
    # it INT8 saves; negative where the op is slower in INT8), from the framework's profiler, measured on
    # the first call and once per run (None: it could not be); given when latency is the objective and
    # the back end has a profiler wired; used by basic's stage 4.
    op_costs: Callable[[], OpCosts | None] | None = None

    def score(self, r: Result) -> float | None:
        """One number to maximize, for model-based strategies (lpot_research.quant.ranking.score)."""
        return score(r, self.criterion.threshold(self.baseline_accuracy), self.baseline_accuracy,
                     self.baseline_objective, self.criterion.hib)


@dataclass(frozen=True)
class FallbackLadder:
    """`base` (the best model-wise config) with its k most sensitive ops falling back (BF16 where offered,
    else FP32), for any k: most sensitive by the run's per-op sensitivity (basic's stage 2: each op
    quantized alone; computed once per run and base, kept in the history)."""

    base: TuneConfig
    order: tuple[str, ...]  # the quantized ops that can fall back, most sensitive first
    fallback: dict[str, Any]  # op -> the OpChoice it falls back to
    FILL: ClassVar[int] = 8  # at most this many configs fill the ladder between two rungs

    @classmethod
    def of(cls, ctx: StrategyContext, base: TuneConfig) -> FallbackLadder | None:
        """None when the tuner measures no sensitivity or no op of `base` can fall back."""
        if ctx.sensitivity is None:
            return None
        from lpot_research.quant.space import FALLBACK_DTYPES, OpChoice

        space = ctx.space
        fallback = {n: next((OpChoice(d) for d in FALLBACK_DTYPES if OpChoice(d) in space.op_options(n)), None)
                    for n in space.op_names if base.op(n).quantized}
        ops = [n for n, c in fallback.items() if c is not None]
        if not ops:
            return None
        impact = ctx.sensitivity(base, ops)
        order = tuple(sorted(ops, key=lambda n: (-impact[n], ops.index(n))))
        return cls(base, order, {n: fallback[n] for n in ops})

    def rung(self, k: int, how: str = "") -> TuneConfig:
        return self.base.with_ops({n: self.fallback[n] for n in self.order[:k]},
                                  f"prior: the {k} most sensitive op(s) fall back{how}")

    def rungs(self) -> list[int]:
        """k = 1, 2, 4, ... up to half of the ops that can fall back."""
        out, k = [], 1
        while k <= max(1, len(self.order) // 2):
            out.append(k)
            k *= 2
        return out

    def fill(self, scores: dict[int, float | None], passed: dict[int, bool]) -> tuple[list[int], str]:
        """The ks between the rungs worth trying next, in order, and why (`scores`: ctx.score of each
        rung tried, None for one that failed to run). When a rung passes, the ks between the largest
        failing rung below the smallest passing one and it, fewest fallbacks first (the fastest pass the
        ladder skipped). When none passes, the ks around the best-scoring rung (the closest to the goal:
        accuracy does not always grow with fallbacks, on PP-OCRv4 the 8 most sensitive ops in FP32 miss by
        a sample where the 7 first pass), between its neighbouring rungs, nearest first, fewer first at
        equal distance. At most FILL of them; none that is a rung."""
        tried = sorted(scores)
        if not tried:
            return [], ""
        top = len(self.order)
        good = [k for k in tried if passed.get(k)]
        if good:
            hi = good[0]
            lo = max((k for k in tried if k < hi), default=0)
            ks = list(range(lo + 1, hi))
            how = f"fewest fallbacks between rungs {lo} (fails) and {hi} (passes)"
        else:
            best = max(tried, key=lambda k: (scores[k] if scores[k] is not None else float("-inf"), -k))
            i = tried.index(best)
            lo = tried[i - 1] if i > 0 else 0
            hi = tried[i + 1] if i + 1 < len(tried) else min(top + 1, 2 * best)
            ks = sorted(range(lo + 1, hi), key=lambda k: (abs(k - best), k))
            how = f"around the closest rung, {best}, between {lo} and {hi}"
        ks = [k for k in ks if k not in scores and 0 < k <= top][: self.FILL]
        return ks, how


def start_from_what_the_run_knows(ctx: StrategyContext, name: str) -> Generator[Any, Any, list[Result]]:
    """The initial design of a model-based strategy (`results = yield from ...`; notes "<name> <k> (prior:
    ...)"): every model-wise config (one batch); then, unless one passed, the space's recipes on the best
    of them (`try_recipes`; the best with a recipe replaces it when it ranks above); then from the best the
    rungs of the sensitivity ladder (one batch); then the configs that fill the ladder between its rungs
    (`FallbackLadder.fill`: around the closest rung when none passed, else the fewest fallbacks that
    pass), stopping at the first that passes. The results of every config proposed, in order."""
    out: list[Result] = []
    proposed = 0

    def note(cfgs: list[TuneConfig]) -> list[TuneConfig]:
        nonlocal proposed
        noted = [c.with_note(f"{name} {proposed + i} "
                             f"({c.note if c.note.startswith('prior: ') else 'prior: ' + c.note})")
                 for i, c in enumerate(cfgs, 1)]
        proposed += len(noted)
        return noted

    seen: set[str] = set()

    def fresh(cfgs: Iterable[TuneConfig]) -> list[TuneConfig]:
        """The configs not proposed before (nor earlier in `cfgs`), in order."""
        kept = []
        for c in cfgs:
            if c.id not in seen:
                seen.add(c.id)
                kept.append(c)
        return kept

    results = yield note(fresh(ctx.space.model_wise_configs()))
    out += results
    best = select_best(results, ctx.criterion.hib)
    if best is not None and not best.passed and ctx.space.recipes:  # keep ops INT8 with a recipe first
        tried, chosen = yield from try_recipes(ctx, best.config, best, "recipes", lambda cfgs: note(fresh(cfgs)))
        out += tried
        best = chosen or best
    ladder = FallbackLadder.of(ctx, best.config) if best is not None and not best.passed else None
    if ladder is None:
        return out
    rungs = {k: ladder.rung(k) for k in ladder.rungs()}
    kept = {c.id for c in fresh(rungs.values())}
    rungs = {k: c for k, c in rungs.items() if c.id in kept}
    results = yield note(list(rungs.values()))
    out += results
    ks, how = ladder.fill({k: ctx.score(r) for k, r in zip(rungs, results, strict=True)},
                          {k: r.passed for k, r in zip(rungs, results, strict=True)})
    fill = fresh(ladder.rung(k, f" ({how})") for k in ks)
    if fill:
        out += (yield UntilPass(note(fill)))
    return out


def try_recipes(ctx: StrategyContext, base: TuneConfig, best: Result | None, label: str,
                wrap: Callable[[list[TuneConfig]], list[TuneConfig]] = list) -> Generator[Any, Any, Any]:
    """The recipes of the space (`quantization.recipes`) on `base`: each recipe value alone (one batch, ending at
    its first pass), then, with more than one recipe, every recipe at its best value alone together
    (`wrap` may renote or drop configs before each batch goes out). Returns (every result, the chosen
    one): the chosen is the passing result, else the best-ranked when it ranks above `best` (the base's
    own result), else None."""
    hib = ctx.criterion.hib
    singles = [base.with_recipes({name: v}, f"{label}: {name} {v}" if v is not True else f"{label}: {name}")
               for name, values in ctx.space.recipes for v in values[1:]]
    results = list((yield UntilPass(wrap(singles))))
    if len(ctx.space.recipes) > 1 and not any(r.passed for r in results):
        every = {}
        for name, _ in ctx.space.recipes:
            top = select_best([r for r in results if r.config.recipe(name) is not None], hib)
            if top is not None:
                every[name] = top.config.recipe(name)
        combined = wrap([base.with_recipes(every, f"{label}: {base.with_recipes(every).describe_recipes()} (each "
                                                  "recipe's best)")]) if len(every) > 1 else []
        if combined:
            results += (yield combined)
    top = select_best(results, hib)
    if top is None or top.passed or best is None:
        return results, top
    return results, (top if select_best([best, top], hib) is top else None)


class UntilPass(list):
    """A batch of configs in order of preference whose evaluation stops at the first one that meets the
    criterion: the results sent back end with it (or cover the whole batch when none passes)."""


Proposals = Generator[TuneConfig | list[TuneConfig], Any, str | None]


def batched(configs: Iterable[TuneConfig], size: int) -> Iterator[list[TuneConfig]]:
    """`configs` in lists of `size` (the last may be shorter)."""
    batch: list[TuneConfig] = []
    for c in configs:
        batch.append(c)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Strategy:
    """Base class. Subclasses implement `proposals`; users subclass it in their own modules and
    point a config's `_target_` at the subclass."""

    name = "base"
    # True when the strategy, told that the first pass ends the run (ctx.first_pass_ends), still proposes
    # a bounded refinement of that passing config and then ends itself: the tuner does not stop at it
    refines_first_pass = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # user subclasses are named after their class
            cls.name = cls.__name__

    def __init__(self, seed: int = DEFAULT_SEED, **options: Any) -> None:
        self.seed = int(seed)
        self.options = options

    def rng(self) -> np.random.Generator:
        """A fresh generator per run: the same seed gives the same sequence, in any process."""
        return np.random.default_rng(self.seed)

    def proposals(self, ctx: StrategyContext) -> Proposals:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"
