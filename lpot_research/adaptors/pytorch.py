"""PyTorch's FX back end (`framework.backend=fx`): torch.ao FX graph mode quantization, which torch
deprecates (the default back end is `pytorch_export`).

Ops are the quantizable leaf modules (Conv1d/2d/3d, Linear) found by symbolic tracing, named by their
module path. Each op is INT8 (static or dynamic), BF16 (the float module run in bfloat16, fast on CPUs
with AVX512-BF16/AMX) or FP32 (qconfig None). Everything else in the graph stays FP32, so falling an op
back really removes all quantization error at that op.
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
from torch.ao.quantization.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from torch.ao.quantization.quantize_fx import prepare_fx

from lpot_research.adaptors.base import RangeRule, limited_batches
from lpot_research.adaptors.torch_common import (
    BF16_MISSING,
    TorchAdaptor,
    bf16_supported,
    labelled_modules,
    labelled_ms,
    profile_runs,
    torch_args,
)
from lpot_research.adaptors.torch_observers import KLHistogramObserver
from lpot_research.core.cpu import cpu_info
from lpot_research.core.errors import ConfigError
from lpot_research.measure.op_costs import OpCosts
from lpot_research.quant.space import APPROACHES, OpCapability, OpChoice, TuneConfig

log = logging.getLogger(__name__)

# FX graph mode prints a DeprecationWarning on every call in torch 2.13; it still is the supported
# eager-CPU INT8 path (PT2E needs torch.compile to be fast, see the README).
warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\.quantization")
warnings.filterwarnings("ignore", message=".*TorchScript.*deprecated.*")

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
DYNAMIC_QUANTIZABLE = (nn.Linear,)
ACT_OBSERVERS = {"minmax": MinMaxObserver, "kl": KLHistogramObserver, "histogram": HistogramObserver}


def is_script(model: Any) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


class BF16Module(nn.Module):
    """Runs a float module in bfloat16: FP32 in, FP32 out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(torch.bfloat16)).to(torch.float32)


@functools.cache
def _qconfig(choice: OpChoice, reduce_range: bool) -> QConfig:
    """The torch.ao QConfig of one quantized op choice."""
    w = choice.weight
    assert w is not None
    per_channel = w.granularity == "per_channel"
    if per_channel:
        qscheme = torch.per_channel_symmetric if w.scheme == "sym" else torch.per_channel_affine
        wobs = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=qscheme)
    else:
        qscheme = torch.per_tensor_symmetric if w.scheme == "sym" else torch.per_tensor_affine
        wobs = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=qscheme)
    a = choice.activation
    if a is not None and a.algorithm == "moving_average":  # QAT: fake quantization, observed while training
        return QConfig(
            activation=FusedMovingAvgObsFakeQuantize.with_args(
                observer=MovingAverageMinMaxObserver, dtype=torch.quint8, quant_min=0, quant_max=255,
                qscheme=torch.per_tensor_symmetric if a.scheme == "sym" else torch.per_tensor_affine,
                reduce_range=reduce_range),
            weight=FusedMovingAvgObsFakeQuantize.with_args(
                observer=MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver,
                dtype=torch.qint8, quant_min=-128, quant_max=127, qscheme=qscheme,
                **({"ch_axis": 0} if per_channel else {})),
        )
    if a is None:  # dynamic: activations quantized per batch at run time
        aobs = PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True)
    else:
        aqs = torch.per_tensor_symmetric if a.scheme == "sym" else torch.per_tensor_affine
        aobs = ACT_OBSERVERS[a.algorithm].with_args(dtype=torch.quint8, qscheme=aqs, reduce_range=reduce_range)
    return QConfig(activation=aobs, weight=wobs)


class PyTorchAdaptor(TorchAdaptor):
    profiler = "torch.profiler, a range around each Conv/Linear module"
    approaches = APPROACHES  # QAT too

    def __init__(self, engine: str = "x86", threads: int | None = None, reduce_range: bool | None = None) -> None:
        super().__init__(threads, reduce_range)
        self.engine = engine

    # ------------------------------------------------------------------ the CPU
    def range_rule(self) -> RangeRule:
        """7-bit activations. FBGEMM (the x86 and fbgemm engines) has 32-bit accumulating INT8 kernels
        only with AVX512-VNNI; its AVX2 / AVX-512 kernels sum u8 x s8 pairs into 16 bits with
        saturation, so full-range activations can overflow (digits_cnn: 0.77 instead of 0.99 on an
        AVX2 CPU). oneDNN avoids the overflow itself."""
        fbgemm = self.engine in ("x86", "fbgemm")
        return RangeRule(saturates=fbgemm and not cpu_info().avx512_vnni, narrows="INT8 activations",
                         feature="AVX512-VNNI" if fbgemm else self.engine, kernels="FBGEMM's INT8 kernels",
                         also="; symmetric activations unavailable")

    def _engine(self) -> str:
        """The quantized engine. Under an LPOT_CPU_ISA cap below AVX512-VNNI, `x86` becomes `fbgemm`,
        which is what `x86` runs on such a CPU (it sends convolutions to oneDNN only with VNNI)."""
        info = cpu_info()
        if self.engine == "x86" and info.capped_from and not info.avx512_vnni:
            return "fbgemm"
        return self.engine

    def cpu_notes(self) -> list[str]:
        notes = super().cpu_notes()  # the range rule's
        notes.append("BF16 fallback offered" if bf16_supported() else "no BF16 fallback (no AVX512-BF16/AMX-BF16)")
        if self._engine() != self.engine:
            notes.append(f"quantized engine {self._engine()} (what {self.engine} runs on this class)")
        return notes

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        if self.engine not in torch.backends.quantized.supported_engines:
            raise ConfigError(f"framework.engine={self.engine!r} is not available; valid choices: "
                              f"{[e for e in torch.backends.quantized.supported_engines if e != 'none']}")
        self._set_threads()
        torch.backends.quantized.engine = self._engine()

    def setup_process(self) -> None:
        self._setup()

    def prepare(self, model: Any, example_inputs: Any) -> Any:
        self._setup()
        if not isinstance(model, nn.Module):
            hint = "; an ONNX model needs framework=onnxrt" if "onnx" in type(model).__module__ else ""
            raise ConfigError(f"framework=pytorch needs a torch.nn.Module, got {type(model).__name__}{hint}")
        return model.eval()

    def _ops(self, model: nn.Module) -> list[tuple[str, str]]:
        """(name, module type) of each Conv/Linear op: in the order the traced graph calls them, or for
        TorchScript in the order the modules are declared."""
        if is_script(model):
            names = {t.__name__ for t in QUANTIZABLE}
            return [(n, m.original_name) for n, m in model.named_modules()
                    if getattr(m, "original_name", None) in names]
        from torch.fx import symbolic_trace

        try:
            graph = symbolic_trace(model).graph
        except Exception as e:  # noqa: BLE001 - surfaced with the reason
            raise TypeError(f"the model cannot be traced by torch.fx ({type(e).__name__}: {e}); FX graph mode "
                            "quantization needs a symbolically traceable model (or give it as TorchScript)") from e
        modules = dict(model.named_modules())
        ops: dict[str, str] = {}
        for node in graph.nodes:
            if node.op == "call_module" and isinstance(modules.get(node.target), QUANTIZABLE):
                ops.setdefault(node.target, type(modules[node.target]).__name__)
        return list(ops.items())

    def capabilities(self, model: nn.Module, approach: str, example_inputs: Any) -> list[OpCapability]:
        script = is_script(model)
        if script and approach == "quant_aware_training":
            raise ConfigError("quantization.approach=quant_aware_training needs an nn.Module; a TorchScript model "
                              "quantizes post-training (static or dynamic)")
        unavailable: dict[str, str] = {}
        fallback: tuple[str, ...] = ("bf16", "fp32")
        if script:
            fallback = ("fp32",)
            unavailable["dtype=bf16"] = "a TorchScript model cannot run one op in BF16 (give an nn.Module)"
        elif not bf16_supported():
            fallback = ("fp32",)
            unavailable["dtype=bf16"] = f"{BF16_MISSING}; this CPU: {cpu_info().describe()}"
        weight = {"dtype": ("int8",), "scheme": ("sym", "asym"), "granularity": ("per_channel", "per_tensor"),
                  "algorithm": ("minmax",)}
        schemes: tuple[str, ...] = ("asym", "sym")
        if self._reduce_range():  # torch cannot range-reduce symmetric quint8 (NotImplementedError)
            schemes = ("asym",)
            unavailable["activation.scheme=sym"] = (
                "activations are 7-bit (reduce_range) on CPUs without AVX512-VNNI, and torch cannot "
                f"range-reduce symmetric quint8; this CPU: {cpu_info().describe()}")
        algorithms: tuple[str, ...] = ("minmax", "kl", "histogram")
        if script:  # graph-mode (JIT) quantization scripts its observers; the KL search runs in Python
            algorithms = ("minmax", "histogram")
            unavailable["activation.algorithm=kl"] = ("a TorchScript model's observers are scripted and the KL "
                                                      "search is Python (give an nn.Module, or use histogram)")
        act = {"dtype": ("uint8",), "scheme": schemes, "granularity": ("per_tensor",), "algorithm": algorithms}
        # Asymmetric per-channel weights are 3-4x slower in FX and histogram ~ kl: opt-in only.
        defaults = {"weight": {"scheme": ("sym",)}, "activation": {"algorithm": ("minmax", "kl")[:1 + (not script)]}}
        if approach == "quant_aware_training":  # ranges are learned by moving averages while training
            act = {**act, "algorithm": ("moving_average",)}
            defaults = {"weight": {"scheme": ("sym",)}}
        caps = []
        for name, kind in self._ops(model):
            if approach == "post_training_dynamic_quant":
                dyn = kind in {t.__name__ for t in DYNAMIC_QUANTIZABLE}
                caps.append(OpCapability(name, kind, weight if dyn else None, None, fallback, quantizable=dyn,
                                         defaults=defaults, unavailable=unavailable))
            else:
                caps.append(OpCapability(name, kind, weight, act, fallback, defaults=defaults, unavailable=unavailable))
        return caps

    # ------------------------------------------------------------------ quantization
    def qconfig(self, choice: OpChoice) -> QConfig:
        return _qconfig(choice, self._reduce_range())

    def _op_names(self, model: nn.Module) -> list[str]:
        """The Conv/Linear modules, in declaration order (no tracing: this runs every trial)."""
        if is_script(model):
            return [name for name, _ in self._ops(model)]
        return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]

    def _quantize(self, model: nn.Module, config: TuneConfig, calib_dataloader: Iterable[Any],
                  example_inputs: Any) -> nn.Module:
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

        self._setup()
        if is_script(model):
            return self._quantize_script(model, config, calib_dataloader)
        qat = config.approach == "quant_aware_training"
        m = copy.deepcopy(model)
        m = m.train() if qat else m.eval()
        qmap = QConfigMapping()  # global None: only the tuned ops are quantized
        for name, choice in config.ops:
            qmap.set_module_name(name, self.qconfig(choice) if choice.quantized else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if qat:
                prepared = prepare_qat_fx(m, qmap, torch_args(example_inputs))
                self._train(prepared, calib_dataloader)
                prepared.eval()
            else:
                prepared = prepare_fx(m, qmap, torch_args(example_inputs))
            if config.approach == "post_training_static_quant":
                self._choices = [c for _, c in config.ops if c.quantized and c.activation is not None]
                self._example = torch_args(example_inputs)
                self._calibrate(model, prepared, calib_dataloader, config.sampling_size)
            converted = convert_fx(prepared)
        for name, choice in config.ops:
            if choice.dtype == "bf16":
                converted.set_submodule(name, BF16Module(converted.get_submodule(name)))
        return converted

    def _stayed_float(self, model: nn.Module, quantized: nn.Module) -> dict[str, bool]:
        """An op stayed float when its module in the converted graph is not one of torch.ao's quantized
        modules (torch.ao.nn.quantized, .intrinsic.quantized, .quantized.dynamic); a BF16Module wraps a
        float one. A JIT-quantized TorchScript model's ops cannot be told (its graph is inlined)."""
        if is_script(quantized):
            return {}
        return {name: ".quantized" not in type(m).__module__ for name, m in quantized.named_modules() if name}

    def _quantize_script(self, model: Any, config: TuneConfig, calib_dataloader: Iterable[Any]) -> Any:
        """TorchScript: torch.ao's graph-mode (JIT) quantization, per submodule (calibration not cached)."""
        from torch.ao.quantization.quantize_jit import quantize_dynamic_jit, quantize_jit

        qconfigs: dict[str, Any] = {"": None}
        qconfigs.update({n: self.qconfig(c) if c.quantized else None for n, c in config.ops})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if config.approach == "post_training_dynamic_quant":
                return quantize_dynamic_jit(model, qconfigs)

            @torch.inference_mode()
            def calibrate(m: Any, loader: Iterable[Any]) -> None:
                def run() -> None:
                    for inputs in limited_batches(loader, config.sampling_size, "calibration"):
                        m(*torch_args(inputs))

                self.calibration.get(object(), run)  # counted and timed, never reused: observers live in `m`

            return quantize_jit(model, qconfigs, calibrate, [calib_dataloader])

    def _calibrate(self, model: nn.Module, prepared: nn.Module, loader: Iterable[Any], sampling_size: int) -> None:
        """Calibration through the per-run cache (TorchAdaptor._calibrate_cached)."""

        def prepare_all(kind: str) -> nn.Module | None:
            rr = self._reduce_range()
            choice = next((c for c in self._choices if type(_qconfig(c, rr).activation()).__qualname__ == kind), None)
            if choice is None:
                return None
            qmap = QConfigMapping()
            for name, _ in self._ops(model):
                qmap.set_module_name(name, self.qconfig(choice))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return prepare_fx(copy.deepcopy(model).eval(), qmap, self._example)

        self._calibrate_cached(model, prepared, loader, sampling_size, prepare_all)

    # ------------------------------------------------------------------ running and measuring
    def runner(self, model: nn.Module, inputs: Any) -> Callable[[], Any]:
        args = torch_args(inputs)

        @torch.inference_mode()
        def once() -> Any:
            return model(*args)

        return once

    def op_costs(self, fp32_model: nn.Module, int8_model: nn.Module, inputs: Any, op_names: list[str],
                 runs: int) -> OpCosts:
        """Each op's module in torch.profiler's record: a labelled range around each call of each Conv/Linear
        module (forward hooks), in the FP32 model and in the converted one, where the quantized module keeps
        the op's name (a fused conv+relu too). Quantize/dequantize steps between ops are call_function
        nodes of the converted graph, so they count in the rest."""
        if is_script(fp32_model) or is_script(int8_model):
            raise NotImplementedError("a TorchScript model takes no forward hooks, so its ops cannot be timed one "
                                      "by one (give an nn.Module)")
        timed = []
        for model in (fp32_model, int8_model):
            with labelled_modules(model, op_names):
                timed.append(profile_runs(self.runner(model, inputs), runs, labelled_ms))
        (fp32, rest32), (int8, rest8) = timed
        notes = [f"{what}: no call recorded of {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
                 for what, ms in (("FP32", fp32), ("INT8", int8)) if (missing := [o for o in op_names if o not in ms])]
        return OpCosts(self.profiler, runs, fp32, int8, (rest32, rest8), notes=notes)

    def size_bytes(self, model: nn.Module) -> int:
        if not is_script(model):
            return super().size_bytes(model)
        buf = io.BytesIO()  # packed INT8 weights of a JIT-quantized model are not in its state_dict
        torch.jit.save(model, buf)
        return buf.tell()

    @torch.inference_mode()
    def inspect(self, model: nn.Module, inputs: Any, op_names: list[str]) -> dict[str, np.ndarray]:
        if is_script(model):
            raise NotImplementedError("per-op outputs of a TorchScript model cannot be read (no forward hooks): the "
                                      "mse strategy and tensorboard need an nn.Module")
        modules = dict(model.named_modules())
        missing = [n for n in op_names if n not in modules]
        if missing:
            raise KeyError(f"no module named {missing[0]!r} in the model; valid names: {list(op_names)}")
        outputs: dict[str, np.ndarray] = {}
        hooks = []
        for name in op_names:
            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                t = out.dequantize() if getattr(out, "is_quantized", False) else out
                outputs[name] = t.detach().float().cpu().numpy()
            hooks.append(modules[name].register_forward_hook(hook))
        try:
            model(*torch_args(inputs))
        finally:
            for h in hooks:
                h.remove()
        return outputs

    def _save(self, model: nn.Module, path: Path, example_inputs: Any) -> Path:
        """TorchScript: loads with plain `torch.jit.load`, no Python class of this package needed."""
        out = Path(path).with_suffix(".pt")
        if is_script(model):  # a TorchScript model quantized in JIT mode already is TorchScript
            torch.jit.save(model, str(out))
            return out
        for p in model.parameters():  # an inference artifact: outputs should not carry autograd
            p.requires_grad_(False)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(model, torch_args(example_inputs), check_trace=False)
            torch.jit.save(scripted, str(out))
        return out
