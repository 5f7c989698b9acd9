#!/usr/bin/env python
"""Load a run's saved best model with plain torch.jit.load and re-evaluate it on the run's own
evaluation data; print both accuracies and exit non-zero if they differ.

    python scripts/verify_saved_model.py outputs/2026-11-22/10-00-00-123456
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--atol", type=float, default=1e-9, help="allowed accuracy difference")
    args = ap.parse_args()
    summary = json.loads((args.run_dir / "summary.json").read_text())
    cfg = OmegaConf.load(args.run_dir / "config_resolved.yaml")
    if cfg.framework._target_.rsplit(".", 1)[-1] != "PyTorchAdaptor":
        print(f"only PyTorch runs are checked by this script, not {cfg.framework._target_}", file=sys.stderr)
        return 2
    torch.set_num_threads(int(cfg.get("threads") or 1))
    model = torch.jit.load(str(args.run_dir / "best_model.pt"))  # plain PyTorch: no package class needed
    bundle = instantiate(cfg.model).load()  # the run's evaluation data and metric
    metric = bundle.metric
    metric.reset()
    with torch.inference_mode():
        for inputs, labels in bundle.eval_dataloader:
            metric.update(model(*(inputs if isinstance(inputs, tuple) else (inputs,))), labels)
    got, reported = float(metric.result()), summary["best"]["accuracy"]
    ok = abs(got - reported) <= args.atol
    print(f"reported accuracy {reported:.6f}, saved model re-evaluated {got:.6f}: {'MATCH' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
