"""PyTorch's default back end (`framework.backend=export`): PyTorch 2's export path.

- `torch.export` captures the model (an nn.Module, e.g. a Hugging Face transformer, or a saved
  `ExportedProgram` `.pt2`) as one ATen graph, batch dimension dynamic where the model allows; unused
  outputs (e.g. BERT's pooler under a classifier that ignores it) are removed before annotating.
- An op is a Linear / Conv1d / Conv2d call of the graph, named by the module that calls it
  (`encoder.layer.0.attention.self.query`); a module called twice is one op.
- torchao's PT2E quantization (`prepare_pt2e` / `prepare_qat_pt2e`, `convert_pt2e`) with this package's
  own `Quantizer`, which annotates exactly the ops a configuration makes INT8 (weights INT8 symmetric
  per output channel, activations UINT8 per tensor, static or dynamic); FP32 ops keep no Q/DQ and BF16
  ops get casts around them.
- Accuracy is evaluated on the converted graph run eagerly (reference Q/DQ arithmetic); latency is timed
  on the same graph compiled by Inductor with freezing, which lowers the Q/DQ patterns to oneDNN's INT8
  kernels, against the FP32 model compiled the same way. Compile seconds are counted apart
  (`compile_seconds`), not as latency. tests/test_pytorch_export.py shows the two agree.
- The tuned model is saved as a `.pt2` (`torch.export.save`), loadable with torch alone.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import logging
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from lpot_research.adaptors.base import RangeRule, quiet
from lpot_research.adaptors.export_graph import OPS, export_batched, is_dequantize, op_name, op_nodes, run_in_bf16
from lpot_research.adaptors.torch_common import (
    BF16_MISSING,
    PROFILED_RUN,
    TorchAdaptor,
    bf16_supported,
    profile_runs,
    torch_args,
)
from lpot_research.core.cpu import cpu_info
from lpot_research.core.errors import ConfigError
from lpot_research.measure.op_costs import OpCosts
from lpot_research.quant.space import APPROACHES, OpCapability, TuneConfig

log = logging.getLogger(__name__)

DYNAMIC_OPS = ("Linear",)
COMPILED_KEPT = 3  # compiled models kept (the FP32 reference and the latest trials)
# torch's own deprecation inside deepcopy of an exported graph (its pytree specs), not this package's
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*", category=FutureWarning)


def load_torchao() -> Any:
    """torchao's PT2E module, or a one-line error with the install command. Its import prints lines
    about optional CUDA kernels it cannot load on a CPU-only torch: silenced."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import torchao.quantization.pt2e.quantize_pt2e as pt2e
    except ImportError as e:
        raise ConfigError(f"framework=pytorch (backend export) needs torchao ({e}): pip install -e '.[pytorch]' "
                          "(or framework.backend=fx)") from None
    finally:
        logging.disable(previous)
    return pt2e


def export_error(e: BaseException) -> str:
    """The first line of torch.export's error and the user's code it names (its last frame outside torch)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    where = next((ln for ln in lines if ln.startswith("File ") and "/torch/" not in ln), None)
    if where is None:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename]
        where = f"File {frames[-1].filename}, line {frames[-1].lineno}, in {frames[-1].name}" if frames else ""
    first = lines[0] if lines else type(e).__name__
    return f"{type(e).__name__}: {first}" + (f" ({where})" if where else "")


def kernel_kind(name: str) -> str | None:
    """"conv" or "linear" for an extern conv/linear kernel in torch.profiler's record (oneDNN's qconv and
    qlinear, mkldnn's convolution, MKL's linear, aten's addmm), else None (Inductor's fused C++ kernels
    are named after what they fuse, e.g. cpp_fused_addmm_mean_view: not a linear)."""
    n = name.lower()
    if "::" not in n or "cpp_fused" in n:
        return None
    if "conv" in n:
        return "conv"
    if "linear" in n or n.split("::")[-1] in ("addmm", "mm"):
        return "linear"
    return None


def profile_compiled(run: Callable[[], Any], runs: int, order: dict[str, list[str]], what: str,
                     notes: list[str], warmup: int = 2) -> tuple[dict[str, float], float]:
    """Per op (median over `runs` profiled calls of `run`) the milliseconds of its extern kernel, matched
    by kind and position to `order` (op names per kind in graph order), and the median rest."""

    def attribute(inside: list[Any]) -> dict[str, float]:
        kernels: dict[str, list[Any]] = {"conv": [], "linear": []}
        for e in inside:
            kind = kernel_kind(e.name)
            parent = e.cpu_parent
            while kind and parent is not None and parent.name != PROFILED_RUN:  # a kernel's sub-calls are its time
                if kernel_kind(parent.name):
                    kind = None
                parent = parent.cpu_parent
            if kind:
                kernels[kind].append(e)
        this: dict[str, float] = {}
        for kind, names in order.items():
            if len(kernels[kind]) != len(names):
                note = (f"{what}: {len(kernels[kind])} {kind} kernel(s) per run for {len(names)} {kind} call(s) "
                        "in the graph: not attributed")
                if note not in notes:
                    notes.append(note)
                continue
            for name, e in zip(names, kernels[kind], strict=True):  # an op called twice: its calls add up
                this[name] = this.get(name, 0.0) + e.cpu_time_total / 1e3
        return this

    return profile_runs(run, runs, attribute, warmup)


class PyTorchExportAdaptor(TorchAdaptor):
    profiler = "torch.profiler of the Inductor-compiled models"
    approaches = APPROACHES  # QAT too
    recipes = ("cle", "smooth_quant", "bias_correction")

    def __init__(self, threads: int | None = None, reduce_range: bool | None = None, compile: bool = True) -> None:
        super().__init__(threads, reduce_range)
        self.compile = compile
        self._compile_seconds = 0.0  # private: not part of the run key

    # ------------------------------------------------------------------ the CPU
    def range_rule(self) -> RangeRule | None:
        """Never narrowed by the CPU: Inductor runs the INT8 patterns on oneDNN, which avoids the u8 x s8
        16-bit saturation of non-VNNI CPUs itself (digits_cnn keeps 0.9907 with full-range activations,
        compiled, under LPOT_CPU_ISA=avx2); `framework.reduce_range=true` still asks for 7 bits."""
        return None

    def cpu_notes(self) -> list[str]:
        notes = super().cpu_notes()
        notes.append("BF16 fallback offered" if bf16_supported() else "no BF16 fallback (no AVX512-BF16/AMX-BF16)")
        return notes

    def setup_process(self) -> None:
        self._set_threads()

    # ------------------------------------------------------------------ the model
    def prepare(self, model: Any, example_inputs: Any) -> Any:
        self._set_threads()
        load_torchao()
        if isinstance(model, fx.GraphModule) and model.meta.get("lpot_exported"):
            return model
        if isinstance(model, torch.jit.ScriptModule):
            raise ConfigError("a TorchScript model needs framework.backend=fx (torch.export takes an nn.Module or a "
                              "saved ExportedProgram .pt2)")
        if isinstance(model, torch.export.ExportedProgram):
            gm = model.module(check_guards=False)
        elif isinstance(model, nn.Module):
            gm = self._export(model.eval(), torch_args(example_inputs))
        else:
            hint = "; an ONNX model needs framework=onnxrt" if "onnx" in type(model).__module__ else ""
            raise ConfigError(f"framework=pytorch needs a torch.nn.Module or a torch.export ExportedProgram, got "
                              f"{type(model).__name__}{hint}")
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_

        # batch norm folded into the convolution before it (what prepare_pt2e does too; QAT then trains the
        # folded weights with the running statistics, as the eval-mode graph would, instead of torchao
        # matching 120 conv-bn patterns per QAT trial)
        _fuse_conv_bn_(gm)
        removed = len(gm.graph.nodes)
        gm.graph.eliminate_dead_code()  # unused heads: their ops have no output the quantizer can follow
        gm.recompile()
        removed -= len(gm.graph.nodes)
        if removed:
            log.debug("export: %d unused node(s) removed", removed)
        # for parallel workers the module must pickle: drop torch.export's raising train/eval stand-ins (QAT
        # switches modes through torchao's own) and the tracer class a worker could not build again
        for attr in ("train", "eval"):
            gm.__dict__.pop(attr, None)
        gm._tracer_cls = None
        gm.meta["lpot_exported"] = True
        if not op_nodes(gm):
            raise ConfigError(f"the exported {type(model).__name__} has no Linear or Conv1d/Conv2d op to quantize")
        return gm

    @staticmethod
    def _export(model: nn.Module, args: tuple[torch.Tensor, ...]) -> fx.GraphModule:
        """torch.export with a dynamic batch dimension where the model allows one (Dim.AUTO)."""
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                program = export_batched(model, args)
        except Exception as e:  # noqa: BLE001 - one line before tuning, naming the user's code
            raise ConfigError(f"torch.export cannot capture {type(model).__name__}: {export_error(e)} (or "
                              "framework.backend=fx for a model written for torch.fx)") from None
        log.debug("torch.export of %s: %.1f s", type(model).__name__, time.perf_counter() - t0)
        return program.module(check_guards=False)

    def portable(self, model: fx.GraphModule, example_inputs: Any) -> bytes:
        """The bytes of the model's ExportedProgram: a GraphModule pickles as code, without the node
        metadata its op names come from."""
        buf = io.BytesIO()
        with quiet(), torch.no_grad():
            torch.export.save(export_batched(model, torch_args(example_inputs)), buf)
        return buf.getvalue()

    def restore(self, sent: bytes, example_inputs: Any) -> fx.GraphModule:
        import torch.ao.quantization.fx._decomposed  # noqa: F401 - the Q/DQ ops a converted graph may hold

        return self.prepare(torch.export.load(io.BytesIO(sent)), example_inputs)

    def _ops(self, model: fx.GraphModule) -> list[tuple[str, str]]:
        return [(name, OPS[nodes[0].target]) for name, nodes in op_nodes(model).items()]

    def _op_names(self, model: fx.GraphModule) -> list[str]:
        return list(op_nodes(model))

    def _structure(self, model: nn.Module) -> bytes:
        return model.code.encode() if isinstance(model, fx.GraphModule) else b""

    def capabilities(self, model: fx.GraphModule, approach: str, example_inputs: Any) -> list[OpCapability]:
        unavailable: dict[str, str] = {}
        fallback: tuple[str, ...] = ("bf16", "fp32")
        if not bf16_supported():
            fallback = ("fp32",)
            unavailable["dtype=bf16"] = f"{BF16_MISSING}; this CPU: {cpu_info().describe()}"
        # oneDNN's INT8 convolution and matmul take symmetric per-channel INT8 weights
        weight = {"dtype": ("int8",), "scheme": ("sym",), "granularity": ("per_channel",), "algorithm": ("minmax",)}
        act = {"dtype": ("uint8",), "scheme": ("asym", "sym"), "granularity": ("per_tensor",),
               "algorithm": ("minmax", "kl", "histogram")}
        defaults = {"activation": {"algorithm": ("minmax", "kl")}}  # histogram ~ kl here too: opt-in
        if approach == "quant_aware_training":
            act = {**act, "algorithm": ("moving_average",)}
            defaults = {}
        caps = []
        for name, kind in self._ops(model):
            if approach == "post_training_dynamic_quant":
                dyn = kind in DYNAMIC_OPS
                caps.append(OpCapability(name, kind, weight if dyn else None, None, fallback, quantizable=dyn,
                                         defaults=defaults, unavailable=unavailable))
            else:
                caps.append(OpCapability(name, kind, weight, act, fallback, defaults=defaults, unavailable=unavailable))
        return caps

    # ------------------------------------------------------------------ quantization
    def _quantize(self, model: fx.GraphModule, config: TuneConfig, calib_dataloader: Iterable[Any],
                  example_inputs: Any) -> fx.GraphModule:
        from lpot_research.adaptors.pt2e_quantizer import OpQuantizer

        pt2e = load_torchao()
        self._set_threads()
        choices = {name: c for name, c in config.ops if c.quantized}
        quantizer = OpQuantizer(choices, self._reduce_range())
        with quiet():
            if config.approach == "quant_aware_training":
                converted = self._quantize_qat(model, quantizer, calib_dataloader, pt2e)
            else:
                prepared = pt2e.prepare_pt2e(copy.deepcopy(model), quantizer)
                if config.approach == "post_training_static_quant":
                    self._calibrate(model, prepared, calib_dataloader, config.sampling_size, quantizer)
                else:  # dynamic: the weight observers see the weights in one forward pass
                    with torch.no_grad():
                        prepared(*torch_args(example_inputs))
                converted = pt2e.convert_pt2e(prepared)
        if config.recipe("bias_correction"):
            from lpot_research.adaptors.torch_recipes import correct_biases

            done = correct_biases(model, converted, list(choices),
                                  self.input_stats(model, calib_dataloader, config.sampling_size))
            log.debug("bias_correction: %d op(s) corrected", len(done))
        bf16 = [name for name, c in config.ops if c.dtype == "bf16"]
        if bf16:
            run_in_bf16(converted, {n: op_nodes(converted)[n] for n in bf16})
        converted.meta["lpot_exported"] = True
        return converted

    def _input_stats(self, model: fx.GraphModule, calib: Iterable[Any], sampling_size: int) -> dict[str, Any]:
        from lpot_research.adaptors.torch_recipes import collect_stats

        return collect_stats(model, calib, sampling_size)

    def _rewrite(self, model: fx.GraphModule, recipe: str, value: Any, calib: Iterable[Any],
                 sampling_size: int) -> fx.GraphModule:
        from lpot_research.adaptors.torch_recipes import equalize, smooth

        if recipe == "cle":
            gm, pairs = equalize(model)
            log.info("cle: %d conv pair(s) equalized%s", len(pairs), "" if pairs else
                     " (none is conv -> [relu, pooling] -> conv with nothing else reading between)")
            return gm
        gm, n = smooth(model, self.input_stats(model, calib, sampling_size), float(value))
        log.info("smooth_quant %s: %d Linear call(s) smoothed", value, n)
        return gm

    def _quantize_qat(self, model: fx.GraphModule, quantizer: Any, loader: Iterable[Any], pt2e: Any) -> fx.GraphModule:
        """Quantization-aware training on the exported graph: fake quantization inserted by
        prepare_qat_pt2e, trained (TorchAdaptor._train), switched to eval mode, converted."""
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        prepared = pt2e.prepare_qat_pt2e(copy.deepcopy(model), quantizer)
        allow_exported_model_train_eval(prepared)  # train()/eval() switch dropout and batch norm, as users expect
        prepared.train()
        self._train(prepared, loader)
        prepared.eval()
        return pt2e.convert_pt2e(prepared)

    def _stayed_float(self, model: fx.GraphModule, quantized: fx.GraphModule) -> dict[str, bool]:
        """An op stayed float when none of its calls takes a dequantized (INT8) weight."""
        return {name: not any(is_dequantize(n.args[1]) for n in nodes) for name, nodes in op_nodes(quantized).items()}

    def _calibrate(self, model: fx.GraphModule, prepared: fx.GraphModule, loader: Iterable[Any], sampling_size: int,
                   quantizer: Any) -> None:
        """Calibration through the per-run cache (TorchAdaptor._calibrate_cached)."""
        from lpot_research.adaptors.pt2e_quantizer import OpQuantizer

        def prepare_all(kind: str) -> fx.GraphModule | None:
            choice = quantizer.choice_observed_by(kind)
            if choice is None:
                return None
            every = OpQuantizer(dict.fromkeys(self._op_names(model), choice), quantizer.reduce_range)
            with quiet():
                return load_torchao().prepare_pt2e(copy.deepcopy(model), every)

        self._calibrate_cached(model, prepared, loader, sampling_size, prepare_all)

    # ------------------------------------------------------------------ running and measuring
    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling models for timing (TrialRunner counts them apart from latency)."""
        return self._compile_seconds

    def compiled(self, model: nn.Module, args: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        """`model` compiled by Inductor with freezing (weights folded as constants, the INT8 Q/DQ
        patterns lowered to oneDNN's kernels) for inputs shaped like `args`, remembered for the last few
        models. A new one is compiled here, by its first call, and those seconds are added to
        `compile_seconds`. With `compile=False`, the model itself (eager)."""
        if not self.compile:
            return model
        cache: collections.OrderedDict[int, tuple[nn.Module, Any]] = self.__dict__.setdefault(
            "_compiled", collections.OrderedDict())
        hit = cache.get(id(model))
        if hit is not None and hit[0] is model:
            cache.move_to_end(id(model))
            return hit[1]
        import torch._inductor.config as inductor

        inductor.freezing = True
        inductor.compile_threads = 1  # no pool of compile workers left busy beside the timed runs
        t0 = time.perf_counter()
        fn = torch.compile(model, dynamic=False)
        with torch.no_grad(), quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Inductor's own UserWarnings while lowering
            fn(*args)
        cache[id(model)] = (model, fn)
        while len(cache) > COMPILED_KEPT:
            cache.popitem(last=False)
        self._compile_seconds += time.perf_counter() - t0
        return fn

    def runner(self, model: nn.Module, inputs: Any) -> Callable[[], Any]:
        """One inference of the compiled model (compiled on first use, see `compiled`)."""
        args = torch_args(inputs)
        fn = self.compiled(model, args)

        @torch.no_grad()
        def once() -> Any:
            return fn(*args)

        return once

    def op_costs(self, fp32_model: fx.GraphModule, int8_model: nn.Module, inputs: Any, op_names: list[str],
                 runs: int) -> OpCosts:
        """Each op's kernel in torch.profiler's record of the compiled models: Inductor lowers every conv
        and linear to one extern kernel call (oneDNN's qconv/qlinear in INT8; oneDNN's or MKL's in FP32)
        and keeps their graph order, so the k-th conv (linear) kernel of a run is the k-th conv (linear)
        call of the FP32 graph. A kind whose count differs from the graph's is left unattributed (in the
        rest) and said in `notes`. Quantize/dequantize steps are fused into Inductor's own kernels, so they
        are in the rest: an op's INT8 time here is its kernel alone."""
        order: dict[str, list[str]] = {"conv": [], "linear": []}
        for node in fp32_model.graph.nodes:
            if node.op == "call_function" and node.target in OPS:
                order["linear" if OPS[node.target] == "Linear" else "conv"].append(op_name(node))
        notes: list[str] = []
        (fp32, rest32), (int8, rest8) = (profile_compiled(self.runner(m, inputs), runs, order, what, notes)
                                         for m, what in ((fp32_model, "FP32"), (int8_model, "INT8")))
        keep = set(op_names)
        return OpCosts(self.profiler, runs, {o: v for o, v in fp32.items() if o in keep},
                       {o: v for o, v in int8.items() if o in keep}, (rest32, rest8), notes=notes)

    def __getstate__(self) -> dict[str, Any]:
        """Compiled models stay in their process (a worker compiles its own and counts its own seconds)."""
        return {**{k: v for k, v in super().__getstate__().items() if k != "_compiled"}, "_compile_seconds": 0.0}

    @torch.inference_mode()
    def inspect(self, model: fx.GraphModule, inputs: Any, op_names: list[str]) -> dict[str, Any]:
        """Per-op outputs, read by running the graph node by node (an fx.Interpreter)."""
        nodes = op_nodes(model)
        missing = [n for n in op_names if n not in nodes]
        if missing:
            raise KeyError(f"no op named {missing[0]!r} in the model; valid names: {list(nodes)}")
        last = {nodes[n][-1].name: n for n in op_names}  # a module called twice: its last call's output
        outputs: dict[str, Any] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                out = super().run_node(n)
                if n.name in last:
                    outputs[last[n.name]] = out.detach().float().cpu().numpy()
                return out

        Recorder(model).run(*torch_args(inputs))
        return outputs

    def _save(self, model: fx.GraphModule, path: Path, example_inputs: Any) -> Path:
        """An ExportedProgram `.pt2` (torch.export.save) of the converted graph, batch dimension dynamic
        where it was; it loads with torch alone (`torch.export.load`, after `import
        torch.ao.quantization.fx._decomposed`, which registers the Q/DQ ops)."""
        out = Path(path).with_suffix(".pt2")
        args = torch_args(example_inputs)
        with quiet(), torch.no_grad():
            try:  # the program keeps its example inputs: two samples, not a whole batch
                program = export_batched(model, tuple(a[:2] if a.dim() else a for a in args))
            except Exception:  # noqa: BLE001 - a graph whose batch size is static
                program = export_batched(model, args)
        torch.export.save(program, str(out))
        return out

    def size_bytes(self, model: nn.Module) -> int:
        """Bytes of the tensors the graph reads (an exported graph keeps the float weights of ops it
        quantized as unused attributes)."""
        if not isinstance(model, fx.GraphModule):
            return super().size_bytes(model)
        used = {n.target for n in model.graph.nodes if n.op == "get_attr"}
        tensors = {}
        for name in used:
            t = model
            for part in str(name).split("."):
                t = getattr(t, part)
            if isinstance(t, torch.Tensor):
                tensors[name] = t.numel() * t.element_size()
        return sum(tensors.values())
