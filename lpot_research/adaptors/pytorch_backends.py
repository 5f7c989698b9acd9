"""framework=pytorch: `framework.backend` picks the back end. `export` (the default): torch.export +
torchao's PT2E quantization, timed compiled by Inductor (lpot_research.adaptors.pytorch_export); `fx`:
torch.ao FX graph mode, deprecated in torch, for models written for torch.fx and TorchScript files
(lpot_research.adaptors.pytorch)."""

from __future__ import annotations

from typing import Any

from lpot_research.adaptors.base import Adaptor
from lpot_research.core._lazy import load_object
from lpot_research.core.errors import ConfigError

BACKENDS = {"export": "lpot_research.adaptors.pytorch_export:PyTorchExportAdaptor",
            "fx": "lpot_research.adaptors.pytorch:PyTorchAdaptor"}
DEFAULT_BACKEND = "export"
# options of one back end only, and the value that means "not set" for the other
ONLY = {"engine": ("fx", "x86"), "compile": ("export", True)}


def pytorch_adaptor(backend: str | None = None, **kwargs: Any) -> Adaptor:
    """framework=pytorch: the adaptor of `backend` (None: the default, export). An option of the other
    back end is refused unless it has its default value (conf/framework/pytorch.yaml lists them all)."""
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ConfigError(f"framework.backend={backend!r} is unknown; valid choices: {list(BACKENDS)} (the FX "
                          "back end's quantized engine is framework.engine)")
    for key, (owner, default) in ONLY.items():
        if owner != backend and key in kwargs:
            if kwargs[key] not in (None, default):
                raise ConfigError(f"framework.{key}={kwargs[key]!r} applies to framework.backend={owner} only "
                                  f"(this run's backend: {backend})")
            del kwargs[key]
    return load_object(BACKENDS[backend])(**{k: v for k, v in kwargs.items() if v is not None})
