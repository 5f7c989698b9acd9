#!/usr/bin/env python
"""Compare the runs of a sweep: a table per run and a PNG of tuning curves.

    python tune.py -m strategy=basic,mse,tpe model=minilm_wordnet
    python scripts/compare.py multirun/<date>/<time>            # table + <sweep>/compare.png

Reads every run dir below SWEEP_DIR that holds a summary.json and a history.jsonl. The table has,
per run: strategy, trials to the first passing config, best accuracy, best latency ratio vs FP32,
trials and wall time. The PNG has two panels, one line per run: best-so-far accuracy vs trial, and
best-so-far objective (relative to FP32) among passing configs vs trial.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from lpot_research.run.history import History
from lpot_research.run.summary import Summary


def load_run(run_dir: Path) -> dict[str, Any]:
    summary = Summary.from_dict(json.loads((run_dir / "summary.json").read_text()))
    return {"dir": run_dir, "summary": summary, "trials": History.read(run_dir).trials}


def find_runs(sweep: Path) -> list[dict[str, Any]]:
    dirs = sorted({p.parent for p in sweep.rglob("summary.json") if (p.parent / "history.jsonl").exists()})
    return [load_run(d) for d in dirs]


def curves(run: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Best-so-far accuracy and best-so-far objective ratio (passing configs only; NaN before one)."""
    s: Summary = run["summary"]
    hib = s.criterion.higher_is_better
    base_obj = s.baseline.get(_objective_key(s))
    acc_curve, obj_curve = [], []
    best_acc, best_obj = math.nan, math.nan
    for t in run["trials"]:
        if t.status == "ok" and t.accuracy is not None:
            if math.isnan(best_acc) or (t.accuracy > best_acc if hib else t.accuracy < best_acc):
                best_acc = t.accuracy
            if t.passed and t.objective is not None:
                ratio = t.objective / base_obj if base_obj else t.objective
                best_obj = ratio if math.isnan(best_obj) else min(best_obj, ratio)
        acc_curve.append(best_acc)
        obj_curve.append(best_obj)
    return acc_curve, obj_curve


def _objective_key(summary: Summary) -> str:
    return {"performance": "latency_ms", "modelsize": "size_bytes", "footprint": "footprint_bytes"}.get(
        summary.objective, "latency_ms")


def label(run: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    name = run["summary"].strategy
    if sum(r["summary"].strategy == name for r in runs) > 1:  # several runs per strategy: add the dir
        name += f" ({run['dir'].name})"
    return name


def table(runs: list[dict[str, Any]]) -> str:
    w = max(8, *(len(label(r, runs)) for r in runs))
    head = (f"{'strategy':<{w}} {'model':<16} {'to first pass':>13} {'best acc':>9} {'FP32 acc':>9} "
            f"{'latency vs fp32':>15} {'trials':>6} {'wall s':>8}  stop reason")
    lines = [head, "-" * len(head)]
    for r in runs:
        s, t = r["summary"], r["trials"]
        first = next((x.trial for x in t if x.passed), None)
        best = s.best
        ratio = best.latency_ratio if best else None
        lines.append(
            f"{label(r, runs):<{w}} {s.model:<16} {first if first is not None else 'never':>13} "
            f"{best.accuracy if best else math.nan:>9.4f} {s.baseline['accuracy']:>9.4f} "
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>15} {s.trials:>6} {s.elapsed_s:>8.1f}  "
            f"{s.stop_reason}")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for r in runs:
        acc, obj = curves(r)
        xs = list(range(1, len(acc) + 1))
        name = label(r, runs)
        ax1.plot(xs, acc, marker=".", label=name)
        ax2.plot(xs, obj, marker=".", label=name)
    if runs:
        s = runs[0]["summary"]
        ax1.axhline(s.baseline["accuracy"], color="grey", ls="--", lw=1, label="FP32")
        ax1.axhline(s.criterion.threshold, color="red", ls=":", lw=1, label="criterion")
        ax2.axhline(1.0, color="grey", ls="--", lw=1, label="FP32")
        ax2.set_ylabel(f"best passing {s.objective} / FP32 (lower is better)")
    ax1.set_xlabel("trial")
    ax1.set_ylabel("best accuracy so far")
    ax1.set_title("accuracy")
    ax2.set_xlabel("trial")
    ax2.set_title("objective among passing configs")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compare the runs of a sweep (table + tuning-curve PNG).")
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--png", type=Path, default=None, help="where to write the plot (default: SWEEP_DIR/compare.png)")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    runs = find_runs(args.sweep_dir)
    if not runs:
        print(f"error: no run with summary.json and history.jsonl below {args.sweep_dir}", file=sys.stderr)
        return 2
    print(table(runs))
    png = args.png or args.sweep_dir / "compare.png"
    plot(runs, png)
    print(f"tuning curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
