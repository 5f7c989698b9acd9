"""The seed's basic strategy, in its three stages.

1. every model-wise configuration;
2. from the best of them, each op alone falls back to a higher precision (bf16 before fp32; ops taken
   bottom-up), and the accuracy of each such config is recorded as that op's impact;
3. ops fall back cumulatively, most helpful first, until the accuracy criterion is met.

Stages 2 and 3 run for bf16 first, then for fp32 if bf16 fallback of every op did not suffice.
If the best model-wise configuration already passes, fallback cannot improve the objective and the
strategy ends. The strategy ends when stage 3 passes or every candidate op has fallen back.
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
            order = yield from self.rank_ops(ctx, base, dtype, ops)
            if (yield from self.accumulate(base, dtype, order)):
                return

    @staticmethod
    def candidates(ctx: StrategyContext, base: TuneConfig, dtype: str) -> list[str]:
        """Quantized ops of `base` that may fall back to `dtype`, bottom-up (last op first)."""
        return [
            n for n in reversed(ctx.space.op_names)
            if base.op(n).quantized and OpChoice(dtype) in ctx.space.op_options(n)
        ]

    def rank_ops(self, ctx: StrategyContext, base: TuneConfig, dtype: str, ops: list[str]) -> Proposals:
        """Stage 2: fall back each op alone; return ops ordered by the accuracy that buys, best first
        (errored trials last, ties in bottom-up order)."""
        hib = ctx.criterion.hib
        scored: list[tuple[float, int, str]] = []
        for i, name in enumerate(ops):
            r = yield base.with_ops({name: OpChoice(dtype)}, f"stage 2: {name} -> {dtype} alone")
            if r.ok and r.accuracy is not None:
                scored.append((-r.accuracy if hib else r.accuracy, i, name))
            else:
                scored.append((float("inf"), i, name))
        return [name for _, _, name in sorted(scored)]

    @staticmethod
    def accumulate(base: TuneConfig, dtype: str, order: list[str]) -> Proposals:
        """Stage 3: fall back ops one more at a time in `order`; return True once a config passes."""
        cfg = base
        for k, name in enumerate(order, 1):
            cfg = cfg.with_ops({name: OpChoice(dtype)}, f"stage 3: +{name} -> {dtype} ({k}/{len(order)} ops)")
            if (yield cfg).passed:
                return True
        return False
