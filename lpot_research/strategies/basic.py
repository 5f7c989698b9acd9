"""The seed's basic strategy, in its three stages, plus a block stage that is ours.

1. every model-wise configuration;
2. from the best of them, each op alone falls back to a higher precision (bf16 before fp32; ops taken
   bottom-up), and the accuracy of each such config is recorded as that op's impact;
2b. if no single op's fallback passed: the first k ops in model order (the input side) fall back
   together, for the smallest such k up to half of the ops. Quantization error often concentrates in
   a network's first, high-resolution layers, spread over many of them, so that no single op's
   fallback shows it and stage 3's impact order (from noisy single-op accuracies) falls back the
   wrong ops first: measured on PP-OCRv4, no single conv recovers more than 4 of the 6 points lost
   while the first 8-13 convs together recover all of them. k grows one at a time when the first
   passing config ends the run (timeout 0), so the first pass is the smallest block; otherwise it
   is bisected (about log2(n) trials);
3. ops fall back cumulatively, most helpful first, until the accuracy criterion is met.

Stages 2, 2b and 3 run for bf16 first, then for fp32 if bf16 fallback did not suffice. If the best
model-wise configuration already passes, fallback cannot improve the objective and the strategy ends.
The strategy ends when stage 3 passes or every candidate op has fallen back.
"""

from __future__ import annotations

from lpot_research.space import FALLBACK_DTYPES, OpChoice, TuneConfig
from lpot_research.strategies.base import Proposals, Result, Strategy, StrategyContext, select_best


class BasicStrategy(Strategy):
    name = "basic"

    def proposals(self, ctx: StrategyContext) -> Proposals:
        model_wise = ctx.space.model_wise_configs()
        results: list[Result] = []
        for cfg in model_wise:
            results.append((yield cfg))
        best = select_best(results, ctx.criterion.hib)
        if best is not None and best.passed:  # fallback cannot improve on a passing config
            return
        # If every model-wise config failed to quantize, fallback may still route around the op that
        # breaks: start from the first (recommended) one.
        base = best.config if best is not None else model_wise[0]
        for dtype in FALLBACK_DTYPES:
            ops = self.candidates(ctx, base, dtype)
            if not ops:
                continue
            order, single_passed = yield from self.rank_ops(ctx, base, dtype, ops)
            if not single_passed:
                yield from self.block_fallback(ctx, base, dtype, ops[::-1])
            if (yield from self.accumulate(base, dtype, order)):
                return

    @staticmethod
    def block_fallback(ctx: StrategyContext, base: TuneConfig, dtype: str, ops: list[str]) -> Proposals:
        """Stage 2b: look for the smallest k (2 <= k <= half of `ops`, in model order; k = 1 is stage
        2's) such that the first k ops falling back to `dtype` passes."""
        hi = len(ops) // 2

        def first(k: int) -> TuneConfig:
            return base.with_ops({n: OpChoice(dtype) for n in ops[:k]}, f"stage 2b: first {k} ops -> {dtype}")

        if ctx.first_pass_ends:  # the first pass ends the run: try the smallest blocks first
            for k in range(2, hi + 1):
                if (yield first(k)).passed:
                    return
            return
        if hi < 2 or not (yield first(hi)).passed:
            return
        lo = 1  # stage 2 tried the first op alone
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if (yield first(mid)).passed:
                hi = mid
            else:
                lo = mid

    @staticmethod
    def candidates(ctx: StrategyContext, base: TuneConfig, dtype: str) -> list[str]:
        """Quantized ops of `base` that may fall back to `dtype`, bottom-up (last op first)."""
        return [
            n for n in reversed(ctx.space.op_names)
            if base.op(n).quantized and OpChoice(dtype) in ctx.space.op_options(n)
        ]

    def rank_ops(self, ctx: StrategyContext, base: TuneConfig, dtype: str, ops: list[str]) -> Proposals:
        """Stage 2: fall back each op alone; return the ops ordered by the accuracy that buys, best
        first (errored trials last, ties in bottom-up order), and whether any of them passed."""
        hib = ctx.criterion.hib
        scored: list[tuple[float, int, str]] = []
        passed = False
        for i, name in enumerate(ops):
            r = yield base.with_ops({name: OpChoice(dtype)}, f"stage 2: {name} -> {dtype} alone")
            passed = passed or r.passed
            if r.ok and r.accuracy is not None:
                scored.append((-r.accuracy if hib else r.accuracy, i, name))
            else:
                scored.append((float("inf"), i, name))
        return [name for _, _, name in sorted(scored)], passed

    @staticmethod
    def accumulate(base: TuneConfig, dtype: str, order: list[str]) -> Proposals:
        """Stage 3: fall back ops one more at a time in `order`; return True once a config passes."""
        cfg = base
        for k, name in enumerate(order, 1):
            cfg = cfg.with_ops({name: OpChoice(dtype)}, f"stage 3: +{name} -> {dtype} ({k}/{len(order)} ops)")
            if (yield cfg).passed:
                return True
        return False
