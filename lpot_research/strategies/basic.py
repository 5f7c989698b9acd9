"""The seed's basic strategy, in its three stages, plus a block stage that is ours.

1. every model-wise configuration (proposed as one batch);
1b. where the space tunes recipes (`quantization.recipes`) and no model-wise configuration passes: the best
   one with each recipe value alone (one batch, ending at its first pass), then with each recipe at its
   best value together. The best of them becomes the base of the fallback stages when it ranks above the
   model-wise one: ops are kept INT8 with a better recipe before any is given up;
2. from the best of them, each op's impact on accuracy, to order the fallbacks (with `order=impact_per_ms`
   and a profiler's per-op costs: the impact per millisecond the fallback gives back). The seed spends one
   full trial per op on this (each op alone falling back: 37 trials on MiniLM, 51 on PP-OCRv4). Here it is
   measured without trials (`ctx.sensitivity`): each op quantized *alone* (every other op FP32) on one
   probe batch, the impact being how far that moves the output from FP32's. Alone, because error spread
   over many ops hides from single-op fallbacks: on PP-OCRv4 no conv's fallback recovers the first
   stage's error, and both single-op accuracies (noisy, discrete) and the output error each fallback
   removes ranked those convs last, while each of them quantized alone ranks first. With
   `stage2="trials"` (or a custom tuner without `ctx.sensitivity`) stage 2 runs a trial per op as the
   seed does: each op's fallback measured on accuracy itself, one batch that parallel workers share;
2b. only where stage 2 ran trials (a custom tuner without `ctx.sensitivity`, or mse) and no op alone
   passed: the first k ops in model order fall back together, for the smallest such k up to half of the
   ops. k grows one at a time when the first passing config ends the run (timeout 0), else it is
   bisected;
3. ops fall back cumulatively in that order, highest first, until the criterion is met (one
   batch: the configs are known in advance; it stops at the first that passes);
4. refinement: a fallback that the passing config does not need gives speed back for nothing, so each
   fallback op is quantized again, one at a time, and kept INT8 when the config still passes: costliest
   first where the framework's profiler measured each op in FP32 and INT8 (`ctx.op_costs`; ops no
   faster in INT8 are not tried), else least sensitive first (the likeliest to be free). A failing try is
   cheap (its evaluation stops as soon as it cannot pass). With a time budget every fallback is tried;
   when the first pass ends the run (timeout=0) at most `refine` are (0: no refinement, the seed's rule),
   then the strategy ends. Where the profiler measured ops, a last trial (the speed step) lets every op
   that is slower in INT8 than in FP32 fall back, and the faster passing model wins; this runs also when
   a model-wise configuration passes.

Stages 2, 2b and 3 run for bf16 first, then for fp32 if bf16 fallback did not suffice. If the best
model-wise configuration already passes, fallback cannot improve accuracy: only the speed step follows.
"""

from __future__ import annotations

from lpot_research.core.errors import ConfigError
from lpot_research.measure.op_costs import OpCosts
from lpot_research.quant.space import FALLBACK_DTYPES, OpChoice, TuneConfig
from lpot_research.strategies.base import (
    DEFAULT_SEED,
    Proposals,
    Result,
    Strategy,
    StrategyContext,
    UntilPass,
    select_best,
    try_recipes,
)

STAGE2 = ("sensitivity", "trials")
ORDERS = ("impact", "impact_per_ms")


def op_savings(costs: OpCosts | None) -> dict[str, float]:
    """What keeping each op INT8 saves over FP32 (ms; negative: slower in INT8), where profiled."""
    if costs is None:
        return {}
    return {n: v for n in costs.int8_ms if (v := costs.saving(n)) is not None}


def profiled(ctx: StrategyContext) -> OpCosts | None:
    """The run's per-op costs (profiled on the first call), or None where there are none."""
    return ctx.op_costs() if ctx.op_costs is not None else None


class BasicStrategy(Strategy):
    name = "basic"

    def __init__(self, seed: int = DEFAULT_SEED, stage2: str = "sensitivity", refine: int = 8,
                 order: str = "impact", **options: object) -> None:
        super().__init__(seed, **options)
        if stage2 not in STAGE2:
            raise ConfigError(f"strategy.stage2={stage2!r} is unknown; valid choices: {list(STAGE2)}")
        if order not in ORDERS:
            raise ConfigError(f"strategy.order={order!r} is unknown; valid choices: {list(ORDERS)}")
        self.order = order
        if not isinstance(refine, int) or isinstance(refine, bool) or refine < 0:
            raise ConfigError(f"strategy.refine={refine!r} must be an int >= 0 (fallback ops tried again in INT8 "
                              "after the first pass when it ends the run; 0: none)")
        self.stage2, self.refine = stage2, refine

    @property
    def refines_first_pass(self) -> bool:  # type: ignore[override]
        return self.refine > 0

    def proposals(self, ctx: StrategyContext) -> Proposals:
        model_wise = ctx.space.model_wise_configs()
        results = yield UntilPass(model_wise) if ctx.first_pass_ends else model_wise
        best = select_best(results, ctx.criterion.hib)
        if best is not None and best.passed:
            return (yield from self.passed_in_int8(ctx, best, "the best model-wise configuration meets the criterion",
                                                   "; fallback cannot improve on it"))
        # If every model-wise config failed to quantize, fallback may still route around the op that
        # breaks: start from the first (recommended) one.
        base = best.config if best is not None else model_wise[0]
        if ctx.space.recipes:
            _, with_recipe = yield from try_recipes(ctx, base, best, "stage 1b")
            if with_recipe is not None and with_recipe.passed:
                return (yield from self.passed_in_int8(ctx, with_recipe, "the best model-wise configuration with "
                                                       f"{with_recipe.config.describe_recipes()} meets the criterion"))
            if with_recipe is not None:
                base = with_recipe.config
        for dtype in FALLBACK_DTYPES:
            ops = self.candidates(ctx, base, dtype)
            if not ops:
                continue
            order, blocks = yield from self.rank_ops(ctx, base, dtype, ops)
            block = (yield from self.block_fallback(ctx, base, dtype, ops[::-1])) if blocks else None
            if block is not None and ctx.first_pass_ends:  # (with a time budget, stage 3 may need fewer)
                return (yield from self.refinement(ctx, base, block, order, "block"))
            passing = yield from self.accumulate(base, dtype, order)
            if passing is not None:
                return (yield from self.refinement(ctx, base, passing, order, f"cumulative {dtype}"))
            if block is not None:
                return (yield from self.refinement(ctx, base, block, order, "block"))
        return "every candidate op has fallen back without meeting the criterion"

    def passed_in_int8(self, ctx: StrategyContext, passing: Result, said: str, no_step: str = "") -> Proposals:
        """A config without fallbacks passed: the speed step follows where the profiler measured the ops (and
        the first pass does not simply end the run); returns the stop reason (`no_step` added without it)."""
        if (not self.refine and ctx.first_pass_ends) or ctx.op_costs is None:
            return said + no_step
        return said + (yield from self.speed_step(ctx, passing))

    def refinement(self, ctx: StrategyContext, base: TuneConfig, passing: Result, order: list[str],
                   how: str) -> Proposals:
        """Stage 4: the fallback ops of `passing` quantized again as in `base`, one at a time, each kept INT8
        when the config still passes; then the speed step. The order: costliest fallback first where the
        framework's profiler measured what each op saves in INT8 (`ctx.op_costs`; an op no faster in
        INT8 is not tried: it stays a fallback), else least sensitive (last in `order`) first. When the
        first pass ends the run, at most `refine` of them cost a trial (a config evaluated before, e.g.
        the stage-3 one before the pass, is answered from the history). Returns the stop reason."""
        rank = {n: i for i, n in enumerate(order)}
        savings = op_savings(profiled(ctx))
        cfg, last = passing.config, passing.trial
        fallbacks = sorted((n for n, c in cfg.ops if not c.quantized and base.op(n).quantized),
                           key=lambda n: (-savings.get(n, 0.0), -rank.get(n, len(order))))
        no_faster = [n for n in fallbacks if n in savings and savings[n] <= 0.0]
        fallbacks = [n for n in fallbacks if n not in no_faster]
        kept, tried, bounded = [], 0, False
        for k, name in enumerate(fallbacks, 1):
            if ctx.first_pass_ends and tried >= self.refine:
                bounded = True
                break
            r = yield cfg.with_ops({name: base.op(name)}, f"stage 4: {name} back to INT8 ({k}/{len(fallbacks)})")
            if r.trial > last:  # a new trial
                tried, last = tried + 1, r.trial
            if r.passed:
                cfg, kept, passing = r.config, [*kept, name], r
        said = f"{how} fallback meets the criterion"
        if not self.refine and ctx.first_pass_ends:
            return said
        if fallbacks:
            said += (f"; refinement quantized {len(kept)} of its {len(fallbacks)} fallback op(s) again "
                     f"({tried} trial(s){f', bounded by strategy.refine={self.refine}' if bounded else ''})")
        if no_faster:
            said += f"; {len(no_faster)} fallback op(s) no faster in INT8 stay fallbacks"
        return said + (yield from self.speed_step(ctx, passing))

    @staticmethod
    def speed_step(ctx: StrategyContext, passing: Result, share: float = 0.8, min_gain: float = 0.05) -> Proposals:
        """The last step where the profiler measured each op (`ctx.op_costs`): every op of the passing
        config that is slower in INT8 than in FP32 (its quantize/dequantize included; e.g. a first conv
        of one input channel, depthwise convs on ONNX Runtime) falls back to FP32 together, one trial; if
        that fails the criterion (fallback does not always help accuracy: ranges and rounding change
        around the ops), a second trial with only the slowest of them, those making `share` of the
        slowdown. Not when the profile says the gain is under `min_gain` of the all-INT8 model's time (under
        the +-5% a latency ratio is measured to here, a trial could not show it). The tuner keeps
        whichever passing model measures faster. Returns what it did."""
        costs = profiled(ctx)
        savings = op_savings(costs)
        fp32 = OpChoice("fp32")
        slower = sorted((n for n, c in passing.config.ops
                         if c.quantized and savings.get(n, 0.0) < 0.0 and fp32 in ctx.space.op_options(n)),
                        key=lambda n: savings[n])
        total = -sum(savings[n] for n in slower)
        if not slower or costs is None or total < min_gain * costs.int8_total:
            return (f"; no speed step: the {len(slower)} op(s) slower in INT8 cost {total:.3f} ms, under "
                    f"{min_gain:.0%} of the all-INT8 model's {costs.int8_total:.3f} ms" if slower and costs else "")
        acc, top = 0.0, []
        for n in slower:
            if acc >= share * total:
                break
            top, acc = [*top, n], acc - savings[n]
        said = ""
        tries = [(slower, "")] + ([(top, f" ({share:.0%} of their slowdown)")] if len(top) < len(slower) else [])
        for ops, part in tries:
            r = yield passing.config.with_ops({n: fp32 for n in ops}, f"stage 4: the {'slowest ' if part else ''}"
                                              f"{len(ops)} op(s) slower in INT8 than FP32{part} fall back")
            said += (f"; the speed step let the {'slowest ' if part else ''}{len(ops)} op(s) slower in INT8{part} "
                     f"fall back to FP32 ({'it passes' if r.passed else 'it does not pass'}, trial {r.trial})")
            if r.passed:
                break
        return said

    @staticmethod
    def candidates(ctx: StrategyContext, base: TuneConfig, dtype: str) -> list[str]:
        """Quantized ops of `base` that may fall back to `dtype`, bottom-up (last op first)."""
        return [
            n for n in reversed(ctx.space.op_names)
            if base.op(n).quantized and OpChoice(dtype) in ctx.space.op_options(n)
        ]

    def rank_ops(self, ctx: StrategyContext, base: TuneConfig, dtype: str, ops: list[str]) -> Proposals:
        """Stage 2: the ops ordered by impact, most first (ties in bottom-up order), and whether stage 2b
        should run (single-op trials ran and none passed)."""
        if ctx.sensitivity is not None and self.stage2 == "sensitivity":
            impact = ctx.sensitivity(base, ops)
            savings = op_savings(profiled(ctx)) if self.order == "impact_per_ms" else {}
            if savings:  # accuracy recovered per millisecond given back (an op no faster in INT8 costs ~nothing;
                # one the profiler did not find, the mean)
                positive = [v for v in savings.values() if v > 0]
                mean = sum(positive) / len(positive) if positive else 1.0
                impact = {n: v / max(savings.get(n, mean), 0.05 * mean) for n, v in impact.items()}
            order = sorted(range(len(ops)), key=lambda i: (-impact[ops[i]], i))
            return [ops[i] for i in order], False
        hib = ctx.criterion.hib
        alone = [base.with_ops({n: OpChoice(dtype)}, f"stage 2: {n} -> {dtype} alone") for n in ops]
        # (when the first pass ends the run, it ends this batch: a passing op ranks first, and stage 3's first
        # config, the same one, is answered from the history)
        results = yield UntilPass(alone) if ctx.first_pass_ends else alone
        scored = [((-r.accuracy if hib else r.accuracy) if r.ok and r.accuracy is not None else float("inf"), i)
                  for i, r in enumerate(results)]
        return [ops[i] for _, i in sorted(scored)], not any(r.passed for r in results)

    @staticmethod
    def block_fallback(ctx: StrategyContext, base: TuneConfig, dtype: str, ops: list[str]) -> Proposals:
        """Stage 2b: the smallest k (2 <= k <= half of `ops`, in model order) such that the first k ops
        falling back to `dtype` passes; its result (None when none did)."""
        hi = len(ops) // 2

        def first(k: int) -> TuneConfig:
            return base.with_ops({n: OpChoice(dtype) for n in ops[:k]}, f"stage 2b: first {k} ops -> {dtype}")

        if ctx.first_pass_ends:  # the first pass ends the run: the smallest blocks first, as one batch
            results = yield UntilPass(first(k) for k in range(2, hi + 1))
            return next((r for r in results if r.passed), None)
        upper = (yield first(hi)) if hi >= 2 else None
        if upper is None or not upper.passed:
            return None
        lo = 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            r = yield first(mid)
            if r.passed:
                hi, upper = mid, r
            else:
                lo = mid
        return upper

    @staticmethod
    def accumulate(base: TuneConfig, dtype: str, order: list[str]) -> Proposals:
        """Stage 3: fall back ops one more at a time in `order`; the result of the first config that
        passes (or None)."""
        configs, cfg = [], base
        for k, name in enumerate(order, 1):
            cfg = cfg.with_ops({name: OpChoice(dtype)}, f"stage 3: +{name} -> {dtype} ({k}/{len(order)} ops)")
            configs.append(cfg)
        results = yield UntilPass(configs)
        return next((r for r in results if r.passed), None)
