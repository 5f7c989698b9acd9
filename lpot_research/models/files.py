"""model=file: your own model from a file, in its framework's own format, tuned on your data (`data=...`).

    python tune.py framework=onnxrt model=file model.path=m.onnx data=npz data.path=eval.npz metric=topk
    python tune.py model=file model.path=m.pt2 data=image_folder data.path=images/  # torch.export
    python tune.py model=file model.path=m.pt framework.backend=fx data=npz data.path=eval.npz  # TorchScript

Formats, by framework:
- onnxrt: an `.onnx` file (input names and shapes are read from the model);
- pytorch: an ExportedProgram `.pt2` (`torch.export.save`; the default back end, export), a state_dict
  file with `model.module` naming the nn.Module to build (`{_target_: mypkg.Net, width: 16}`), or a
  TorchScript file (`torch.jit.save`; framework.backend=fx only);
- tensorflow: a `.keras` file or a SavedModel directory;
- mxnet: `<prefix>-symbol.json` beside `<prefix>-0000.params`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lpot_research.core.errors import ConfigError
from lpot_research.models import ModelBundle

FRAMEWORK_OF = {".onnx": "onnxrt", ".pt2": "pytorch", ".pt": "pytorch", ".pth": "pytorch", ".keras": "tensorflow",
                ".json": "mxnet"}


def framework_of(path: Path) -> str | None:
    if path.is_dir():
        return "tensorflow" if (path / "saved_model.pb").exists() else None
    if path.name.endswith("-symbol.json"):
        return "mxnet"
    return FRAMEWORK_OF.get(path.suffix.lower())


class ModelFile:
    """Spec of a model file (see the module docstring); the data comes from the `data` group."""

    requires: tuple[str, ...] = ()

    def __init__(self, path: str | None = None, name: str | None = None, module: Any = None,
                 bench_batch_size: int | None = None, metric: Any = None) -> None:
        if not path:
            raise ConfigError("model=file needs model.path: the model's file (.onnx, an ExportedProgram .pt2, "
                              "TorchScript .pt, .keras, a SavedModel dir, <prefix>-symbol.json)")
        p = Path(str(path))
        if not p.exists():
            raise ConfigError(f"model.path={str(path)!r} does not exist")
        if framework_of(p) is None and module is None:
            raise ConfigError(f"model.path={str(path)!r}: unknown format; valid: .onnx (onnxrt), ExportedProgram "
                              ".pt2 or TorchScript .pt/.pth (pytorch), .keras or a SavedModel dir (tensorflow), "
                              "<prefix>-symbol.json (mxnet)")
        if bench_batch_size is not None and (not isinstance(bench_batch_size, int) or bench_batch_size < 1):
            raise ConfigError(f"model.bench_batch_size={bench_batch_size!r} must be an int >= 1")
        self.path, self.name, self.module = str(path), name or p.name.split(".")[0].removesuffix("-symbol"), module
        self.bench_batch_size, self.metric = bench_batch_size, metric

    def check_framework(self, framework: str) -> None:
        """One line when the file is not in this framework's format."""
        fmt = framework_of(Path(self.path)) if self.module is None else "pytorch"
        if fmt != framework:
            raise ConfigError(f"model.path={self.path!r} is a model for framework={fmt}, not framework={framework}; "
                              f"run with framework={fmt}")

    def _torch(self) -> Any:
        import torch

        if self.module is not None:
            from hydra.utils import instantiate

            net = instantiate(self.module) if isinstance(self.module, dict) or hasattr(self.module, "keys") \
                else self.module
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
            return net.eval()
        if Path(self.path).suffix.lower() == ".pt2":
            return self._exported()
        try:
            return torch.jit.load(self.path, map_location="cpu").eval()
        except RuntimeError as e:
            raise ConfigError(f"model.path={self.path!r} is not a TorchScript file ({str(e).splitlines()[0]}); a "
                              "state_dict needs model.module={_target_: your.Module, ...}") from None

    def _check_onnx(self) -> None:
        """The file decodes as an ONNX model (else one line, before tuning)."""
        import onnx

        try:
            onnx.load(self.path, load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, a truncated file
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"model.path={self.path!r} does not decode as an ONNX model ({type(e).__name__}: "
                              f"{first})") from None

    def _exported(self) -> Any:
        """A saved ExportedProgram (also one this package tuned: its Q/DQ ops are registered first)."""
        import torch
        import torch.ao.quantization.fx._decomposed  # noqa: F401 - the quantized_decomposed ops

        try:
            return torch.export.load(self.path)
        except Exception as e:  # noqa: BLE001 - e.g. an AOTInductor package, or a truncated file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"model.path={self.path!r} is not a torch.export ExportedProgram "
                              f"({type(e).__name__}: {first}); save one with torch.export.save") from None

    def load(self, framework: str = "onnxrt") -> ModelBundle:
        """The model in the form `framework`'s adaptor takes (the data is set by the caller)."""
        from lpot_research.measure.metrics import TopK

        self.check_framework(framework)
        if framework == "onnxrt":
            self._check_onnx()
        model: Any = self._torch() if framework == "pytorch" else self.path
        return ModelBundle(self.name, model, None, None, self.metric if self.metric is not None else TopK(1), None,
                           self.bench_batch_size or 0, info={"path": self.path})
