#!/usr/bin/env python
"""A strategy's own work per proposal, at 100 ops: the time between handing it a result and getting
its next configuration (or batch), for every built-in strategy.

    python scripts/bench_proposals.py                  # 100 ops, 60 trials per strategy
    python scripts/bench_proposals.py --ops 200 --max-trials 100

The model is the tests' fake framework (tests/fakes.py): an accuracy landscape known in closed form
and no real inference, so what is timed is the strategy (and the tuner's bookkeeping around it), not a
model. Every op costs accuracy in INT8, so no model-wise configuration passes and every strategy has to
search; with a time budget the run goes on after a first pass, so each strategy makes `--max-trials`
proposals. basic's per-op sensitivity is part of its proposals and is counted (on the fake it costs
what the inspector's bookkeeping costs).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpot_research.run.tuner import Tuner  # noqa: E402
from lpot_research.strategies import BUILTIN  # noqa: E402
from tests.fakes import FakeAdaptor  # noqa: E402
from tests.helpers import run_fake  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100)
    ap.add_argument("--max-trials", type=int, default=60)
    ap.add_argument("--strategies", default=",".join(BUILTIN))
    args = ap.parse_args()
    logging.getLogger("lpot_research").setLevel(logging.WARNING)

    timings: list[float] = []
    ask = Tuner._ask

    def timed(self: Tuner, gen: object, value: object) -> object:
        t0 = time.perf_counter()
        try:
            return ask(self, gen, value)
        finally:
            timings.append(time.perf_counter() - t0)

    Tuner._ask = timed  # type: ignore[method-assign]
    # 0.05% per INT8 op with MinMax (half with KL): INT8 everywhere loses 2.5-5%, the criterion allows 1%
    penalties = [0.0005] * args.ops
    cfg = {"exit_policy": {"timeout": 3600, "max_trials": args.max_trials}, "threads": 1}  # relative 1% (run_fake)
    print(f"{'strategy':<11} {'proposals':>9} {'median s':>9} {'max s':>7} {'total s':>8}  (fake model, "
          f"{args.ops} ops, {args.max_trials} trials)")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="lpot_bench_proposals_") as tmp:
        for name in args.strategies.split(","):
            timings.clear()
            run_fake(Path(tmp) / name, FakeAdaptor(ops=args.ops, penalties=penalties), name, cfg)
            worst = max(worst, max(timings))
            print(f"{name:<11} {len(timings):>9} {statistics.median(timings):>9.4f} {max(timings):>7.3f} "
                  f"{sum(timings):>8.2f}")
    print(f"slowest proposal: {worst:.3f} s ({'under' if worst < 1 else 'OVER'} the 1 s goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
