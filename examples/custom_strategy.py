"""A user-defined strategy: subclass Strategy, implement `proposals`, point a config's _target_ here.

    python tune.py strategy._target_=examples.custom_strategy.GreedyFallback
"""

from lpot_research.quant.space import OpChoice
from lpot_research.strategies import Strategy, select_best


class GreedyFallback(Strategy):
    """Best model-wise config first, then fall ops back to FP32 from the last op upwards until the
    criterion is met. `result = yield config` hands each config to the tuner and gets its result back."""

    def proposals(self, ctx):
        results = []
        for cfg in ctx.space.model_wise_configs():
            results.append((yield cfg))
        best = select_best(results, ctx.criterion.hib)
        if best is None or best.passed:
            return
        cfg = best.config
        for name in reversed(ctx.space.op_names):
            if OpChoice("fp32") in ctx.space.op_options(name):
                cfg = cfg.with_ops({name: OpChoice("fp32")}, f"greedy: {name} -> fp32")
                if (yield cfg).passed:
                    return
