"""mse: basic's flow, with ops ordered for fallback by how much their outputs differ from FP32.

Instead of spending one trial per op to measure each op's accuracy impact (basic's stage 2), it
quantizes the best model-wise configuration once, compares every op's output with the same op in an
all-FP32 build of the same graph on a batch of calibration data, and falls back the ops with the
largest normalized mean squared error first. No single-op trial ran, so basic's block stage (2b)
follows before the cumulative one.
"""

from __future__ import annotations

from lpot_research.core.errors import LpotError
from lpot_research.quant.space import TuneConfig
from lpot_research.strategies.base import Proposals, StrategyContext
from lpot_research.strategies.basic import BasicStrategy


class MSEStrategy(BasicStrategy):
    name = "mse"

    def rank_ops(self, ctx: StrategyContext, base: TuneConfig, dtype: str, ops: list[str]) -> Proposals:
        if ctx.op_errors is None:
            raise LpotError("the mse strategy needs per-op output inspection, which this tuner does not provide")
        errors = ctx.op_errors(base)
        position = {n: i for i, n in enumerate(ops)}
        return sorted(ops, key=lambda n: (-errors.get(n, 0.0), position[n])), True  # no single-op trial: 2b follows
        yield  # a generator that proposes nothing: the ranking costs no trial
