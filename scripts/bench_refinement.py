#!/usr/bin/env python
"""The fastest passing model, not the first: basic with stage 4 (refinement) against the seed's rule,
side by side in one run, on real models.

    python scripts/bench_refinement.py                                  # digits_cnn, minilm_wordnet, ppocr_rec
    python scripts/bench_refinement.py --models ppocr_rec --timeout 600
    python scripts/bench_refinement.py --before a9459cd~1                # the defaults, then and now
    python scripts/bench_refinement.py --variant impact: --variant per_ms:strategy.order=impact_per_ms

With `--before REV`, each model runs with the default strategy settings twice instead: in a `git worktree`
of REV (the code before a change) and in this checkout. With `--variant LABEL:OVERRIDES` (repeated), once per
variant, each with its tune.py overrides (space-separated key=value; none for the defaults).

For each model, `tune.py strategy=basic` runs twice from scratch in its own run dir, with the same
criterion, seed and budget: `strategy.refine=0` (stop at the first passing config: the strategy's
behaviour before stage 4 existed, trial for trial) and `strategy.refine=8` (the default). It prints what
each run reports: the all-INT8 latency (the speed limit), the latency at goal and its ratio to the limit,
the fallback count, the accuracy, the trials, the wall time and the seconds to the first passing trial
(after the FP32 baseline, from the run's history). Latency ratios are each run's own
interleaved measurement against FP32; the CPU is printed first (say it with every number).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# each model on its default framework; minilm on the FX back end with MinMax, where naive INT8 misses
MODELS = {
    "digits_cnn": ["model=digits_cnn"],
    "digits_onnx": ["model=digits_cnn", "framework=onnxrt"],
    "minilm_export": ["model=minilm_wordnet", "quantization.model_wise.activation.algorithm=minmax"],
    "minilm_wordnet": ["model=minilm_wordnet", "framework.backend=fx",
                       "quantization.model_wise.activation.algorithm=minmax"],
    "minilm_onnx": ["model=minilm_wordnet", "framework=onnxrt", "quantization.model_wise.activation.algorithm=minmax"],
    "ppocr_rec": ["model=ppocr_rec", "framework=onnxrt"],
}


def run(args: list[str], out: Path, root: Path = ROOT) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(root / "tune.py"), *args, f"hydra.run.dir={out}"], cwd=root,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"tune.py {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    return {"summary": s, "wall": wall, "to_goal": seconds_to_goal(out)}


def seconds_to_goal(run_dir: Path) -> float | None:
    """Seconds from the end of the FP32 baseline to the end of the first passing trial, from the run's history."""
    from lpot_research.run.history import History

    history = History.read(run_dir)
    first = next((t for t in history.trials if t.passed), None)
    return None if first is None else first.elapsed_s - history.baseline["duration_s"]


def row(label: str, res: dict) -> str:
    s, best, limit = res["summary"], res["summary"]["best"] or {}, res["summary"].get("all_int8") or {}
    at_goal, lim = best.get("latency_ratio"), limit.get("latency_ratio")
    vs = f"{at_goal / lim:.2f}x" if at_goal and lim else "-"
    return (f"{label:<26} {lim or float('nan'):>8.2f}x {at_goal or float('nan'):>8.2f}x {vs:>9} "
            f"{len(best.get('fallback_ops', [])):>9} {best.get('accuracy') or float('nan'):>8.4f} "
            f"{s['trials']:>6} {res['wall']:>7.1f} {nan_if_none(res['to_goal']):>7.1f}"
            f"  {'met' if s['met_criterion'] else 'NOT met'}")


def nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--timeout", type=float, default=0, help="exit_policy.timeout (0: stop at the first pass)")
    ap.add_argument("--max-trials", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary dir)")
    ap.add_argument("--before", default=None, help="compare the defaults at this commit (a git worktree) and now")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL:OVERRIDES",
                    help="compare these variants instead (repeat it): a label, then tune.py's key=value overrides")
    ap.add_argument("--extra", default="", help="more tune.py overrides for every run, space-separated")
    args = ap.parse_args()
    bad_variant = next((v for v in args.variant if ":" not in v), None)
    if bad_variant is not None or (args.variant and args.before):
        print(f"error: --variant {bad_variant!r} must be LABEL:OVERRIDES (and not with --before)", file=sys.stderr)
        return 2
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in names if m not in MODELS]
    if bad:
        print(f"error: unknown model {bad[0]!r}; valid models: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_refinement_"))
    from lpot_research.core.cpu import cpu_info

    print(f"CPU: {cpu_info().describe()} | LPOT_CPU_ISA={os.environ.get('LPOT_CPU_ISA', '(none)')} | "
          f"timeout {args.timeout:g}, max_trials {args.max_trials}, one thread")
    print(f"{'model / strategy':<26} {'all-INT8':>9} {'at goal':>9} {'vs limit':>9} {'fallbacks':>9} "
          f"{'accuracy':>8} {'trials':>6} {'wall s':>7} {'goal s':>7}")
    variants: list[tuple[str, list[str], Path]] = [(f"refine={k}", [f"strategy.refine={k}"], ROOT) for k in (0, 8)]
    tree = out / "before"
    if args.before:
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), args.before], cwd=ROOT, check=True)
        variants = [(f"@{args.before}", [], tree), ("now", [], ROOT)]
    if args.variant:
        variants = [(label, overrides.split(), ROOT) for label, overrides in (v.split(":", 1) for v in args.variant)]
    try:
        for name in names:
            common = [*MODELS[name], "strategy=basic", f"exit_policy.timeout={args.timeout:g}",
                      f"exit_policy.max_trials={args.max_trials}", *args.extra.split()]
            for label, extra, root in variants:
                res = run([*common, *extra], out / re.sub(r"[^\w.-]", "_", f"{name}_{label}"), root)
                print(row(f"{name} {label}", res), flush=True)
    finally:
        if args.before:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    print(f"runs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
