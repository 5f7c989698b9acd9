"""ONNX Runtime back end on onnxruntime.quantization.

Ops are the Conv, MatMul and Gemm nodes of the graph, named by node name. Each op is INT8 or FP32
(node exclusion); ONNX Runtime has no general BF16 CPU kernels, so there is no BF16 fallback.

Static quantization calibrates once per (sampling size, calibration method) in a run and reuses those
activation ranges for every trial (the anchor recalibrates every trial). A trial then only runs ORT's
own quantizer (QDQQuantizer or ONNXQuantizer) on the cached ranges; per-op choices reach it through
`nodes_to_exclude` and `TensorQuantOverrides` (weight axis = per-channel, symmetric flags), and an op's
calibration method picks which cached range its tensors get.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from lpot_research.adaptors import onnx_recipes
from lpot_research.adaptors.base import Adaptor, RangeRule, as_tuple, batch_len, limited_batches, numpy_inputs, quiet
from lpot_research.core.cpu import cpu_info
from lpot_research.core.errors import ConfigError
from lpot_research.measure.op_costs import OpCosts, graph_of, per_op
from lpot_research.quant.calibration import kl_range, mse_range
from lpot_research.quant.space import OpCapability, OpChoice, QSpec, TuneConfig

log = logging.getLogger(__name__)

STATIC_TYPES = ("Conv", "MatMul", "Gemm")
DYNAMIC_TYPES = ("MatMul", "Gemm")
FORMATS = ("QDQ", "QOperator")
# calibration algorithm name -> (ORT method, calibrator options); "kl" and "mse" share one pass that
# collects ORT's histograms, and pick their windows with lpot_research.quant.calibration (kl_range, mse_range)
CALIBRATION = {
    "minmax": ("MinMax", {}),
    "histogram": ("Entropy", {"num_bins": 2048, "num_quantized_bins": 256}),
    "percentile": ("Percentile", {"num_bins": 2048, "percentile": 99.999, "symmetric": False}),
}
HISTOGRAM_ALGORITHMS = {"kl": kl_range, "mse": mse_range}
MIN_OPSET = 13  # per-channel DequantizeLinear needs opset 13


class OrtModel:
    """An ONNX model plus its (lazily created) inference session."""

    def __init__(self, proto: onnx.ModelProto, threads: int | None = None) -> None:
        self.proto = proto
        self.threads = threads
        self.key = uuid.uuid4().hex  # identifies this model in the calibration cache
        self._session: ort.InferenceSession | None = None
        initializers = {i.name for i in proto.graph.initializer}
        self.input_names = [i.name for i in proto.graph.input if i.name not in initializers]

    def __getstate__(self) -> dict[str, Any]:  # to a worker process: the model, not its live session
        return {**self.__dict__, "_session": None}

    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = make_session(self.proto.SerializeToString(), self.threads)
        return self._session

    def feed(self, inputs: Any) -> dict[str, np.ndarray]:
        """The session's feed: a dict by the model's input names (checked), or arrays in input order;
        float arrays are cast to what the model declares (float32 for a float graph)."""
        if isinstance(inputs, dict):
            unknown = [k for k in inputs if k not in self.input_names]
            if unknown or len(inputs) != len(self.input_names):
                raise ValueError(f"the inputs are named {list(inputs)}; the model takes {self.input_names}")
            named = {k: numpy_inputs(v)[0] for k, v in inputs.items()}
        else:
            arrays = numpy_inputs(inputs)
            if len(arrays) != len(self.input_names):
                raise ValueError(f"the model takes inputs {self.input_names}, got {len(arrays)} array(s)")
            named = dict(zip(self.input_names, arrays, strict=True))
        types = {i.name: i.type.tensor_type.elem_type for i in self.proto.graph.input}
        floats = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
        return {k: v.astype(floats[types[k]], copy=False) if types.get(k) in floats and v.dtype.kind == "f" else v
                for k, v in named.items()}

    def run(self, inputs: Any) -> Any:
        outs = self.session().run(None, self.feed(inputs))
        return outs[0] if len(outs) == 1 else tuple(outs)


def make_session(model: bytes | str, threads: int | None, profile: str | None = None) -> ort.InferenceSession:
    """A CPU session; `profile`: a file prefix to write ONNX Runtime's session profile to."""
    so = ort.SessionOptions()
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    # many sessions live in one process: busy-waiting threads would slow each other down
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def export_torch(model: Any, example_inputs: Any, opset: int = 17) -> onnx.ModelProto:
    """torch -> ONNX with the TorchScript exporter, whose node names follow module paths
    (e.g. /features/features.0/features.0.0/Conv) and a dynamic batch axis."""
    import torch

    # example inputs may come from a dataloader as numpy arrays (the API's default): trace with tensors
    args = tuple(x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)) for x in as_tuple(example_inputs))
    names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, buf, dynamo=False, opset_version=opset, input_names=names,
                          output_names=["output"], dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
                          do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make a model quantizable per channel: opset >= 13, weights held in Constant nodes moved to
    initializers (quantizers only treat initializers as weights), every node named."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset < MIN_OPSET:
        model = onnx.version_converter.convert_version(model, MIN_OPSET)
    graph = model.graph
    for node in list(graph.node):
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            graph.initializer.append(t)
            graph.node.remove(node)
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return onnx.shape_inference.infer_shapes(model)


class _Reader:
    """CalibrationDataReader over a dataloader, limited to `limit` samples. Every read has the same
    batch size (the largest divisor of the sample count not above the loader's batch): ORT's
    histogram calibrators stack the per-read outputs and need them all the same shape."""

    def __init__(self, model: OrtModel, loader: Iterable[Any], limit: int) -> None:
        self.it = self._batches(model, loader, limit)

    @staticmethod
    def _batches(model: OrtModel, loader: Iterable[Any], limit: int) -> Iterator[dict[str, np.ndarray]]:
        batches = list(limited_batches(loader, limit, "calibration"))
        seen, batch = sum(map(batch_len, batches)), max(map(batch_len, batches))
        parts = [model.feed(b) for b in batches]
        data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        chunk = max(d for d in range(1, min(batch, seen) + 1) if seen % d == 0)
        for i in range(0, seen, chunk):
            yield {k: v[i:i + chunk] for k, v in data.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


class OnnxRuntimeAdaptor(Adaptor):
    name = "onnxrt"
    profiler = "onnxruntime session profiling"
    recipes = ("cle", "smooth_quant", "bias_correction")

    def __init__(self, quant_format: str = "QDQ", threads: int | None = None, cache_calibration: bool = True,
                 opset: int = 17, reduce_range: bool | None = None) -> None:
        self.quant_format = quant_format
        self.threads = threads
        self.reduce_range = reduce_range  # None: decided by the CPU (see _reduce_range)
        self.cache_calibration = cache_calibration
        self.opset = opset

    # ------------------------------------------------------------------ the CPU
    def range_rule(self) -> RangeRule:
        """7-bit weights. MLAS's U8S8 kernels accumulate in 32 bits only with VNNI (AVX512-VNNI or
        AVX-VNNI); without it they sum u8 x s8 pairs into 16 bits with saturation (VPMADDUBSW), which
        cost digits_cnn 0.72-0.77 instead of 0.99 on an AVX2 CPU."""
        return RangeRule(saturates=not cpu_info().vnni, narrows="INT8 weights", feature="VNNI",
                         kernels="MLAS's U8S8 kernels")

    # ------------------------------------------------------------------ models
    def prepare(self, model: Any, example_inputs: Any) -> OrtModel:
        if self.quant_format not in FORMATS:
            raise ConfigError(f"framework.quant_format={self.quant_format!r} is unknown; "
                              f"valid choices: {list(FORMATS)}")
        self._check_reduce_range()
        if isinstance(model, OrtModel):
            return model
        if isinstance(model, str | Path):
            proto = onnx.load(str(model))
        elif isinstance(model, onnx.ModelProto):
            proto = model
        elif type(model).__module__.startswith("torch") or hasattr(model, "state_dict"):
            proto = export_torch(model, example_inputs, self.opset)
        else:
            raise ConfigError(f"framework=onnxrt takes an onnx.ModelProto, a .onnx path or a torch model, "
                              f"got {type(model).__name__}")
        return OrtModel(normalize(proto), self.threads)

    def _content(self, model: OrtModel) -> list[bytes]:
        return [model.proto.SerializeToString(deterministic=True)]

    def capabilities(self, model: OrtModel, approach: str, example_inputs: Any) -> list[OpCapability]:
        inits = {i.name for i in model.proto.graph.initializer}
        gran = ("per_channel", "per_tensor") if self.quant_format == "QDQ" else ("per_channel",)
        weight = {"dtype": ("int8",), "scheme": ("sym", "asym"), "granularity": gran, "algorithm": ("minmax",)}
        act = {"dtype": ("uint8",), "scheme": ("asym", "sym"), "granularity": ("per_tensor",),
               "algorithm": ("minmax", "kl", "mse", "percentile")}
        # percentile and mse scored below MinMax on the models tried (PP-OCRv4 exact match: minmax 0.78/0.81,
        # kl 0.77/0.61, mse 0.67/0.66, percentile 0.64 asym/sym): opt-in
        defaults = {"weight": {"scheme": ("sym",)}, "activation": {"algorithm": ("minmax", "kl")}}
        caps = []
        for node in model.proto.graph.node:
            has_weight = len(node.input) > 1 and node.input[1] in inits
            if approach == "post_training_dynamic_quant":
                if node.op_type in DYNAMIC_TYPES:
                    dyn_w = {"dtype": ("int8",), "scheme": ("sym",), "granularity": ("per_tensor",),
                             "algorithm": ("minmax",)}
                    caps.append(OpCapability(node.name, node.op_type, dyn_w if has_weight else None, None, ("fp32",),
                                             quantizable=has_weight))
            elif node.op_type in STATIC_TYPES:
                caps.append(OpCapability(node.name, node.op_type, weight if has_weight else None, act, ("fp32",),
                                         defaults=defaults))
        return caps

    # ------------------------------------------------------------------ calibration (cached)
    def _calibrated(self, model: OrtModel, calib: Iterable[Any], sampling_size: int, algorithm: str) -> Any:
        """Activation ranges of every quantizable node's tensors, per (model, sampling size, method)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        if algorithm in HISTOGRAM_ALGORITHMS:
            search = HISTOGRAM_ALGORITHMS[algorithm]

            def windows() -> Any:
                data = {}
                for tensor, (hist, edges, lo, hi, _) in self._collected(model, calib, sampling_size,
                                                                         "histogram").items():
                    a, b = search(hist, edges, float(lo), float(hi))
                    data[tensor] = TensorData(lowest=np.array(a, dtype=edges.dtype),
                                              highest=np.array(b, dtype=edges.dtype), hist=hist, hist_edges=edges)
                return TensorsData(CalibrationMethod.Entropy, data)

            return self.calibration.get((model.key, sampling_size, algorithm), windows, data_pass=False)
        return self._collected(model, calib, sampling_size, algorithm)

    def _collected(self, model: OrtModel, calib: Iterable[Any], sampling_size: int, method_name: str) -> Any:
        """One calibration pass of ORT's calibrator: MinMax or Percentile ranges, or the histograms."""
        from onnxruntime.quantization import CalibrationMethod, create_calibrator

        def compute() -> Any:
            method, options = CALIBRATION[method_name]
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="lpot_calib_") as tmp, quiet():
                path = Path(tmp) / "model.onnx"
                onnx.save(model.proto, str(path))
                calibrator = create_calibrator(path, list(STATIC_TYPES),
                                               augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                               calibrate_method=getattr(CalibrationMethod, method),
                                               extra_options=dict(options))
                # our session: the thread count of this run and no spinning (the calibrator's own uses all cores)
                calibrator.infer_session = make_session(str(calibrator.augmented_model_path), self.threads)
                calibrator.collect_data(_Reader(model, calib, sampling_size))
                result = (dict(calibrator.collector.histogram_dict) if method_name == "histogram"
                          else calibrator.compute_data())
            log.debug("calibrated %s on %d samples in %.1f s", method_name, sampling_size, time.perf_counter() - t0)
            return result

        return self.calibration.get((model.key, sampling_size, method_name), compute)

    # ------------------------------------------------------------------ recipes
    def _model_key(self, model: OrtModel) -> str:
        return model.key

    def _input_stats(self, model: OrtModel, calib: Iterable[Any], sampling_size: int) -> dict[str, Any]:
        return onnx_recipes.collect_stats(model.proto, _Reader._batches(model, calib, sampling_size),
                                          lambda blob: make_session(blob, self.threads))

    def _rewrite(self, model: OrtModel, recipe: str, value: Any, calib: Iterable[Any], sampling_size: int) -> OrtModel:
        if recipe == "cle":
            proto, pairs = onnx_recipes.equalize(model.proto)
            log.info("cle: %d conv pair(s) equalized%s", len(pairs), "" if pairs else
                     " (none is conv -> [Relu] -> conv with nothing else reading between)")
        else:
            proto, n = onnx_recipes.smooth(model.proto, self.input_stats(model, calib, sampling_size), float(value))
            log.info("smooth_quant %s: %d MatMul/Gemm op(s) smoothed", value, n)
        return OrtModel(proto, self.threads)

    def _bias_corrected(self, model: OrtModel, config: TuneConfig, calib: Iterable[Any]) -> OrtModel:
        """The model with the biases of the configuration's INT8 ops corrected (bias_correction), calibrated as
        `model` (the same key: the shift moves an op's output by its weights' rounding error, far inside
        the ranges)."""
        if not config.recipe("bias_correction"):
            return model
        choices = {n: c for n, c in config.ops if c.quantized}
        if config.approach == "post_training_dynamic_quant":  # what _dynamic asks ORT for: per-tensor symmetric
            choices = {n: OpChoice(c.dtype, QSpec("int8", "sym", "per_tensor", "minmax"), None)
                       for n, c in choices.items()}
        proto, done = onnx_recipes.correct_biases(model.proto, choices,
                                                  self.input_stats(model, calib, config.sampling_size),
                                                  self._reduce_range())
        log.debug("bias_correction: %d op(s) corrected", len(done))
        corrected = OrtModel(proto, self.threads)
        corrected.key = model.key
        return corrected

    # ------------------------------------------------------------------ quantization
    def _op_names(self, model: OrtModel) -> list[str]:
        return [n.name for n in model.proto.graph.node if n.op_type in STATIC_TYPES]

    def _quantize(self, model: OrtModel, config: TuneConfig, calib_dataloader: Iterable[Any],
                  example_inputs: Any) -> OrtModel:
        quantized = [(n, c) for n, c in config.ops if c.quantized]
        excluded = [n for n, c in config.ops if not c.quantized]
        if not quantized:
            return OrtModel(copy.deepcopy(model.proto), self.threads)
        model = self._bias_corrected(model, config, calib_dataloader)
        if config.approach == "post_training_dynamic_quant":
            proto = self._dynamic(model, quantized, excluded)
        else:
            proto = self._static(model, config, quantized, excluded, calib_dataloader)
        del proto.metadata_props[:]
        proto.metadata_props.extend(model.proto.metadata_props)  # e.g. a recognizer's character list
        return OrtModel(proto, self.threads)

    def _stayed_float(self, model: OrtModel, quantized: OrtModel) -> dict[str, bool]:
        """An op with a weight stayed float when a node other than a (De)QuantizeLinear still reads its
        FP32 weight initializer (quantizing replaces it by `<weight>_quantized` in every format, and
        ORT's dynamic quantizer renames the nodes, so the weight is what identifies the op). Ops without
        a weight (e.g. MatMul of two activations) cannot be told: their inputs may be dequantized for a
        quantized neighbour whatever they compute in."""
        weights = {i.name for i in model.proto.graph.initializer}
        floats = {i.name for i in quantized.proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        readers: dict[str, set[str]] = {}
        for node in quantized.proto.graph.node:
            for t in node.input:
                readers.setdefault(t, set()).add(node.op_type)
        out = {}
        for node in model.proto.graph.node:
            if node.op_type in STATIC_TYPES and len(node.input) > 1 and node.input[1] in weights:
                w = node.input[1]
                out[node.name] = w in floats and bool(readers.get(w, set()) - {"QuantizeLinear", "DequantizeLinear"})
        return out

    def _dynamic(self, model: OrtModel, quantized: list[tuple[str, OpChoice]], excluded: list[str]) -> onnx.ModelProto:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="lpot_dyn_") as tmp, quiet():
            out = Path(tmp) / "q.onnx"
            # no nodes_to_quantize: ORT rewrites a Gemm into MatMul + Add under new names before quantizing
            quantize_dynamic(copy.deepcopy(model.proto), out, op_types_to_quantize=list(DYNAMIC_TYPES),
                             nodes_to_exclude=excluded, weight_type=QuantType.QInt8, per_channel=False,
                             reduce_range=self._reduce_range())
            return onnx.load(str(out))

    def _static(self, model: OrtModel, config: TuneConfig, quantized: list[tuple[str, OpChoice]],
                excluded: list[str], calib: Iterable[Any]) -> onnx.ModelProto:
        from onnxruntime.quantization import QDQQuantizer, QuantizationMode, QuantType
        from onnxruntime.quantization.calibrate import TensorsData
        from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

        algorithms = [c.activation.algorithm for _, c in quantized if c.activation]
        primary = max(set(algorithms), key=lambda a: (algorithms.count(a), a)) if algorithms else "minmax"
        ranges = {a: self._calibrated(model, calib, config.sampling_size, a) for a in {primary, *algorithms}}
        merged = dict(copy.deepcopy(ranges[primary].data))
        nodes = {n.name: n for n in model.proto.graph.node}
        inits = {i.name: i for i in model.proto.graph.initializer}
        overrides: dict[str, list[dict[str, Any]]] = {}
        for name, choice in quantized:
            node = nodes[name]
            act = choice.activation
            for t in [*node.input, *node.output]:
                if not t or t in inits:
                    continue
                if act and act.algorithm != primary and t in ranges[act.algorithm].data:
                    merged[t] = copy.deepcopy(ranges[act.algorithm].data[t])
                if act and act.scheme == "sym":
                    overrides.setdefault(t, [{}])[0]["symmetric"] = True
            w = choice.weight
            if w is not None and len(node.input) > 1 and node.input[1] in inits:
                spec: dict[str, Any] = {"symmetric": w.scheme == "sym"}
                if w.granularity == "per_channel":
                    spec["axis"] = _channel_axis(node, inits[node.input[1]])
                overrides[node.input[1]] = [spec]
        tensors = TensorsData(ranges[primary].calibration_method, merged)
        extra = {"TensorQuantOverrides": overrides, "ActivationSymmetric": False, "WeightSymmetric": True}
        names = [n for n, _ in quantized]
        with warnings.catch_warnings(), quiet():
            warnings.simplefilter("ignore")
            if self.quant_format == "QDQ":
                q = QDQQuantizer(copy.deepcopy(model.proto), False, self._reduce_range(), QuantType.QInt8,
                                 QuantType.QUInt8, tensors,
                                 names, excluded, list(STATIC_TYPES), extra)
            else:  # QOperator: per-channel is global (capabilities offer only per-channel weights)
                per_channel = True
                q = ONNXQuantizer(copy.deepcopy(model.proto), per_channel, self._reduce_range(),
                                  QuantizationMode.QLinearOps, True,
                                  QuantType.QInt8, QuantType.QUInt8, tensors, names, excluded, list(STATIC_TYPES),
                                  extra)
            q.quantize_model()
            q.model.topological_sort()
        return q.model.model

    # ------------------------------------------------------------------ running and measuring
    def predict(self, model: OrtModel, inputs: Any) -> Any:
        return model.run(inputs)

    def runner(self, model: OrtModel, inputs: Any) -> Callable[[], Any]:
        sess, feed = model.session(), model.feed(inputs)
        return lambda: sess.run(None, feed)

    def size_bytes(self, model: OrtModel) -> int:
        return model.proto.ByteSize()

    def _footprint_run(self, model: OrtModel, inputs: Any) -> contextlib.AbstractContextManager[Callable[[], Any]]:
        blob, feed = model.proto.SerializeToString(), model.feed(inputs)
        return contextlib.nullcontext(lambda: make_session(blob, self.threads).run(None, feed))

    def inspect(self, model: OrtModel, inputs: Any, op_names: list[str]) -> dict[str, np.ndarray]:
        """Each op's float output: the node's own output in FP32 and QDQ models; in QOperator models the
        quantized output of the QLinear node, dequantized with its scale and zero point."""
        nodes = {n.name: n for n in model.proto.graph.node}
        inits = {i.name: i for i in model.proto.graph.initializer}
        wanted: dict[str, str] = {}
        for op in op_names:
            node = nodes.get(op) or nodes.get(f"{op}_quant")
            if node is None:
                raise KeyError(f"no node named {op!r} in the model; valid names: {sorted(nodes)[:20]}")
            wanted[op] = node.output[0]
        probe = copy.deepcopy(model.proto)
        existing = {o.name for o in probe.graph.output}
        for t in wanted.values():
            if t not in existing:
                probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
        sess = make_session(probe.SerializeToString(), self.threads)
        names = [o.name for o in sess.get_outputs()]
        outs = dict(zip(names, sess.run(None, model.feed(inputs)), strict=True))
        result = {}
        for op, t in wanted.items():
            v = outs[t]
            if v.dtype in (np.uint8, np.int8):  # QOperator: dequantize with the node's output qparams
                node = nodes.get(f"{op}_quant") or nodes[op]
                k = 7 if node.op_type == "QGemm" else 6  # y_scale, y_zero_point follow the weight's qparams
                scale = numpy_helper.to_array(inits[node.input[k]])
                zp = numpy_helper.to_array(inits[node.input[k + 1]])
                v = (v.astype(np.float32) - zp.astype(np.float32)) * scale
            result[op] = v.astype(np.float32)
        return result

    def op_costs(self, fp32_model: OrtModel, int8_model: OrtModel, inputs: Any, op_names: list[str],
                 runs: int) -> OpCosts:
        """Each op's kernels in ONNX Runtime's session profile, mapped back to the FP32 graph's names."""
        graph = graph_of((n.name, n.input, n.output) for n in fp32_model.proto.graph.node)
        tunable = frozenset(op_names)
        fp32, rest32 = per_op(self._profile(fp32_model, inputs, runs), graph, tunable)
        int8, rest8 = per_op(self._profile(int8_model, inputs, runs), graph, tunable)
        return OpCosts(self.profiler, runs, fp32, int8, (rest32, rest8))

    def _profile(self, model: OrtModel, inputs: Any, runs: int, warmup: int = 2) -> list[dict[str, float]]:
        """Milliseconds of each kernel (node event) in each of `runs` profiled runs, after `warmup`."""
        feed = model.feed(inputs)
        with tempfile.TemporaryDirectory() as d:
            sess = make_session(model.proto.SerializeToString(), self.threads, profile=str(Path(d) / "profile"))
            for _ in range(warmup + runs):
                sess.run(None, feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
        timed = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                       key=lambda e: e["ts"])[warmup:]
        kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        out = []
        for r in timed:
            run: dict[str, float] = {}
            for e in kernels:
                if r["ts"] <= e["ts"] <= r["ts"] + r["dur"]:
                    name = e["name"][: -len("_kernel_time")]
                    run[name] = run.get(name, 0.0) + e["dur"] / 1e3
            out.append(run)
        return out

    def _save(self, model: OrtModel, path: Path, example_inputs: Any) -> Path:
        out = Path(path).with_suffix(".onnx")
        onnx.save(model.proto, str(out))
        return out


def _channel_axis(node: onnx.NodeProto, weight: onnx.TensorProto) -> int:
    """The output-channel axis of a node's weight: 0 for Conv and Gemm with transB, else the last."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return len(weight.dims) - 1
