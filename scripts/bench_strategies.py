#!/usr/bin/env python
"""Trials-to-goal and wall time per strategy, side by side in one run, on one model.

    python scripts/bench_strategies.py --backend fx          # the hard model, torch's MinMax calibration
    python scripts/bench_strategies.py --strategies basic,mse --max-trials 30 --timeout 0
    python scripts/bench_strategies.py --model ppocr_rec --algorithm '' --strategies basic,tpe,bayesian

The model and its data are built once; each strategy then tunes it from scratch in its own output dir
(under --out) with the same criterion, budget and seed. With --timeout 0 (the default, the seed's
meaning) each run stops at its first passing configuration, so the table compares how fast each
strategy reaches the goal; with --timeout > 0 it keeps searching for a better objective until the
budget is spent.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from _common import default_framework, load_bundle

import lpot_research  # noqa: E402
from lpot_research.adaptors import make_adaptor  # noqa: E402
from lpot_research.config import DEFAULT_SEED  # noqa: E402
from lpot_research.core.errors import ConfigError  # noqa: E402
from lpot_research.run.history import History  # noqa: E402
from lpot_research.strategies import BUILTIN  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm_wordnet", help="a config name of conf/model/")
    ap.add_argument("--strategies", default=",".join(BUILTIN), help="comma-separated strategy names")
    ap.add_argument("--max-trials", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=0, help="seconds per strategy; 0 = stop at first pass")
    ap.add_argument("--algorithm", default="minmax",
                    help="activation calibration(s) allowed, comma-separated ('' = framework defaults)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--framework", default=None, help="default: the model's own (onnxrt for ppocr_rec)")
    ap.add_argument("--backend", default=None, help="framework.backend (pytorch: export or fx; default: export)")
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in names if s not in BUILTIN]
    if bad:
        print(f"error: unknown strategy {bad[0]!r}; valid strategies: {', '.join(BUILTIN)}", file=sys.stderr)
        return 2
    framework = args.framework or default_framework(args.model)
    if args.backend and framework != "pytorch":
        print(f"error: --backend {args.backend} applies to framework pytorch only (this run's: {framework})",
              file=sys.stderr)
        return 2
    try:
        make_adaptor(framework, **({"backend": args.backend} if args.backend else {}))  # bad names fail here
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bundle = load_bundle(args.model, framework)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_strategies_"))
    quant = {}
    if args.algorithm:
        quant = {"model_wise": {"activation": {"algorithm": args.algorithm.split(",")}}}
    config = {"quantization": quant, "exit_policy": {"timeout": args.timeout, "max_trials": args.max_trials},
              "random_seed": args.seed, "threads": 1}
    rows = []
    for name in names:
        t0 = time.perf_counter()
        adaptor = make_adaptor(framework, threads=1, **({"backend": args.backend} if args.backend else {}))
        res = lpot_research.tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, bundle.metric,
                                 config=config, strategy=name, framework=adaptor, output_dir=out / name,
                                 example_inputs=bundle.example_inputs, model_name=bundle.name,
                                 bench_batch_size=bundle.bench_batch_size)
        wall = time.perf_counter() - t0
        history = History.read(out / name)
        base, trials = history.baseline, history.trials
        first = next((t for t in trials if t.passed), None)
        best = res.summary.best
        rows.append({
            "strategy": name,
            "to_goal": first.trial if first else None,
            "s_to_goal": first.elapsed_s - base["duration_s"] if first else None,
            "best_acc": best.accuracy if best else None,
            "ratio": best.latency_ratio if best else None,
            "trials": res.summary.trials,
            "wall": wall,
            "fp32": res.summary.baseline["accuracy"],
            "threshold": res.summary.criterion.threshold,
        })

    from lpot_research.core.cpu import cpu_info

    print(f"\nCPU: {cpu_info().describe()}; framework {framework}{f' ({args.backend})' if args.backend else ''}")
    print(f"model {bundle.name}: FP32 accuracy {rows[0]['fp32']:.4f}, criterion >= {rows[0]['threshold']:.4f}; "
          f"activation calibration {args.algorithm or 'default'}; max_trials {args.max_trials}, "
          f"timeout {args.timeout:g}; runs in {out}")
    head = f"{'strategy':<11} {'trials to goal':>14} {'s to goal':>9} {'best acc':>9} {'lat vs fp32':>11} " \
           f"{'trials':>6} {'wall s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        to_goal = str(r["to_goal"]) if r["to_goal"] is not None else f">{r['trials']}"
        s_goal = f"{r['s_to_goal']:.0f}" if r["s_to_goal"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        acc = f"{r['best_acc']:.4f}" if r["best_acc"] is not None else "-"
        print(f"{r['strategy']:<11} {to_goal:>14} {s_goal:>9} {acc:>9} {ratio:>11} {r['trials']:>6} {r['wall']:>7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
