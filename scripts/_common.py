"""Helpers shared by the scripts in this folder (run them from anywhere: they find the repo)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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
