"""TensorFlow back end on TensorFlow Lite, run by the LiteRT interpreter (`ai_edge_litert`).

Why TFLite: it is TensorFlow's INT8 path that really runs INT8 kernels on a CPU (XNNPACK / ruy). A
plain TensorFlow graph has no fast INT8 CPU kernels, so the FP32 baseline is the same model converted
to float TFLite and run by the same interpreter: the latency ratio compares like with like.

- Static: full-integer quantization (int8 weights, int8 activations, float model inputs/outputs).
  Calibration is the converter's own `_experimental_calibrate_only` pass over a representative
  dataset of `sampling_size` samples; it runs once per (model, sampling size) and every trial then
  only re-runs the quantizer (`mlir_quantize`, milliseconds) on the calibrated model. Per-op FP32
  fallback is the quantizer's node denylist (the op's output tensor name), as the quantization
  debugger uses it; every trial checks that each denylisted op really stayed float.
- Dynamic: dynamic-range quantization (int8 weights, activations quantized at run time). TFLite
  applies it to the whole model, so dynamic ops have no per-op fallback.
- Ops are the CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, BATCH_MATMUL and TRANSPOSE_CONV nodes, named
  by their Keras layer (found from the weight tensor name). Other ops (pad, pool, add...) follow
  TFLite's own rules: quantized unless they sit between float ops.
- TFLite calibrates activations with min/max only, quantizes weights symmetrically and activations
  asymmetrically, and applies per-channel or per-tensor weights to the whole model
  (`per_channel`); those are the only values offered.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep its C++ INFO logs out

import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402
from tensorflow.lite.python import convert as tflite_convert  # noqa: E402

from lpot_research.adaptors.base import Adaptor, batch_len, limited_batches, numpy_inputs, quiet  # noqa: E402
from lpot_research.core.errors import ConfigError  # noqa: E402
from lpot_research.quant.space import OpCapability, TuneConfig  # noqa: E402

log = logging.getLogger(__name__)

OP_TYPES = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")
FLOAT = (np.float32, np.float16)


class TFLiteModel:
    """A TFLite flatbuffer plus per-input-shape interpreters (a resize re-plans the arena, so each
    batch shape keeps its own)."""

    def __init__(self, content: bytes, threads: int | None, layers: dict[str, str] | None = None) -> None:
        self.content = content
        self.threads = threads
        self.layers = layers or {}  # weight tensor name -> op name, for inspection
        self._interpreters: dict[tuple[tuple[int, ...], ...], Interpreter] = {}

    def __getstate__(self) -> dict[str, Any]:  # to a worker process: the model, not its live interpreters
        return {**self.__dict__, "_interpreters": {}}

    def interpreter(self, arrays: list[np.ndarray], preserve: bool = False) -> Interpreter:
        key = tuple(a.shape for a in arrays) + ((("preserve",),) if preserve else ())
        it = self._interpreters.get(key)
        if it is None:
            if preserve:  # builtin kernels only: a delegate's intermediate tensors are not readable
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    it = Interpreter(model_content=self.content, num_threads=self.threads or 1,
                                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                                     experimental_preserve_all_tensors=True)
            else:
                it = Interpreter(model_content=self.content, num_threads=self.threads or 1)
            details = it.get_input_details()
            if len(details) != len(arrays):
                raise ConfigError(f"the model takes {len(details)} inputs, the batch has {len(arrays)}")
            for d, a in zip(details, arrays, strict=True):
                if tuple(d["shape"]) != a.shape:
                    it.resize_tensor_input(d["index"], list(a.shape))
            it.allocate_tensors()
            self._interpreters[key] = it
        return it

    def run(self, arrays: list[np.ndarray], preserve: bool = False) -> Interpreter:
        it = self.interpreter(arrays, preserve)
        for d, a in zip(it.get_input_details(), arrays, strict=True):
            it.set_tensor(d["index"], a.astype(d["dtype"], copy=False))
        it.invoke()
        return it

    def outputs(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        it = self.run(arrays)
        return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]

    @functools.cached_property
    def ops(self) -> list[dict[str, Any]]:
        """The graph's ops, each with its type, input/output tensor names and output dtype (read once:
        the flatbuffer does not change)."""
        it = Interpreter(model_content=self.content)
        tensors = {t["index"]: t for t in it.get_tensor_details()}
        out = []
        for op in it._get_ops_details():  # noqa: SLF001 - the public API has no op list
            ins = [tensors[i]["name"] if i >= 0 else "" for i in op["inputs"]]
            outs = [tensors[i]["name"] for i in op["outputs"]]
            out.append({"type": op["op_name"], "inputs": ins, "outputs": outs, "index": op["index"],
                        "output_index": op["outputs"][0] if len(op["outputs"]) else -1,
                        "weight_dtype": op["operand_types"][1] if len(op["operand_types"]) > 1 else None,
                        "output_dtype": op["result_types"][0] if len(op["result_types"]) else None})
        return out


class TFModel:
    """A prepared TensorFlow model: how to make a converter for it, its float TFLite form, and its ops
    (op name -> (op type, weight tensor name, output tensor name) in the float/calibrated graph)."""

    def __init__(self, make_converter: Callable[[], Any], layer_names: set[str], threads: int | None) -> None:
        self.make_converter = make_converter
        with quiet():
            self.float = TFLiteModel(make_converter().convert(), threads)
        self.key = hashlib.sha256(self.float.content).hexdigest()[:16]  # names the calibration cache entries
        self.ops: dict[str, tuple[str, str, str]] = {}  # name -> (type, weight tensor, output tensor)
        for op in self.float.ops:
            if op["type"] not in OP_TYPES or len(op["inputs"]) < 2:
                continue
            name = op_name(op["inputs"][1], op["outputs"][0], layer_names)
            base, k = name, 1
            while name in self.ops:  # a layer applied twice: name its calls apart
                k += 1
                name = f"{base}#{k}"
            self.ops[name] = (op["type"], op["inputs"][1], op["outputs"][0])
        self.float.layers = {w: n for n, (_, w, _) in self.ops.items()}


def op_name(weight_tensor: str, output_tensor: str, layer_names: set[str]) -> str:
    """The Keras layer an op comes from. Exported graphs name tensors `model_1/layer_1/op`; the
    scope carries a uniquifying `_<n>` suffix, so a scope matches a layer with or without it."""
    for source in (weight_tensor, output_tensor):
        for part in source.split(";"):
            for seg in reversed(part.split("/")[:-1]):
                for cand in (seg, re.sub(r"_\d+$", "", seg)):
                    if cand in layer_names:
                        return cand
    first = weight_tensor.split(";")[0]
    return first.rsplit("/", 1)[0] if "/" in first else first


class TensorFlowAdaptor(Adaptor):
    name = "tensorflow"
    layout = "NHWC"
    float32_inputs = True

    def __init__(self, per_channel: bool = True, threads: int | None = None, cache_calibration: bool = True) -> None:
        self.per_channel = per_channel
        self.threads = threads
        self.cache_calibration = cache_calibration

    # ------------------------------------------------------------------ models
    def prepare(self, model: Any, example_inputs: Any) -> TFModel:
        """A Keras model, a `.keras` file or a SavedModel directory."""
        import keras

        if isinstance(model, TFModel):
            return model
        if isinstance(model, str | Path):
            p = Path(model)
            if p.is_dir():
                return TFModel(lambda: tf.lite.TFLiteConverter.from_saved_model(str(p)), set(), self.threads)
            if p.suffix == ".keras":
                model = keras.saving.load_model(str(p))
            else:
                raise ConfigError(f"framework=tensorflow takes a Keras model, a .keras file or a SavedModel "
                                  f"directory; {str(p)!r} is neither")
        if not isinstance(model, keras.Model):
            hint = "; a PyTorch model needs framework=pytorch or onnxrt" if hasattr(model, "state_dict") else ""
            raise ConfigError(f"framework=tensorflow takes a Keras model, a .keras file or a SavedModel directory, "
                              f"got {type(model).__name__}{hint}")
        names = {layer.name for layer in model._flatten_layers(include_self=False)}  # noqa: SLF001 - nested too
        km = model
        return TFModel(lambda: tf.lite.TFLiteConverter.from_keras_model(km), names, self.threads)

    def _content(self, model: TFModel) -> list[bytes]:
        """The float TFLite model the converter makes of it (weights and graph)."""
        return [model.float.content]

    def capabilities(self, model: TFModel, approach: str, example_inputs: Any) -> list[OpCapability]:
        gran = ("per_channel",) if self.per_channel else ("per_tensor",)
        weight = {"dtype": ("int8",), "scheme": ("sym",), "granularity": gran, "algorithm": ("minmax",)}
        act = {"dtype": ("int8",), "scheme": ("asym",), "granularity": ("per_tensor",), "algorithm": ("minmax",)}
        if approach == "post_training_dynamic_quant":
            return [OpCapability(n, t, weight, None, ()) for n, (t, _, _) in model.ops.items()]
        return [OpCapability(n, t, weight, act, ("fp32",)) for n, (t, _, _) in model.ops.items()]

    # ------------------------------------------------------------------ quantization
    def _calibrate(self, model: TFModel, loader: Iterable[Any], sampling_size: int) -> bytes:
        """The converter's calibrated (not yet quantized) model, per (model, sampling size)."""

        def compute() -> bytes:
            samples: list[list[np.ndarray]] = []
            for inputs in limited_batches(loader, sampling_size, "calibration"):
                arrays = numpy_inputs(inputs, float32=True)
                samples += [[a[i:i + 1] for a in arrays] for i in range(batch_len(inputs))]
            t0 = time.perf_counter()
            converter = model.make_converter()
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: iter(samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            converter._experimental_calibrate_only = True  # noqa: SLF001 - calibrate once, quantize per trial
            with quiet():
                calibrated = converter.convert()
            log.debug("calibrated on %d samples in %.1f s", len(samples), time.perf_counter() - t0)
            return calibrated

        return self.calibration.get((model.key, sampling_size), compute)

    def _op_names(self, model: TFModel) -> list[str]:
        return list(model.ops)

    def _quantize(self, model: TFModel, config: TuneConfig, calib_dataloader: Iterable[Any],
                  example_inputs: Any) -> TFLiteModel:
        if not any(c.quantized for _, c in config.ops):
            return TFLiteModel(model.float.content, self.threads, model.float.layers)
        if config.approach == "post_training_dynamic_quant":
            converter = model.make_converter()
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter._experimental_disable_per_channel = not self.per_channel  # noqa: SLF001
            with quiet():
                return TFLiteModel(converter.convert(), self.threads, model.float.layers)
        calibrated = self._calibrate(model, calib_dataloader, config.sampling_size)
        denied = [model.ops[n][2] for n, c in config.ops if not c.quantized]
        content = tflite_convert.mlir_quantize(calibrated, disable_per_channel=not self.per_channel,
                                               denylisted_nodes=denied or None)
        return TFLiteModel(content, self.threads, model.float.layers)

    def _stayed_float(self, model: TFModel, quantized: TFLiteModel) -> dict[str, bool]:
        """An op stayed float when the op reading its weight tensor has float weights (a denylist entry
        that matches nothing would silently quantize it; an op whose weight tensor is gone was rewritten)."""
        by_weight = {op["inputs"][1]: op for op in quantized.ops if op["type"] in OP_TYPES and len(op["inputs"]) > 1}
        out = {}
        for name, (_, weight, _) in model.ops.items():
            op = by_weight.get(weight)
            out[name] = op is not None and op["weight_dtype"] in FLOAT
        return out

    # ------------------------------------------------------------------ running and measuring
    def _tflite(self, model: Any) -> TFLiteModel:
        return model.float if isinstance(model, TFModel) else model

    def predict(self, model: Any, inputs: Any) -> np.ndarray:
        outs = self._tflite(model).outputs(numpy_inputs(inputs, float32=True))
        return outs[0] if len(outs) == 1 else outs

    def runner(self, model: Any, inputs: Any) -> Callable[[], Any]:
        m, arrays = self._tflite(model), numpy_inputs(inputs, float32=True)
        return lambda: m.run(arrays)

    def size_bytes(self, model: Any) -> int:
        return len(self._tflite(model).content)

    def _footprint_run(self, model: Any, inputs: Any) -> contextlib.AbstractContextManager[Callable[[], Any]]:
        m, arrays = self._tflite(model), numpy_inputs(inputs, float32=True)
        return contextlib.nullcontext(lambda: TFLiteModel(m.content, self.threads).outputs(arrays))

    def inspect(self, model: Any, inputs: Any, op_names: list[str]) -> dict[str, np.ndarray]:
        """Each op's output, dequantized when the op computes in INT8 (its output tensor's own scale
        and zero point); the interpreter keeps intermediate tensors only when asked to."""
        m = self._tflite(model)
        by_name = {m.layers.get(op["inputs"][1]): op for op in m.ops if len(op["inputs"]) > 1}
        missing = [n for n in op_names if n not in by_name]
        if missing:
            raise KeyError(f"no op named {missing[0]!r} in the model; valid names: {sorted(filter(None, by_name))}")
        it = m.run(numpy_inputs(inputs, float32=True), preserve=True)
        details = {t["index"]: t for t in it.get_tensor_details()}
        out = {}
        for name in op_names:
            idx = by_name[name]["output_index"]
            value = it.get_tensor(idx)
            if value.dtype in (np.int8, np.uint8, np.int16):
                scale, zero = details[idx]["quantization"]
                value = (value.astype(np.float32) - zero) * scale
            out[name] = np.asarray(value, dtype=np.float32)
        return out

    def _save(self, model: Any, path: Path, example_inputs: Any) -> Path:
        """A .tflite flatbuffer: loads in the TFLite/LiteRT interpreter alone."""
        out = Path(path).with_suffix(".tflite")
        out.write_bytes(self._tflite(model).content)
        return out

