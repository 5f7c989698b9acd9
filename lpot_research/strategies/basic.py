"""The seed's basic strategy, in its three stages, plus a block stage that is ours.

1. every model-wise configuration (proposed as one batch);
2. from the best of them, each op's impact on accuracy, to order the fallbacks. The seed spends one
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
3. ops fall back cumulatively in impact order, most sensitive first, until the criterion is met (one
   batch: the configs are known in advance; the run stops at the first that passes).

Stages 2, 2b and 3 run for bf16 first, then for fp32 if bf16 fallback did not suffice. If the best
model-wise configuration already passes, fallback cannot improve the objective and the strategy ends.
"""

from __future__ import annotations

from lpot_research.core.errors import ConfigError
from lpot_research.quant.space import FALLBACK_DTYPES, OpChoice, TuneConfig
from lpot_research.strategies.base import DEFAULT_SEED, Proposals, Strategy, StrategyContext, UntilPass, select_best

STAGE2 = ("sensitivity", "trials")


class BasicStrategy(Strategy):
    name = "basic"

    def __init__(self, seed: int = DEFAULT_SEED, stage2: str = "sensitivity", **options: object) -> None:
        super().__init__(seed, **options)
        if stage2 not in STAGE2:
            raise ConfigError(f"strategy.stage2={stage2!r} is unknown; valid choices: {list(STAGE2)}")
        self.stage2 = stage2

    def proposals(self, ctx: StrategyContext) -> Proposals:
        model_wise = ctx.space.model_wise_configs()
        results = yield model_wise
        best = select_best(results, ctx.criterion.hib)
        if best is not None and best.passed:
            return "the best model-wise configuration meets the criterion; fallback cannot improve on it"
        # If every model-wise config failed to quantize, fallback may still route around the op that
        # breaks: start from the first (recommended) one.
        base = best.config if best is not None else model_wise[0]
        for dtype in FALLBACK_DTYPES:
            ops = self.candidates(ctx, base, dtype)
            if not ops:
                continue
            order, blocks = yield from self.rank_ops(ctx, base, dtype, ops)
            if blocks:  # with a time budget, stage 3 follows in case it needs fewer fallbacks
                yield from self.block_fallback(ctx, base, dtype, ops[::-1])
            if (yield from self.accumulate(base, dtype, order)):
                return f"cumulative {dtype} fallback meets the criterion"
        return "every candidate op has fallen back without meeting the criterion"

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
            order = sorted(range(len(ops)), key=lambda i: (-impact[ops[i]], i))
            return [ops[i] for i in order], False
        hib = ctx.criterion.hib
        results = yield [base.with_ops({n: OpChoice(dtype)}, f"stage 2: {n} -> {dtype} alone") for n in ops]
        scored = [((-r.accuracy if hib else r.accuracy) if r.ok and r.accuracy is not None else float("inf"), i)
                  for i, r in enumerate(results)]
        return [ops[i] for _, i in sorted(scored)], not any(r.passed for r in results)

    @staticmethod
    def block_fallback(ctx: StrategyContext, base: TuneConfig, dtype: str, ops: list[str]) -> Proposals:
        """Stage 2b: the smallest k (2 <= k <= half of `ops`, in model order) such that the first k ops
        falling back to `dtype` passes; True when one did."""
        hi = len(ops) // 2

        def first(k: int) -> TuneConfig:
            return base.with_ops({n: OpChoice(dtype) for n in ops[:k]}, f"stage 2b: first {k} ops -> {dtype}")

        if ctx.first_pass_ends:  # the first pass ends the run: the smallest blocks first, as one batch
            results = yield UntilPass(first(k) for k in range(2, hi + 1))
            return any(r.passed for r in results)
        if hi < 2 or not (yield first(hi)).passed:
            return False
        lo = 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if (yield first(mid)).passed:
                hi = mid
            else:
                lo = mid
        return True

    @staticmethod
    def accumulate(base: TuneConfig, dtype: str, order: list[str]) -> Proposals:
        """Stage 3: fall back ops one more at a time in `order`; True once a config passes."""
        configs, cfg = [], base
        for k, name in enumerate(order, 1):
            cfg = cfg.with_ops({name: OpChoice(dtype)}, f"stage 3: +{name} -> {dtype} ({k}/{len(order)} ops)")
            configs.append(cfg)
        results = yield UntilPass(configs)
        return any(r.passed for r in results)
