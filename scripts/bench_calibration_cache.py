#!/usr/bin/env python
"""Time per trial of the ONNX Runtime back end with and without the calibration cache, side by side.

    python scripts/bench_calibration_cache.py                     # ppocr_rec, the stage-1 configs
    python scripts/bench_calibration_cache.py --model digits_cnn --trials 8

Both adaptors quantize and evaluate the same configurations (basic's model-wise configs, cycled) on
the same model and data, in one process: with the cache each (sampling size, calibration method) is
calibrated once per run; without it every trial recalibrates, as the anchor does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import load_bundle

from lpot_research.adaptors.onnxrt import OnnxRuntimeAdaptor  # noqa: E402
from lpot_research.quant.space import build_space  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ppocr_rec", help="a config name of conf/model/")
    ap.add_argument("--trials", type=int, default=12, help="configurations to quantize and evaluate per adaptor")
    ap.add_argument("--sampling-size", type=int, default=64)
    args = ap.parse_args()
    bundle = load_bundle(args.model)
    rows = []
    for cached in (True, False):
        adaptor = OnnxRuntimeAdaptor(threads=1, cache_calibration=cached)
        model = adaptor.prepare(bundle.model, bundle.example_inputs)
        space = build_space(adaptor.capabilities(model, "post_training_static_quant", None),
                            "post_training_static_quant", args.sampling_size)
        configs = space.model_wise_configs()
        times = []
        for k in range(args.trials):
            t0 = time.perf_counter()
            q = adaptor.quantize(model, configs[k % len(configs)], bundle.calib_dataloader, bundle.example_inputs)
            adaptor.evaluate(q, bundle.eval_dataloader, bundle.metric)
            times.append(time.perf_counter() - t0)
        rows.append((cached, times, adaptor.calibrations))
    print(f"\nmodel {bundle.name}: {args.trials} trials (quantize + evaluate) cycling {len(configs)} model-wise "
          f"configs, sampling_size {args.sampling_size}, 1 thread")
    print(f"{'calibration':<14} {'calibrations':>12} {'total s':>8} {'mean s/trial':>12} {'median s/trial':>14}")
    for cached, times, calibrations in rows:
        print(f"{'cached' if cached else 'every trial':<14} {calibrations:>12} {sum(times):>8.1f} "
              f"{statistics.mean(times):>12.2f} {statistics.median(times):>14.2f}")
    speedup = sum(rows[1][1]) / sum(rows[0][1])
    print(f"the cache makes tuning {speedup:.1f}x faster over these {args.trials} trials")
    return 0


if __name__ == "__main__":
    sys.exit(main())
