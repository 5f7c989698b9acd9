"""Framework back ends. Built-in names map to classes imported lazily, so a framework that is not
installed costs nothing until it is asked for."""

from __future__ import annotations

import importlib
from typing import Any

from lpot_research._lazy import load_object
from lpot_research.errors import ConfigError

FRAMEWORKS = {
    "pytorch": ("lpot_research.adaptors.pytorch:PyTorchAdaptor", "torch", "pytorch"),
    "onnxrt": ("lpot_research.adaptors.onnxrt:OnnxRuntimeAdaptor", "onnxruntime", "onnxrt"),
}


def make_adaptor(name: str, **kwargs: Any) -> Any:
    if name not in FRAMEWORKS:
        raise ConfigError(f"unknown framework {name!r}; valid frameworks: {', '.join(FRAMEWORKS)}")
    target, module, extra = FRAMEWORKS[name]
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"framework {name!r} needs {module!r}, which is not installed "
                          f"(pip install 'lpot-research[{extra}]')") from e
    return load_object(target)(**{k: v for k, v in kwargs.items() if v is not None})
