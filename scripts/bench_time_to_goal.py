#!/usr/bin/env python
"""Time to a tuned model, this code against an earlier commit, side by side on the same machine.

    python scripts/bench_time_to_goal.py                       # against the commit before the speed work
    python scripts/bench_time_to_goal.py --before 0fad390 --scenarios minilm digits
    LPOT_CPU_ISA=avx2 python scripts/bench_time_to_goal.py     # the AVX2 class's kernels (see lpot_research.cpu)

Each scenario runs `tune.py` with the same arguments and seed in a `git worktree` of the earlier commit
and in this checkout, one after the other (the earlier code first, so a warm cache helps the new code no
more than the old), each in a fresh process with one thread. Reported per run: trials, trials
evaluated on the whole evaluation set, samples evaluated, seconds spent benchmarking latency, wall
time, the best accuracy against FP32 and its latency ratio. The new code reports its costs in
summary.json; the old code's benchmark seconds are read from a cProfile of its run (its
`latency_ms` calls), its samples from its trial count times the evaluation set.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "ppocr": ["framework=onnxrt", "model=ppocr_rec"],
    "minilm": ["model=minilm_wordnet", "quantization.model_wise.activation.algorithm=minmax"],
    "digits": [],
}
DEFAULT_BEFORE = "0fad390"  # the last commit before the time-to-goal work (issue 14)


def run(tree: Path, args: list[str], out: Path, profile: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", str(out / "profile.out")]
    cmd += [str(tree / "tune.py"), *args, f"hydra.run.dir={out}"]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "stderr.log").write_text(r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"{tree.name}: tune.py {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    lines = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines() if x.strip()]
    trials = [t for t in lines if t.get("kind") == "trial"]
    ok = [t for t in trials if t["status"] == "ok"]
    costs = s.get("costs")
    if costs is not None:  # this code: its own accounting
        full, samples, bench = costs["full_evaluations"], costs["samples_evaluated"], costs["benchmark_s"]
    else:  # the earlier code evaluated every trial whole and benchmarked every one
        n = _eval_samples(out)
        full, samples = len(ok), (len(ok) * n if n else None)
        stats = pstats.Stats(str(out / "profile.out"))
        bench = sum(v[3] for k, v in stats.stats.items() if k[2] == "latency_ms")
    best = s["best"] or {}
    return {"trials": s["trials"], "full": full, "samples": samples, "bench_s": bench, "wall_s": wall,
            "accuracy": best.get("accuracy"), "baseline": s["baseline"]["accuracy"], "met": s["met_criterion"],
            "latency_ratio": best.get("latency_ratio"), "fallback": len(best.get("fallback_ops") or [])}


def _eval_samples(out: Path) -> int | None:
    """Evaluation samples of the run's model (from its resolved config, e.g. eval_size)."""
    text = (out / "config_resolved.yaml").read_text()
    for key in ("eval_size:",):
        for line in text.splitlines():
            if line.strip().startswith(key):
                return int(line.split(":")[1])
    return {"digits_cnn": 540}.get(next((ln.split(":")[1].strip() for ln in text.splitlines()
                                         if ln.strip().startswith("name:")), ""), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="the earlier commit to compare with")
    ap.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary directory)")
    args = ap.parse_args()

    from lpot_research.cpu import cpu_info

    work = Path(args.out or tempfile.mkdtemp(prefix="lpot_ttg_"))
    before = work / f"worktree-{args.before}"
    if not before.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
    rows = []
    try:
        for name in args.scenarios:
            for label, tree in ((f"before ({args.before})", before), ("after (this code)", ROOT)):
                print(f"# {name}: {label} ...", file=sys.stderr, flush=True)
                res = run(tree, SCENARIOS[name], work / name / ("before" if tree != ROOT else "after"),
                          profile=tree != ROOT)
                rows.append((name, label, res))
                print(f"# {name}: {label}: {res}", file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)

    print(f"\nCPU: {cpu_info().describe()}; one thread; runs in {work}")
    print(f"{'scenario':<8} {'code':<20} {'trials':>6} {'full evals':>10} {'samples':>8} {'bench s':>8} "
          f"{'wall s':>7} {'accuracy (fp32)':>16} {'latency':>8} {'fallback':>8}")
    for name, label, r in rows:
        acc = f"{r['accuracy']:.4f} ({r['baseline']:.4f})" if r["accuracy"] is not None else "-"
        ratio = f"{r['latency_ratio']:.2f}x" if r["latency_ratio"] is not None else "-"
        print(f"{name:<8} {label:<20} {r['trials']:>6} {r['full']:>10} {r['samples'] or '-':>8} "
              f"{r['bench_s']:>8.1f} {r['wall_s']:>7.1f} {acc:>16} {ratio:>8} {r['fallback']:>8}"
              + ("" if r["met"] else "  (criterion NOT met)"))
    by = {(n, lbl.split()[0]): r for n, lbl, r in rows}
    for name in args.scenarios:
        b, a = by[(name, "before")], by[(name, "after")]
        print(f"{name}: wall time after/before {a['wall_s'] / b['wall_s']:.2f}x, trials {a['trials']} vs "
              f"{b['trials']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
