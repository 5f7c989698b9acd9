"""MXNet back end on MXNet's own INT8 quantization (mxnet.contrib.quantization, oneDNN kernels), mxnet 1.9.

Models: a Gluon HybridBlock (its symbol graph is taken by calling it on symbol variables), an `MXModel`,
or a saved `<name>-symbol.json` beside its `<name>-0000.params`. Ops are the Convolution and
FullyConnected nodes, named by their symbol op names (a Gluon layer with prefix `features0_conv_` gives
`features0_conv_fwd`), found in the graph after MXNet's oneDNN fusion pass (MKLDNN_QUANTIZE, which folds
BatchNorm/ReLU into `_sg_mkldnn_conv` nodes and keeps the original op names inside them). Each op is INT8
or FP32; the FP32 baseline is the same graph with MXNet's FP32 oneDNN fusion (backend MKLDNN).

How a trial is built, with MXNet's own pieces: `quantize_graph` (excluded_sym_names = the FP32 ops,
quantized_dtype 'auto', quantize_mode 'smart') -> thresholds -> `calib_graph` -> the MKLDNN_QUANTIZE
pass again (fuses requantize/dequantize). This is `quantize_net_v2` split in two: calibration (running the
FP32 fused graph and collecting per-tensor ranges) is separate, so it runs once per (model, sampling
size, algorithm) and is reused by every trial; a later trial that needs a tensor not yet calibrated
(e.g. the input of an op after a fallback) calibrates only that tensor. After quantizing, the graph is
checked: each FP32 op must sit in an unquantized node and each INT8 op in a quantized one, else the trial
fails (a name MXNet does not match would otherwise silently exclude nothing).

What works (measured on mxnet 1.9.1 / numpy 1.26 / x86-64 with VNNI):
- Real INT8 execution: quantized ops are `_sg_mkldnn_conv` / `_sg_mkldnn_fully_connected` with
  quantized=true; on digits_cnn (batch 32, 1 thread) INT8 runs 3-4.5x faster than the fused FP32 graph.
- Per-op FP32 fallback: exact symbol op names go to excluded_sym_names (quantize_net_v2's exclude_layers;
  MXNet finds them inside the fused nodes). exclude_layers_match is not used: it is a substring match
  (features1 would also exclude features10).
- Per-op calibration algorithm: "minmax" (MXNet's calib_mode naive) and "kl" (calib_mode entropy: MXNet's
  8001-bin histograms merged with `combine_histogram`, thresholds from `calibrate_entropy`). A calibrated
  tensor takes the algorithm of the quantized op that reads it (else of the op that writes it, else the
  most common one), and the merged table goes to `calib_graph`.
- Weight granularity of FullyConnected: per channel or per tensor (quantize_granularity). It is
  model-wide and changes the graph (per-tensor FC weights become offline INT8 params, per-channel ones
  are quantized inside the op), so a configuration whose quantized FullyConnected ops disagree raises
  ConfigError (the tuner records that trial as failed); `model_wise.weight.granularity` pins it.
- Per-op output inspection for the mse strategy: an op's output is read from the graph's internals and
  quantized outputs are dequantized with MXNet's `contrib.dequantize` and their (data, min, max).
- save: MXNet's checkpoint format (`-symbol.json` + `-0000.params` with arg:/aux: keys), loadable by
  `mx.gluon.SymbolBlock.imports` with MXNet alone.

What does not work, and why:
- Activation dtype is not a choice. MXNet's fused INT8 convolution followed by ReLU always emits uint8,
  and its quantized ops are symmetric. quantized_dtype 'int8' gives the same graph as 'auto' with minmax
  and crashes with entropy ("Expect int8 when data_min < 0.0": entropy thresholds are made symmetric,
  (-t, t), for the unsigned ReLU outputs); 'uint8' crashes on any negative input (e.g. normalized
  images). Only 'auto' is used: a tensor is stored as uint8 when its calibrated range is non-negative
  and as int8 when not, both with a symmetric (zero-point-free) scale. Capabilities report activation
  dtype "int8" for every op: a per-op dtype (int8 for the input layer, uint8 after ReLU) would be no
  choice either, and the mixed values would break the tuner's model-wise configurations.
- No dynamic quantization in MXNet: approach post_training_dynamic_quant raises ConfigError.
- No BF16 fallback (MXNet 1.9's bf16 AMP is a separate graph pass, not per-op here): fallback is fp32 only.
- Asymmetric schemes do not exist in MXNet's INT8 ops: scheme is sym only.
- Convolution weights are always per channel: quantize_granularity only reaches FullyConnected, and the
  fused INT8 convolution of 1.9.1 has no per-tensor switch (measured: a tiny weight channel beside a
  large one keeps the same error under 'tensor-wise' as under 'channel-wise').
- Model size barely shrinks: fused convolutions keep FP32 weights in the params and quantize them when
  first run; only per-tensor FullyConnected weights are stored as INT8.

Threads: MXNet fixes its OpenMP thread count when it is first imported (src/engine/openmp.cc):
MXNET_OMP_MAX_THREADS, else OMP_NUM_THREADS, else half the cores on x86 (and then it also sets the
calling thread's OpenMP count, which is why importing it resets torch's thread count, libgomp being
shared). `MXSetNumOMPThreads` after import only changes the calling thread, not the engine's worker that
runs the ops (measured: still one busy thread). So `threads` is applied by setting MXNET_OMP_MAX_THREADS
when this package is the first to import mxnet (`import_mxnet`); otherwise a warning says it cannot
apply. conf/framework/mxnet.yaml builds the adaptor with `MXNetAdaptor.with_import_threads`, which
sets MXNET_OMP_MAX_THREADS before the model (a Gluon net) first imports mxnet. When OMP_NUM_THREADS is
also set, oneDNN's kernels in the engine's worker thread follow it rather than MXNET_OMP_MAX_THREADS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lpot_research.adaptors.base import Adaptor, FallbackError, batch_len, limited_batches, numpy_inputs
from lpot_research.core.cpu import cpu_info
from lpot_research.core.errors import ConfigError
from lpot_research.measure.op_costs import OpCosts
from lpot_research.quant.space import OpCapability, OpChoice, TuneConfig

if importlib.util.find_spec("mxnet") is None:  # checked without importing it (see import_mxnet)
    raise ImportError("No module named 'mxnet' (pip install 'lpot-research[mxnet]')")

log = logging.getLogger(__name__)

# numpy 1.24 removed these aliases of Python builtins; mxnet 1.9 still uses them at import
NUMPY_ALIASES = (("bool", bool), ("int", int), ("float", float), ("complex", complex), ("object", object),
                 ("str", str))
PLAIN_OPS = ("Convolution", "FullyConnected")
FUSED_OPS = {"_sg_mkldnn_conv": "Convolution", "_sg_mkldnn_fully_connected": "FullyConnected"}
HIST_BINS = 8001  # MXNet's entropy calibration histogram
QUANTIZED_BINS = 255  # MXNet's num_quantized_bins for int8 (doubled + 1 for non-negative, uint8, tensors)
_import_threads: int | None = None  # the OpenMP thread count MXNet fixed at import
# set for the profiling process (lpot_research.adaptors.mxnet_profile) before it imports mxnet: no bulking,
# so the profiler records one operator event per node
PROFILE_ENV = {"MXNET_EXEC_BULK_EXEC_INFERENCE": "0", "MXNET_EXEC_BULK_EXEC_TRAIN": "0"}


def _threads_from_env() -> int:
    """The OpenMP thread count MXNet's engine takes at import (src/engine/openmp.cc)."""
    for var in ("MXNET_OMP_MAX_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // 2) if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") else cores


def set_import_threads(threads: int | None) -> None:
    """Make the process's first `import mxnet` run ops on `threads` OpenMP threads (MXNET_OMP_MAX_THREADS,
    unless the environment sets it already). No effect once mxnet is imported."""
    if threads and "mxnet" not in sys.modules and "MXNET_OMP_MAX_THREADS" not in os.environ:
        os.environ["MXNET_OMP_MAX_THREADS"] = str(int(threads))


def import_mxnet(threads: int | None = None) -> ModuleType:
    """`import mxnet`, made to work on numpy >= 1.24 (the removed builtin aliases are put back first) and,
    when this is the first import in the process, with `threads` OpenMP threads (`set_import_threads`).
    Silences oneDNN's per-bind "Subgraph backend" log line."""
    global _import_threads
    if "mxnet" not in sys.modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # numpy warns when the removed aliases are probed
            for name, alias in NUMPY_ALIASES:
                if not hasattr(np, name):
                    setattr(np, name, alias)
        set_import_threads(threads)
        os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    if _import_threads is None:
        _import_threads = _threads_from_env()
    import mxnet

    return mxnet


def mxnet_threads() -> int | None:
    """The OpenMP thread count MXNet runs its ops with (None before `import_mxnet`)."""
    return _import_threads


# ---------------------------------------------------------------------- graph reading
@dataclass(frozen=True)
class GraphOp:
    """A quantizable op of the fused FP32 graph: its node and its data tensors (parameters excluded)."""

    name: str  # the Convolution/FullyConnected symbol op name
    type: str
    inputs: tuple[str, ...]
    output: str


def _graph(sym: Any) -> tuple[list[dict[str, Any]], list[str], list[int]]:
    """A symbol's nodes (topological order), its internal tensor names, and per node the index of its
    first output among them (tensor of input entry [i, j] = names[row[i] + j])."""
    doc = json.loads(sym.tojson())
    return doc["nodes"], sym.get_internals().list_outputs(), doc["node_row_ptr"]


def _op_of(node: dict[str, Any]) -> tuple[str, str] | None:
    """(op name, op type) of the quantizable op a node is or holds, else None."""
    op = node["op"]
    if op in PLAIN_OPS:
        return node["name"], op
    if op.startswith("_contrib_quantized_") and node["name"].startswith("quantized_"):
        kind = {"_contrib_quantized_conv": "Convolution", "_contrib_quantized_fully_connected": "FullyConnected"}
        return (node["name"][len("quantized_"):], kind[op]) if op in kind else None
    if op in FUSED_OPS:
        inner = [n["name"] for n in node["subgraphs"][0]["nodes"] if n["op"] == FUSED_OPS[op]]
        return (inner[0], FUSED_OPS[op]) if inner else None
    return None


def _is_quantized(node: dict[str, Any]) -> bool:
    return node["op"].startswith("_contrib_quantized_") or str(node.get("attrs", {}).get("quantized", "")).lower() \
        == "true"


def find_ops(sym: Any, params: Iterable[str]) -> list[GraphOp]:
    nodes, names, row = _graph(sym)
    params = set(params)
    ops = []
    for i, node in enumerate(nodes):
        found = _op_of(node)
        if found is None:
            continue
        data = tuple(names[row[j] + k] for j, k, *_ in node["inputs"]
                     if not (nodes[j]["op"] == "null" and nodes[j]["name"] in params))
        ops.append(GraphOp(found[0], found[1], data, names[row[i]]))
    return ops


def op_nodes(sym: Any) -> dict[str, tuple[int, bool]]:
    """Op name -> (node index, quantized?) in a (possibly quantized) graph."""
    nodes, _, _ = _graph(sym)
    result = {}
    for i, node in enumerate(nodes):
        found = _op_of(node)
        if found is not None:
            result[found[0]] = (i, _is_quantized(node))
    return result


# ---------------------------------------------------------------------- models
class Source:
    """The FP32 model every quantization starts from: its unfused symbol, parameters, input names, and
    the oneDNN-fused graph (MKLDNN_QUANTIZE) the quantizer works on."""

    def __init__(self, symbol: Any, params: dict[str, Any], data_names: list[str]) -> None:
        nodes, _, _ = _graph(symbol)
        if any(_is_quantized(n) or n["op"] == "_contrib_quantize_v2" for n in nodes):
            raise ConfigError("the MXNet model is already quantized; give the FP32 model")
        self.symbol, self.params, self.data_names = symbol, params, data_names
        self.key = uuid.uuid4().hex  # identifies this model in the calibration cache
        self.fused = symbol.get_backend_symbol("MKLDNN_QUANTIZE")
        self.ops = find_ops(self.fused, params)

    def fused_params(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(arg_params, aux_params) of the fused graph, as MXNet's quantizer takes them."""
        args, auxs = set(self.fused.list_arguments()), set(self.fused.list_auxiliary_states())
        return ({k: v for k, v in self.params.items() if k in args},
                {k: v for k, v in self.params.items() if k in auxs})


class MXModel:
    """An MXNet graph (symbol + parameters) that runs, saves and measures itself; `source` is the FP32
    model it came from."""

    def __init__(self, symbol: Any, params: dict[str, Any], source: Source) -> None:
        self.symbol, self.source = symbol, source
        used = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
        self.params = {k: v for k, v in params.items() if k in used}
        self._block: Any = None

    @property
    def data_names(self) -> list[str]:
        return self.source.data_names

    def new_block(self, symbol: Any = None) -> Any:
        """A hybridized SymbolBlock running `symbol` (default: this model's) with these parameters."""
        import mxnet as mx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Cannot decide type for the following arguments": the inputs
            block = mx.gluon.SymbolBlock(symbol if symbol is not None else self.symbol,
                                         [mx.sym.var(n) for n in self.data_names])
        block.collect_params().load_dict(self.params, ctx=mx.cpu(), ignore_extra=True, cast_dtype=True,
                                         dtype_source="saved")
        block.hybridize(static_alloc=True, static_shape=True)
        return block

    def block(self) -> Any:
        if self._block is None:
            self._block = self.new_block()
        return self._block

    def nd_inputs(self, inputs: Any) -> list[Any]:
        import mxnet as mx

        arrays = numpy_inputs(inputs, float32=True)
        if len(arrays) != len(self.data_names):
            raise ValueError(f"the model takes inputs {self.data_names}, got {len(arrays)} array(s)")
        return [mx.nd.array(a, dtype=a.dtype) for a in arrays]

    def forward(self, nd_inputs: list[Any], block: Any = None) -> list[Any]:
        out = (block if block is not None else self.block())(*nd_inputs)
        return list(out) if isinstance(out, list | tuple) else [out]

    def write(self, prefix: Path) -> tuple[Path, Path]:
        """MXNet's checkpoint files: <prefix>-symbol.json and <prefix>-0000.params (arg:/aux: keys)."""
        import mxnet as mx

        sym_file, param_file = Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params")
        self.symbol.save(str(sym_file))
        auxs = set(self.symbol.list_auxiliary_states())
        mx.nd.save(str(param_file), {("aux:" if k in auxs else "arg:") + k: v for k, v in self.params.items()})
        return sym_file, param_file


# ---------------------------------------------------------------------- calibration
def _entropy_range(hist: np.ndarray, edges: np.ndarray, lo: float) -> tuple[float, float]:
    """MXNet's entropy threshold for one tensor under quantized_dtype 'auto': KL search by MXNet's own
    `calibrate_entropy` operator, over twice the bins for a non-negative tensor (it becomes uint8)."""
    import mxnet as mx

    bins = QUANTIZED_BINS * 2 + 1 if lo >= 0 else QUANTIZED_BINS
    threshold, _ = mx.nd.contrib.calibrate_entropy(hist=mx.nd.array(hist), hist_edges=mx.nd.array(edges),
                                                   num_quantized_bins=bins)
    th = float(threshold.asscalar())
    return (0.0, th) if lo >= 0 else (-th, th)


class _Collector:
    """Per-tensor statistics over calibration batches: min/max, plus MXNet-style symmetric histograms
    (grown with MXNet's `combine_histogram`) for "kl"."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.minmax: dict[str, tuple[float, float]] = {}
        self.hist: dict[str, tuple[Any, ...]] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        lo, hi = float(x.min()), float(x.max())
        old = self.minmax.get(name)
        self.minmax[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        if self.algorithm != "kl":
            return
        from mxnet.contrib.quantization import combine_histogram

        th = max(abs(lo), abs(hi))
        if name in self.hist:
            self.hist[name] = combine_histogram(self.hist[name], x, lo, hi, th)
        elif th > 0:  # an all-zero batch has no histogram range (and would make later bins zero-width)
            counts, edges = np.histogram(x, bins=HIST_BINS, range=(-th, th))
            self.hist[name] = (counts, edges, lo, hi, th)

    def ranges(self) -> dict[str, tuple[float, float]]:
        if self.algorithm == "minmax":
            return dict(self.minmax)
        return {name: _entropy_range(*self.hist[name][:2], lo) if name in self.hist else (lo, hi)
                for name, (lo, hi) in self.minmax.items()}


def _algorithms(source: Source, quantized: dict[str, OpChoice]) -> tuple[dict[str, str], str]:
    """Which calibration algorithm each tensor gets: that of the quantized op reading it, else of the one
    writing it; `primary` (the most common) for any other tensor MXNet asks a range for."""
    chosen: dict[str, str] = {}
    ops = [(op, quantized[op.name].activation.algorithm) for op in source.ops
           if op.name in quantized and quantized[op.name].activation is not None]
    for op, algorithm in ops:
        for t in op.inputs:
            chosen.setdefault(t, algorithm)
    for op, algorithm in ops:
        chosen.setdefault(op.output, algorithm)
    counts = Counter(a for _, a in ops)
    primary = max(counts, key=lambda a: (counts[a], a)) if counts else "minmax"
    return chosen, primary


# ---------------------------------------------------------------------- the adaptor
class MXNetAdaptor(Adaptor):
    name = "mxnet"
    approaches = ("post_training_static_quant",)  # MXNet has no dynamic quantization
    float32_inputs = True
    verify_int8 = True  # a name MXNet does not match would silently exclude nothing

    def __init__(self, threads: int | None = None, cache_calibration: bool = True) -> None:
        self.threads = threads
        self.cache_calibration = cache_calibration
        self._calibration_samples = 0  # samples seen by the last calibration pass (not configuration)
        self._warned_threads = False

    @classmethod
    def with_import_threads(cls, threads: int | None = None, cache_calibration: bool = True) -> MXNetAdaptor:
        """The constructor, plus `set_import_threads(threads)`: the Hydra entry (conf/framework/mxnet.yaml)
        builds the adaptor before the model, whose Gluon net is the first to import mxnet, and MXNet fixes
        its thread count at that import. Cheap: mxnet is not imported here."""
        set_import_threads(threads)
        return cls(threads, cache_calibration)

    @property
    def calibration_samples(self) -> int:
        """Samples the last calibration pass ran through the model."""
        return self._calibration_samples

    def _mx(self) -> ModuleType:
        mx = import_mxnet(self.threads)
        if self.threads and not self._warned_threads and mxnet_threads() != int(self.threads):
            self._warned_threads = True
            log.warning("MXNet fixed its OpenMP thread count (%s) when it was first imported; threads=%s cannot "
                        "apply now: set MXNET_OMP_MAX_THREADS=%s before mxnet is imported", mxnet_threads(),
                        self.threads, self.threads)
        return mx

    def cpu_notes(self) -> list[str]:
        info = cpu_info()
        if info.vnni:
            return ["oneDNN INT8 kernels with VNNI"]
        # measured with real AVX2 kernels (qemu -cpu EPYC-Rome and DNNL_MAX_CPU_ISA=AVX2 agree): digits_cnn
        # INT8 0.9889 = FP32; a Dense layer on signed inputs 19% output error against 1% with VNNI
        return ["oneDNN INT8 kernels without VNNI: FullyConnected on signed inputs can saturate (16-bit pair "
                "sums); the tuner falls such ops back to FP32 when accuracy suffers"]

    # ------------------------------------------------------------------ models
    def prepare(self, model: Any, example_inputs: Any) -> MXModel:
        mx = self._mx()
        if isinstance(model, MXModel):
            return model
        if isinstance(model, str | Path):
            source = self._load_source(Path(model))
        elif isinstance(model, mx.gluon.HybridBlock):
            arrays = numpy_inputs(example_inputs, float32=True)
            names = ["data"] if len(arrays) == 1 else [f"data{i}" for i in range(len(arrays))]
            model(*[mx.nd.array(a, dtype=a.dtype) for a in arrays])  # deferred parameter shapes get known
            sym = model(*[mx.sym.var(n) for n in names])
            sym = mx.sym.Group(list(sym)) if isinstance(sym, list | tuple) else sym
            params = {p.name: p.data() for p in model.collect_params().values()}
            missing = [a for a in sym.list_arguments() + sym.list_auxiliary_states()
                       if a not in params and a not in names]
            if missing:
                raise ConfigError(f"the Gluon model's graph uses values that are neither inputs nor parameters: "
                                  f"{missing[:5]}")
            source = Source(sym, params, names)
        else:
            raise ConfigError(f"framework=mxnet takes a Gluon HybridBlock, an MXModel or a path to a "
                              f"-symbol.json, got {type(model).__name__}")
        return MXModel(source.symbol.get_backend_symbol("MKLDNN"), source.params, source)

    def _load_source(self, sym_file: Path) -> Source:
        import mxnet as mx

        if not sym_file.name.endswith("-symbol.json") or not sym_file.exists():
            raise ConfigError(f"{sym_file} is not an existing <name>-symbol.json file")
        param_file = sym_file.with_name(sym_file.name[: -len("-symbol.json")] + "-0000.params")
        if not param_file.exists():
            raise ConfigError(f"{sym_file} has no parameter file {param_file.name} beside it")
        sym = mx.sym.load(str(sym_file))
        params = {k.split(":", 1)[-1]: v for k, v in mx.nd.load(str(param_file)).items()}
        names = [a for a in sym.list_arguments() if a not in params]
        return Source(sym, params, names)

    def _content(self, model: MXModel) -> Iterator[bytes]:
        """The source symbol (JSON, without the variable versions: a Gluon net traced again counts its
        BatchNorm statistics' versions up, the same model) and every parameter."""
        self._mx()
        doc = json.loads(model.source.symbol.tojson())
        for node in doc["nodes"]:
            node["inputs"] = [entry[:2] for entry in node["inputs"]]
        doc["heads"] = [entry[:2] for entry in doc["heads"]]
        yield json.dumps(doc, sort_keys=True).encode()
        for name in sorted(model.source.params):
            a = model.source.params[name].asnumpy()
            yield f"{name}|{a.dtype}|{a.shape}".encode()
            yield a.tobytes()

    def capabilities(self, model: MXModel, approach: str, example_inputs: Any) -> list[OpCapability]:
        self._mx()
        self.check_approach(approach)
        act = {"dtype": ("int8",), "scheme": ("sym",), "granularity": ("per_tensor",), "algorithm": ("minmax", "kl")}
        caps = []
        for op in model.source.ops:
            granularity = ("per_channel", "per_tensor") if op.type == "FullyConnected" else ("per_channel",)
            weight = {"dtype": ("int8",), "scheme": ("sym",), "granularity": granularity, "algorithm": ("minmax",)}
            caps.append(OpCapability(op.name, op.type, weight, act, ("fp32",)))
        return caps

    # ------------------------------------------------------------------ calibration (cached)
    def _probe(self, source: Source, tensors: list[str], batches: Iterable[list[np.ndarray]]
               ) -> Iterator[dict[str, np.ndarray]]:
        """The values of tensors of the fused FP32 graph, batch by batch."""
        mx = self._mx()
        inner = [t for t in dict.fromkeys(tensors) if t not in source.data_names]
        internals = source.fused.get_internals()
        probe = MXModel(source.fused, source.params, source)
        block = probe.new_block(mx.sym.Group([internals[t] for t in inner])) if inner else None
        for arrays in batches:
            values = dict(zip(source.data_names, arrays, strict=True))
            if block is not None:
                outs = probe.forward(probe.nd_inputs(arrays), block)
                values.update({t: o.asnumpy() for t, o in zip(inner, outs, strict=True)})
            yield {t: values[t] for t in tensors}

    def _calibrated(self, source: Source, loader: Iterable[Any], sampling_size: int, algorithm: str,
                    tensors: list[str]) -> dict[str, tuple[float, float]]:
        """Ranges of `tensors`, per (model, sampling size, algorithm); a pass covers every op's tensors
        the first time, and only the missing ones after (e.g. the input of an op after a fallback)."""

        def compute(missing: list[str]) -> dict[str, tuple[float, float]]:
            t0 = time.perf_counter()
            collector = _Collector(algorithm)
            seen = 0
            batches = (numpy_inputs(b, float32=True) for b in limited_batches(loader, sampling_size, "calibration"))
            for values in self._probe(source, missing, batches):
                seen += batch_len(next(iter(values.values())))
                for t, v in values.items():
                    collector.add(t, v)
            self._calibration_samples = seen
            log.debug("calibrated %d tensor(s) (%s) on %d samples in %.1f s", len(missing), algorithm, seen,
                      time.perf_counter() - t0)
            return collector.ranges()

        return self.calibration.get_many((source.key, sampling_size, algorithm), tensors, compute,
                                         lambda: (t for op in source.ops for t in (*op.inputs, op.output)))

    # ------------------------------------------------------------------ quantization
    def _op_names(self, model: MXModel) -> list[str]:
        return [op.name for op in model.source.ops]

    def _quantize(self, model: MXModel, config: TuneConfig, calib_dataloader: Iterable[Any],
                  example_inputs: Any) -> MXModel:
        """The INT8 graph of `config` (ops it does not name stay FP32), built from the FP32 source."""
        self._mx()
        from mxnet.contrib.quantization import calib_graph, quantize_graph

        source = model.source
        names = [op.name for op in source.ops]
        quantized = {n: c for n, c in config.ops if c.quantized}
        if not quantized:  # the FP32 reference: the same fused graph, nothing quantized
            return MXModel(source.fused, source.params, source)
        types = {op.name: op.type for op in source.ops}
        for n, c in quantized.items():
            if c.activation is None or c.weight is None:
                raise ConfigError(f"op {n!r}: MXNet quantizes weights and activations statically; the choice "
                                  f"{c.short()} lacks one of them")
        fc = {c.weight.granularity for n, c in quantized.items() if types[n] == "FullyConnected"}
        if len(fc) > 1:
            raise ConfigError("MXNet quantizes all FullyConnected ops with one weight granularity "
                              "(quantize_granularity is model-wide); this configuration mixes per_channel and "
                              "per_tensor among them (pin it with model_wise.weight.granularity)")
        excluded = [n for n in names if n not in quantized]
        args, auxs = source.fused_params()
        qsym, _, _, collector = quantize_graph(
            source.fused, args, auxs, excluded_sym_names=excluded, calib_mode="naive", quantized_dtype="auto",
            quantize_mode="smart", quantize_granularity="channel-wise" if fc == {"per_channel"} else "tensor-wise")
        chosen, primary = _algorithms(source, quantized)
        by_algorithm: dict[str, list[str]] = {}
        for t in collector.include_layer:
            by_algorithm.setdefault(chosen.get(t, primary), []).append(t)
        collector.min_max_dict = {}
        for algorithm, tensors in by_algorithm.items():
            collector.min_max_dict.update(self._calibrated(source, calib_dataloader, config.sampling_size,
                                                           algorithm, tensors))
        # from the FP32 parameters, as quantize_net_v2 does (calib_graph quantizes offline weights itself)
        qsym, qargs, qauxs = calib_graph(qsym, args, auxs, collector, calib_mode="naive", quantized_dtype="auto",
                                         logger=None)
        qsym = qsym.get_backend_symbol("MKLDNN_QUANTIZE")
        return MXModel(qsym, {**qargs, **qauxs}, source)

    def _stayed_float(self, model: MXModel, quantized: MXModel) -> dict[str, bool]:
        """An op stayed float when the node holding it is not quantized (verify_int8: each op must be
        quantized in the graph exactly when the configuration says so)."""
        found = op_nodes(quantized.symbol)
        missing = [op.name for op in model.source.ops if op.name not in found]
        if missing:
            raise FallbackError(f"op {missing[0]!r} is missing from the quantized MXNet graph")
        return {name: not is_quantized for name, (_, is_quantized) in found.items()}

    # ------------------------------------------------------------------ running and measuring
    def predict(self, model: MXModel, inputs: Any) -> Any:
        self._mx()
        outs = [o.asnumpy() for o in model.forward(model.nd_inputs(inputs))]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def runner(self, model: MXModel, inputs: Any) -> Callable[[], Any]:
        self._mx()
        block, xs = model.block(), model.nd_inputs(inputs)

        def once() -> None:
            for o in model.forward(xs, block):
                o.wait_to_read()

        return once

    def size_bytes(self, model: MXModel) -> int:
        self._mx()
        with tempfile.TemporaryDirectory(prefix="lpot_mx_size_") as tmp:
            return sum(p.stat().st_size for p in model.write(Path(tmp) / "model"))

    @contextlib.contextmanager
    def _footprint_run(self, model: MXModel, inputs: Any) -> Iterator[Callable[[], Any]]:
        """Loading the saved model with SymbolBlock.imports and running it once."""
        mx = self._mx()
        xs = model.nd_inputs(inputs)
        with tempfile.TemporaryDirectory(prefix="lpot_mx_fp_") as tmp:
            sym_file, param_file = model.write(Path(tmp) / "model")

            def load_and_run() -> None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    block = mx.gluon.SymbolBlock.imports(str(sym_file), model.data_names, str(param_file))
                model.forward(xs, block)[0].wait_to_read()

            yield load_and_run

    def inspect(self, model: MXModel, inputs: Any, op_names: list[str]) -> dict[str, np.ndarray]:
        """Each op's float output: the output of the node holding it (after its fused BatchNorm/ReLU);
        a quantized node's (data, min, max) outputs go through MXNet's `contrib.dequantize`."""
        mx = self._mx()
        found = op_nodes(model.symbol)
        missing = [n for n in op_names if n not in found]
        if missing:
            raise KeyError(f"no op named {missing[0]!r} in the MXNet graph; valid names: {sorted(found)}")
        _, _, row = _graph(model.symbol)
        internals = model.symbol.get_internals()
        probes = []
        for n in op_names:
            i, quantized = found[n]
            first = row[i]
            if quantized and row[i + 1] - first == 3:  # (data, min, max)
                probes.append(mx.sym.contrib.dequantize(internals[first], internals[first + 1],
                                                        internals[first + 2], out_type="float32"))
            else:
                probes.append(internals[first])
        outs = model.forward(model.nd_inputs(inputs), model.new_block(mx.sym.Group(probes)))
        return {n: o.asnumpy().astype(np.float32) for n, o in zip(op_names, outs, strict=True)}

    profiler = "MXNet's profiler (bulking off, in a process of its own)"

    def op_costs(self, fp32_model: MXModel, int8_model: MXModel, inputs: Any, op_names: list[str],
                 runs: int) -> OpCosts:
        """Each op's operator event in MXNet's profile of each model, run by the symbolic executor in a
        process of its own (lpot_research.adaptors.mxnet_profile: bulking off, so one event per node, in
        graph order). A fused node is its op; a quantize node belongs to the INT8 ops it feeds (shared),
        a dequantize node to the op it reads; every other node is the rest."""
        tunable = frozenset(op_names)
        (fp32, rest32), (int8, rest8) = (self._profile(m, inputs, runs, tunable) for m in (fp32_model, int8_model))
        return OpCosts(self.profiler, runs, fp32, int8, (rest32, rest8))

    def _profile(self, model: MXModel, inputs: Any, runs: int, tunable: frozenset[str],
                 warmup: int = 2) -> tuple[dict[str, float], float]:
        self._mx()
        with tempfile.TemporaryDirectory(prefix="lpot_mx_profile_") as tmp:
            model.write(Path(tmp) / "model")
            arrays = numpy_inputs(inputs, float32=True)
            np.savez(Path(tmp) / "inputs.npz", **dict(zip(model.data_names, arrays, strict=True)))
            root = str(Path(__file__).resolve().parents[2])  # this package's parent: importable without install
            env = {**os.environ, **PROFILE_ENV, "MXNET_OMP_MAX_THREADS": str(mxnet_threads() or _threads_from_env()),
                   "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
            command = [sys.executable, "-m", "lpot_research.adaptors.mxnet_profile", str(Path(tmp) / "model"),
                       str(Path(tmp) / "inputs.npz"), str(runs), str(warmup)]
            done = subprocess.run(command,
                                  capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"MXNet's profiler failed: {last}")
        node_ms = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
        owners = _owners(json.loads(model.symbol.tojson()), tunable)
        per_run: list[dict[str, float]] = []
        rest: list[float] = []
        for run in node_ms:
            this = dict.fromkeys(tunable, 0.0)
            other = 0.0
            for ops, ms in zip(owners, run, strict=True):
                other += 0.0 if ops else ms
                for op in ops:
                    this[op] += ms / len(ops)
            per_run.append(this)
            rest.append(other)
        seen = {op for ops in owners for op in ops}
        return ({op: statistics.median(r[op] for r in per_run) for op in seen}, statistics.median(rest))

    def _save(self, model: MXModel, path: Path, example_inputs: Any) -> Path:
        """MXNet's checkpoint format: <path>-symbol.json (returned) and <path>-0000.params; load with
        `mx.gluon.SymbolBlock.imports(sym_file, input_names, param_file)` (input names: data, or
        data0, data1, ... for several inputs)."""
        self._mx()
        return model.write(Path(path))[0]



def _owners(symbol_json: dict[str, Any], tunable: frozenset[str]) -> list[tuple[str, ...]]:
    """Per executed node (mxnet_profile.graph_nodes order) the tunable ops its time belongs to: a Conv/FC
    node (plain, fused or quantized) its op; a quantize node the ops among its readers; a dequantize node
    the op it reads; anything else none."""
    nodes = symbol_json["nodes"]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for j, *_ in node["inputs"]:
            readers.setdefault(j, []).append(i)

    def op(i: int) -> str | None:
        found = _op_of(nodes[i])
        return found[0] if found is not None and found[0] in tunable else None

    out = []
    for i, node in enumerate(nodes):
        if node["op"] == "null":
            continue
        if op(i) is not None:
            out.append((op(i),))
        elif node["op"] in ("_contrib_quantize", "_contrib_quantize_v2"):
            out.append(tuple(dict.fromkeys(o for r in readers.get(i, []) if (o := op(r)) is not None)))
        elif node["op"] == "_contrib_dequantize":
            out.append(tuple(o for j, *_ in node["inputs"][:1] if (o := op(j)) is not None))
        else:
            out.append(())
    return out
