#!/usr/bin/env python
"""INT8 vs FP32 on every installed framework, side by side in one run: the same trained digits_cnn
(PyTorch weights, exported or carried over to each framework), quantized with each framework's
first model-wise configuration, evaluated, and timed at two batch sizes.

    python scripts/bench_frameworks.py [--model digits_cnn] [--threads 1] [--batches 1 32] [--rounds 5]

Timings alternate FP32 and INT8 runs for several rounds and keep each one's median, so machine
noise hits both alike; the ratio column is INT8 latency / FP32 latency (below 1 = INT8 faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _common import first_int8, load_bundle

from lpot_research.adaptors import FRAMEWORKS, installed, make_adaptor
from lpot_research.core.cpu import cpu_info
from lpot_research.core.errors import ConfigError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--frameworks", nargs="*", default=list(FRAMEWORKS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20)
    args = ap.parse_args()

    rows = []
    for name in args.frameworks:
        module = FRAMEWORKS[name][1]
        if not installed(module):
            print(f"# {name}: skipped ({module} is not installed)", file=sys.stderr)
            continue
        try:
            bundle = load_bundle(args.model, framework=name)
        except ConfigError as e:
            print(f"# {name}: skipped ({e})", file=sys.stderr)
            continue
        adaptor = make_adaptor(name, threads=args.threads)
        fp32, int8, quant_s = first_int8(adaptor, bundle)
        acc = [adaptor.evaluate(m, bundle.eval_dataloader, bundle.metric) for m in (fp32, int8)]
        for batch in args.batches:
            x = adaptor.take_inputs(bundle.eval_dataloader, batch)
            times: list[list[float]] = [[], []]
            for _ in range(args.rounds):
                for i, m in enumerate((fp32, int8)):
                    times[i].append(adaptor.latency_ms(m, x, 3, args.iterations))
            f, q = statistics.median(times[0]), statistics.median(times[1])
            rows.append((name, batch, acc[0], acc[1], f, q, q / f, quant_s))
            print(f"# {name} batch {batch}: fp32 {f:.3f} ms, int8 {q:.3f} ms", file=sys.stderr)
        print(f"# {name}: {'; '.join(adaptor.cpu_notes()) or 'nothing depends on the CPU class'}", file=sys.stderr)

    print(f"\nCPU: {cpu_info().describe()}")
    print(f"{args.model}, {args.threads} thread(s), median of {args.rounds} alternating rounds")
    print(f"{'framework':<11} {'batch':>5} {'fp32 acc':>8} {'int8 acc':>8} {'fp32 ms':>9} {'int8 ms':>9} "
          f"{'int8/fp32':>9} {'prep+quant s':>12}")
    for name, batch, a0, a1, f, q, r, s in rows:
        print(f"{name:<11} {batch:>5} {a0:>8.4f} {a1:>8.4f} {f:>9.3f} {q:>9.3f} {r:>8.2f}x {s:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
