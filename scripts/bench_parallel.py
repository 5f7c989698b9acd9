#!/usr/bin/env python
"""One tuning run on 1 and on N worker processes (parallel.workers), side by side on this machine.

    python scripts/bench_parallel.py                         # basic on ppocr_rec (ONNX Runtime), 1 vs 2 workers
    python scripts/bench_parallel.py --workers 4 --scenario minilm
    python scripts/bench_parallel.py --backend dask          # a local dask.distributed cluster instead of loky

Both runs use `tune.py` from this checkout with the same arguments and seed, one thread per process
(workers and the tuning process alike), one after the other. Reported: wall time, trials, the best
configuration and its accuracy, and the ratio of wall times. The parallel contract says both runs
evaluate the same configurations and find the same best; the script says whether they did.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_time_to_goal import ROOT, SCENARIOS, run  # noqa: E402

from lpot_research.run.history import History  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="ppocr", choices=list(SCENARIOS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", default="loky", choices=["loky", "dask"])
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary directory)")
    ap.add_argument("extra", nargs="*", help="more tune.py overrides for both runs, e.g. strategy=mse")
    args = ap.parse_args()
    from lpot_research.core.cpu import cpu_info

    work = Path(args.out or tempfile.mkdtemp(prefix="lpot_par_"))
    base = [*SCENARIOS[args.scenario], "threads=1", *args.extra]
    rows = {}
    for n in (1, args.workers):
        print(f"# {args.scenario}: {n} worker(s) ...", file=sys.stderr, flush=True)
        out = work / f"workers{n}"
        rows[n] = run(ROOT, [*base, f"parallel.workers={n}", f"parallel.backend={args.backend}"], out)
        rows[n]["ids"] = [t.config_id for t in History.read(out).trials]
        rows[n]["best_trial"], rows[n]["best_id"] = _best(out)
        print(f"# {n} worker(s): {rows[n]['trials']} trials, {rows[n]['wall_s']:.1f} s", file=sys.stderr, flush=True)

    print(f"\nCPU: {cpu_info().describe()}; one thread per process; {args.backend}; runs in {work}")
    print(f"{'workers':>7} {'trials':>6} {'wall s':>7} {'accuracy (fp32)':>16} {'best trial':>10}")
    for n, r in rows.items():
        acc = f"{r['accuracy']:.4f} ({r['baseline']:.4f})" if r["accuracy"] is not None else "-"
        print(f"{n:>7} {r['trials']:>6} {r['wall_s']:>7.1f} {acc:>16} {r['best_trial'] or '-':>10}")
    one, many = rows[1], rows[args.workers]
    same = one["ids"] == many["ids"] and one["best_id"] == many["best_id"]
    print(f"{args.scenario}: wall time {args.workers} workers / 1 worker = {many['wall_s'] / one['wall_s']:.2f}x; "
          f"same configurations and best: {'yes' if same else 'NO'}")
    return 0 if same else 1


def _best(out: Path) -> tuple[int | None, str | None]:
    """(trial, config id) of the run's best."""
    import json

    best = json.loads((out / "summary.json").read_text()).get("best") or {}
    return best.get("trial"), best.get("config_id")


if __name__ == "__main__":
    sys.exit(main())
