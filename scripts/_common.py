"""Helpers shared by the scripts in this folder (run them from anywhere: they find the repo)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def first_int8(adaptor: Any, bundle: Any, sampling_size: int = 64) -> tuple[Any, Any, float]:
    """(the prepared FP32 model, it quantized with the first model-wise static INT8 configuration, the
    seconds both took)."""
    import time

    from lpot_research.quant.space import build_space

    t0 = time.perf_counter()
    fp32 = adaptor.prepare(bundle.model, bundle.example_inputs)
    approach = "post_training_static_quant"
    cfg = build_space(adaptor.capabilities(fp32, approach, bundle.example_inputs), approach,
                      sampling_size).model_wise_configs()[0]
    int8 = adaptor.quantize(fp32, cfg, bundle.calib_dataloader, bundle.example_inputs)
    return fp32, int8, time.perf_counter() - t0


def load_bundle(name: str, framework: str | None = None) -> Any:
    """Build a built-in model bundle from conf/model/<name>.yaml (for `framework`, else the model's
    default one); exit with one line naming the valid models when there is no such config."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "model" / f"{name}.yaml"
    if not path.exists():
        valid = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        print(f"error: unknown model {name!r}; valid models: {valid}", file=sys.stderr)
        sys.exit(2)
    spec = instantiate(OmegaConf.load(path))
    return spec.load() if framework is None else spec.load(framework=framework)


def default_framework(name: str) -> str:
    """The framework a built-in model runs on by default (the first its spec lists; PyTorch if none)."""
    import importlib

    from omegaconf import OmegaConf

    module, _, cls = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml").get("_target_", "").rpartition(".")
    frameworks = getattr(getattr(importlib.import_module(module), cls), "frameworks", ("pytorch",))
    return frameworks[0]
