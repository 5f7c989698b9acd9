#!/usr/bin/env python
"""Time to a tuned model, this code against an earlier commit, side by side on the same machine.

    python scripts/bench_time_to_goal.py                       # against the commit before the speed work
    python scripts/bench_time_to_goal.py --before 0fad390 --scenarios minilm digits
    python scripts/bench_time_to_goal.py --after HEAD          # HEAD in a worktree: edit the checkout meanwhile
    LPOT_CPU_ISA=avx2 python scripts/bench_time_to_goal.py     # the AVX2 class's kernels (see lpot_research.core.cpu)

Each scenario runs `tune.py` with the same arguments and seed in a `git worktree` of the earlier commit
and in this checkout, one after the other (the earlier code first, so a warm cache helps the new code no
more than the old), each in a fresh process with one thread. Reported per run: trials, trials
evaluated on the whole evaluation set, samples evaluated, seconds spent benchmarking latency, wall
time, the best accuracy against FP32 and its latency ratio. The new code reports its costs in
summary.json. The earlier code benchmarked every trial (and the baseline) with 5 warm-up and 30 timed
runs at the benchmark batch: its benchmark seconds are estimated as that count times the median time of
one inference of its best model, measured by this script afterwards (profiling the run itself would
slow its Python-heavy quantizer and distort its wall time); its samples are its trial count times the
evaluation set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lpot_research.run.history import History

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "ppocr": ["framework=onnxrt", "model=ppocr_rec"],
    "minilm": ["model=minilm_wordnet", "quantization.model_wise.activation.algorithm=minmax"],
    "digits": [],
}
DEFAULT_BEFORE = "0fad390"  # the last commit before the time-to-goal work (issue 14)


def run(tree: Path, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(tree / "tune.py"), *args, f"hydra.run.dir={out}"]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "stderr.log").write_text(r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"{tree.name}: tune.py {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    ok = [t for t in History.read(out).trials if t.ok]  # the earlier code's history reads the same way
    costs = s.get("costs")
    if costs is not None:  # this code: its own accounting
        full, samples, bench = costs["full_evaluations"], costs["samples_evaluated"], costs["benchmark_s"]
    else:  # the earlier code evaluated every trial whole and benchmarked every one
        n = _eval_samples(out)
        full, samples = len(ok), (len(ok) * n if n else None)
        bench = (len(ok) + 1) * 35 * _one_inference_s(out)
    best = s["best"] or {}
    return {"trials": s["trials"], "full": full, "samples": samples, "bench_s": bench, "wall_s": wall,
            "accuracy": best.get("accuracy"), "baseline": s["baseline"]["accuracy"], "met": s["met_criterion"],
            "latency_ratio": best.get("latency_ratio"), "fallback": len(best.get("fallback_ops") or [])}


def _build(out: Path) -> tuple[Any, Any, Any, Any]:
    """(adaptor, FP32 model, best quantized model, benchmark inputs) of a finished run, rebuilt with this
    code from its resolved config and best configuration."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lpot_research.quant.space import TuneConfig

    cfg = OmegaConf.load(out / "config_resolved.yaml")
    adaptor = instantiate(cfg.framework)
    bundle = instantiate(cfg.model).load(framework=adaptor.name)
    batch = cfg.benchmark.batch_size or bundle.bench_batch_size
    model = adaptor.prepare(bundle.model, bundle.example_inputs)
    best = OmegaConf.to_container(OmegaConf.load(out / "best_config.yaml"))
    cfg_best = TuneConfig.from_dict({k: best[k] for k in ("approach", "sampling_size", "ops")})
    q = adaptor.quantize(model, cfg_best, bundle.calib_dataloader, bundle.example_inputs)
    return adaptor, model, q, adaptor.take_inputs(bundle.eval_dataloader, batch)


def remeasure(outs: list[Path]) -> list[float]:
    """The latency ratio of each run's best model against FP32, measured now, side by side by one method
    (runs interleaved with FP32 until stable, rounds alternating between the runs): the runs' own ratios
    were taken at different times under different load, by different methods."""
    from lpot_research.measure.benchmark import Benchmark

    built = [_build(o) for o in outs]
    bench = Benchmark(batch_size=1, warmup=5, iterations=200, min_iterations=30, tolerance=0.02)
    ratios: list[list[float]] = [[] for _ in outs]
    for _ in range(3):
        for i, (adaptor, fp32, q, x) in enumerate(built):
            ratios[i].append(adaptor.measure_latency(q, x, bench, reference=fp32).ratio)
    return [sorted(r)[1] for r in ratios]


def _one_inference_s(out: Path) -> float:
    """Median seconds of one inference of the run's best model at its benchmark batch, with this code's
    adaptor (the same framework runtime the earlier code used)."""
    adaptor, _, q, x = _build(out)
    return adaptor.latency_ms(q, x, 5, 30) / 1e3


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
    ap.add_argument("--after", default=None,
                    help="a later commit to run instead of this checkout (lets you edit the checkout meanwhile)")
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary directory)")
    ap.add_argument("--remeasure", type=Path, default=None,
                    help="only re-measure the latency ratios of the runs of an earlier --out directory")
    args = ap.parse_args()

    from lpot_research.core.cpu import cpu_info

    if args.remeasure is not None:
        for name in args.scenarios:
            dirs = [args.remeasure / name / "before", args.remeasure / name / "after"]
            if all((d / "best_config.yaml").exists() for d in dirs):
                b, a = remeasure(dirs)
                print(f"{name}: best latency ratio re-measured side by side: before {b:.2f}x, after {a:.2f}x")
        return 0

    work = Path(args.out or tempfile.mkdtemp(prefix="lpot_ttg_"))
    trees = {"before": (f"before ({args.before})", work / f"worktree-{args.before}", args.before),
             "after": ((f"after ({args.after})", work / f"worktree-{args.after}", args.after) if args.after
                       else ("after (this code)", ROOT, None))}
    for _, tree, commit in trees.values():
        if commit and not tree.exists():
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                           capture_output=True)
    rows = []
    try:
        for name in args.scenarios:
            for side, (label, tree, _) in trees.items():
                print(f"# {name}: {label} ...", file=sys.stderr, flush=True)
                res = run(tree, SCENARIOS[name], work / name / side)
                rows.append((name, label, res))
                print(f"# {name}: {label}: {res}", file=sys.stderr, flush=True)
    finally:
        for _, tree, commit in trees.values():
            if commit:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)

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
        lat = remeasure([work / name / "before", work / name / "after"]) if a["met"] and b["met"] else None
        print(f"{name}: wall time after/before {a['wall_s'] / b['wall_s']:.2f}x, trials {a['trials']} vs "
              f"{b['trials']}" + (f"; best latency ratio re-measured side by side: before {lat[0]:.2f}x, after "
                                  f"{lat[1]:.2f}x" if lat else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
