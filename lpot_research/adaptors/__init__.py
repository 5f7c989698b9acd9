"""Framework back ends. Built-in names map to classes imported lazily, so a framework that is not
installed costs nothing until it is asked for."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from lpot_research.core._lazy import load_object
from lpot_research.core.errors import ConfigError

FRAMEWORKS = {
    "pytorch": ("lpot_research.adaptors.pytorch_backends:pytorch_adaptor", "torch", "pytorch"),
    "onnxrt": ("lpot_research.adaptors.onnxrt:OnnxRuntimeAdaptor", "onnxruntime", "onnxrt"),
    "tensorflow": ("lpot_research.adaptors.tensorflow:TensorFlowAdaptor", "tensorflow", "tensorflow"),
    "mxnet": ("lpot_research.adaptors.mxnet:MXNetAdaptor", "mxnet", "mxnet"),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a module blocked by a None entry in
    sys.modules counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def make_adaptor(name: str, **kwargs: Any) -> Any:
    if name not in FRAMEWORKS:
        raise ConfigError(f"unknown framework {name!r}; valid frameworks: {', '.join(FRAMEWORKS)}")
    target, module, extra = FRAMEWORKS[name]
    # find_spec checks installation without importing (mxnet cannot be imported before the adaptor
    # restores the numpy aliases it needs)
    if not installed(module):
        raise ConfigError(f"framework={name} needs {module}, which is not installed: pip install -e '.[{extra}]'")
    return load_object(target)(**{k: v for k, v in kwargs.items() if v is not None})
