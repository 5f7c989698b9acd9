#!/usr/bin/env python
"""PyTorch's two back ends side by side: export (torch.export + torchao PT2E, timed compiled by Inductor with
freezing) and FX (torch.ao FX graph mode, FBGEMM/oneDNN), on digits_cnn and minilm_wordnet, natively and with
the AVX2 class's kernels (LPOT_CPU_ISA=avx2: FBGEMM, oneDNN, ATen and Inductor's generated code).

    python scripts/bench_pytorch_backends.py [--models digits_cnn minilm_wordnet] [--classes native avx2]

Each (class, model) runs in its own process (the ISA cap is read at import). Per back end: the first
model-wise INT8 configuration, its accuracy and the FP32 model's, and latencies timed in alternating
rounds (median of medians), so machine noise hits all alike:
- `fp32 eager`: the model as the user gave it; `fp32 ref`: the back end's FP32 reference (export: compiled
  the same way as its INT8 model; FX: eager);
- `int8/ref`: what a run reports (INT8 / the back end's FP32 reference); `int8/eager`: INT8 / the user's model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import ROOT, first_int8, load_bundle


def measure(model_name: str, backends: list[str], rounds: int, iterations: int) -> list[dict]:
    import torch

    from lpot_research.adaptors.pytorch_backends import pytorch_adaptor

    torch.set_num_threads(1)
    bundle = load_bundle(model_name, framework="pytorch")
    rows = []
    for backend in backends:
        adaptor = pytorch_adaptor(backend, threads=1)
        fp32, int8, quant_s = first_int8(adaptor, bundle, 128)
        acc = [adaptor.evaluate(m, bundle.eval_dataloader, bundle.metric) for m in (fp32, int8)]
        x = adaptor.take_inputs(bundle.eval_dataloader, bundle.bench_batch_size)
        args = x if isinstance(x, tuple) else (x,)
        c0 = getattr(adaptor, "compile_seconds", 0.0)
        runs = {"eager": lambda args=args: bundle.model(*args), "ref": adaptor.runner(fp32, x),
                "int8": adaptor.runner(int8, x)}
        compile_s = getattr(adaptor, "compile_seconds", 0.0) - c0
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.inference_mode():
            for _ in range(rounds):
                for k, run in runs.items():
                    for _ in range(3):
                        run()
                    one = []
                    for _ in range(iterations):
                        t = time.perf_counter()
                        run()
                        one.append(time.perf_counter() - t)
                    times[k].append(statistics.median(one) * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": model_name, "backend": backend, "fp32_acc": acc[0], "int8_acc": acc[1],
                     "eager_ms": ms["eager"], "ref_ms": ms["ref"], "int8_ms": ms["int8"], "quant_s": quant_s,
                     "compile_s": compile_s, "batch": bundle.bench_batch_size, "notes": adaptor.cpu_notes()})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["digits_cnn", "minilm_wordnet"])
    ap.add_argument("--backends", nargs="*", default=["export", "fx"])
    ap.add_argument("--classes", nargs="*", default=["native", "avx2"], help="native and/or an LPOT_CPU_ISA value")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one (class, model) in this process
        print(json.dumps(measure(args.child, args.backends, args.rounds, args.iterations)))
        return 0

    rows = []
    for cls in args.classes:
        env = {k: v for k, v in os.environ.items() if k != "LPOT_CPU_ISA"}
        if cls != "native":
            env["LPOT_CPU_ISA"] = cls
        env["OMP_NUM_THREADS"] = "1"
        for model in args.models:
            r = subprocess.run([sys.executable, __file__, "--child", model, "--backends", *args.backends,
                                "--rounds", str(args.rounds), "--iterations", str(args.iterations)],
                               capture_output=True, text=True, env=env, cwd=ROOT)
            if r.returncode != 0:
                print(f"# {cls} {model}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
                continue
            for row in json.loads(r.stdout.strip().splitlines()[-1]):
                rows.append({"class": cls, **row})
                print(f"# {cls} {model} {row['backend']}: {'; '.join(row['notes'])}", file=sys.stderr)
    from lpot_research.core.cpu import cpu_info

    print(f"\nCPU: {cpu_info().describe()} (avx2 rows: LPOT_CPU_ISA=avx2 on this CPU); 1 thread; median of "
          f"{args.rounds} alternating rounds")
    print(f"{'class':<7} {'model':<15} {'backend':<7} {'batch':>5} {'fp32 acc':>8} {'int8 acc':>8} {'fp32 eager':>10} "
          f"{'fp32 ref':>9} {'int8 ms':>8} {'int8/ref':>8} {'int8/eager':>10} {'quant s':>7} {'compile s':>9}")
    for r in rows:
        print(f"{r['class']:<7} {r['model']:<15} {r['backend']:<7} {r['batch']:>5} {r['fp32_acc']:>8.4f} "
              f"{r['int8_acc']:>8.4f} {r['eager_ms']:>10.3f} {r['ref_ms']:>9.3f} {r['int8_ms']:>8.3f} "
              f"{r['int8_ms'] / r['ref_ms']:>7.2f}x {r['int8_ms'] / r['eager_ms']:>9.2f}x {r['quant_s']:>7.1f} "
              f"{r['compile_s']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
