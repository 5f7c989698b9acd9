"""The contract every framework adaptor passes, as one reusable test-case class, parametrized over the
installed back ends (pytorch, onnxrt, tensorflow, mxnet; each skipped with the reason when its framework
is missing) on the built-in digits_cnn (fast: a few seconds per back end).

Each promise of `lpot_research.adaptors.base.Adaptor` is checked once here, on what the quantized model
really holds (read by the framework-specific `Backend.int8_ops`, written apart from the adaptors' own
checks): capabilities cover the model's quantizable ops; the model-wise INT8 config and a per-op FP32
fallback produce what they say; calibration runs once per key; the saved model reloads with the
framework alone and gives the same outputs; latency and the warmed-up footprint are positive; the
fingerprint is stable and follows the weights; bad configurations and ignored fallbacks fail with an
exception naming them (the trial runner records a failed trial). The per-framework test files keep
only what is specific to one framework. Run by tests/test_adaptor_contract.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from lpot_research.adaptors import installed
from lpot_research.adaptors.base import FallbackError, to_numpy
from lpot_research.core.errors import ConfigError
from lpot_research.measure.metrics import TopK
from lpot_research.quant.space import OpChoice, TuneConfig, build_space

STATIC = "post_training_static_quant"
SAMPLING = 64
BLOCKED = 'import sys\nsys.modules["lpot_research"] = None  # any import of this package now fails\n'


# ---------------------------------------------------------------------- what each back end holds
def pytorch_int8_ops(q: Any) -> set[str]:
    """Modules of the converted FX graph that are torch.ao quantized modules."""
    return {n for n, m in q.named_modules() if n and type(m).__module__.startswith(
        ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))}


def export_int8_ops(q: Any) -> set[str]:
    """Linear/Conv calls of the converted exported graph whose weight is dequantized from INT8, named by
    the module that calls them."""
    import torch

    ops = (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default)
    return {list(n.meta["nn_module_stack"].values())[-1][0] for n in q.graph.nodes
            if n.target in ops and getattr(n.args[1], "target", None) in (
                torch.ops.quantized_decomposed.dequantize_per_channel.default,
                torch.ops.quantized_decomposed.dequantize_per_tensor.default)}


def onnxrt_int8_ops(q: Any) -> set[str]:
    """Nodes whose weight comes out of a DequantizeLinear (QDQ: ORT runs them as QLinear kernels)."""
    producers = {o: n.op_type for n in q.proto.graph.node for o in n.output}
    return {n.name for n in q.proto.graph.node if len(n.input) > 1 and producers.get(n.input[1]) == "DequantizeLinear"}


def tensorflow_int8_ops(q: Any) -> set[str]:
    """Ops of the TFLite flatbuffer whose weight tensor is int8 (named by their Keras layer)."""
    return {q.layers[op["inputs"][1]] for op in q.ops
            if len(op["inputs"]) > 1 and op["inputs"][1] in q.layers and op["weight_dtype"] is np.int8}


def mxnet_int8_ops(q: Any) -> set[str]:
    """Convolution/FullyConnected op names inside quantized nodes of the MXNet symbol."""
    out = set()
    for n in json.loads(q.symbol.tojson())["nodes"]:
        if n["op"].startswith("_contrib_quantized") or str(n.get("attrs", {}).get("quantized")).lower() == "true":
            if n["op"].startswith("_contrib_quantized"):
                out.add(n["name"].removeprefix("quantized_"))
            out.update(s["name"] for g in n.get("subgraphs", []) for s in g["nodes"]
                       if s["op"] in ("Convolution", "FullyConnected"))
    return out


# ---------------------------------------------------------------------- a copy with one weight changed
def pytorch_copy(adaptor: Any, bundle: Any, delta: float) -> Any:
    import torch

    m = copy.deepcopy(bundle.model)
    with torch.no_grad():
        m.fc.weight[0, 0] += delta
    return adaptor.prepare(m, bundle.example_inputs)


def onnxrt_copy(adaptor: Any, bundle: Any, delta: float) -> Any:
    from onnx import numpy_helper

    proto = copy.deepcopy(adaptor.prepare(bundle.model, bundle.example_inputs).proto)
    init = next(i for i in proto.graph.initializer if i.name == "fc.weight")
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += delta
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    return adaptor.prepare(proto, bundle.example_inputs)


def tensorflow_copy(adaptor: Any, bundle: Any, delta: float) -> Any:
    import keras

    m = keras.models.clone_model(bundle.model)
    weights = [w.copy() for w in bundle.model.get_weights()]
    weights[-2].flat[0] += delta  # the Dense kernel
    m.set_weights(weights)
    return adaptor.prepare(m, bundle.example_inputs)


def mxnet_copy(adaptor: Any, bundle: Any, delta: float) -> Any:
    from lpot_research.adaptors.mxnet import MXModel, Source

    source = adaptor.prepare(bundle.model, bundle.example_inputs).source
    params = dict(source.params)
    params["fc_weight"] = params["fc_weight"].copy()
    params["fc_weight"][0, 0] += delta
    changed = Source(source.symbol, params, source.data_names)
    return MXModel(changed.symbol.get_backend_symbol("MKLDNN"), changed.params, changed)


# ---------------------------------------------------------------------- reloading with the framework alone
RELOAD = {
    "pytorch": """
        import numpy as np, torch
        y = torch.jit.load(PATH)(torch.from_numpy(np.load(X))).numpy()
    """,
    "pytorch_export": """
        import numpy as np, torch
        import torch.ao.quantization.fx._decomposed  # registers the Q/DQ ops of a converted graph
        with torch.no_grad():
            y = torch.export.load(PATH).module()(torch.from_numpy(np.load(X))).numpy()
    """,
    "onnxrt": """
        import numpy as np, onnxruntime as ort
        s = ort.InferenceSession(PATH, providers=["CPUExecutionProvider"])
        y = s.run(None, {s.get_inputs()[0].name: np.load(X)})[0]
    """,
    "tensorflow": """
        sys.modules["tensorflow"] = None  # the LiteRT interpreter alone
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
        x = np.load(X)
        it = Interpreter(model_path=PATH, num_threads=1)
        inp = it.get_input_details()[0]["index"]
        it.resize_tensor_input(inp, list(x.shape))
        it.allocate_tensors()
        it.set_tensor(inp, x)
        it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
    """,
    "mxnet": """
        import warnings
        import numpy as np
        with warnings.catch_warnings():  # mxnet 1.9 needs numpy's removed builtin aliases
            warnings.simplefilter("ignore")
            for name, alias in (("bool", bool), ("int", int), ("float", float), ("complex", complex),
                                ("object", object), ("str", str)):
                if not hasattr(np, name):
                    setattr(np, name, alias)
        import mxnet as mx
        net = mx.gluon.SymbolBlock.imports(PATH, ["data"], PATH.replace("-symbol.json", "-0000.params"))
        y = net(mx.nd.array(np.load(X))).asnumpy()
    """,
}


@dataclass(frozen=True)
class Backend:
    """What the contract needs to know of one back end on digits_cnn."""

    name: str
    modules: tuple[str, ...]  # what must be installed
    adaptor: str  # module:class
    ops: tuple[str, ...]  # digits_cnn's quantizable ops (5 convolutions, 1 dense layer), in model order
    int8_ops: Callable[[Any], set[str]]
    copy: Callable[[Any, Any, float], Any]  # a prepared copy of the model with one weight moved by delta
    kwargs: dict[str, Any] = field(default_factory=dict)
    framework: str = ""  # the built-in model's form (default: name)

    def make(self) -> Any:
        if self.name == "mxnet":
            from lpot_research.adaptors.mxnet import import_mxnet

            import_mxnet(threads=1)  # MXNet fixes its thread count at its first import
        module, cls = self.adaptor.split(":")
        return getattr(__import__(module, fromlist=[cls]), cls)(threads=1, **self.kwargs)


BACKENDS = (
    Backend("pytorch", ("torch",), "lpot_research.adaptors.pytorch:PyTorchAdaptor",
            ("features.0.0", "features.1.0", "features.2.0", "features.3.0", "features.4.0", "fc"),
            pytorch_int8_ops, pytorch_copy),
    Backend("pytorch_export", ("torch", "torchao"), "lpot_research.adaptors.pytorch_export:PyTorchExportAdaptor",
            ("features.0.0", "features.1.0", "features.2.0", "features.3.0", "features.4.0", "fc"),
            export_int8_ops, pytorch_copy, framework="pytorch"),
    Backend("onnxrt", ("torch", "onnxruntime"), "lpot_research.adaptors.onnxrt:OnnxRuntimeAdaptor",
            (*(f"/features/features.{i}/features.{i}.0/Conv" for i in range(5)), "/fc/Gemm"),
            onnxrt_int8_ops, onnxrt_copy),
    Backend("tensorflow", ("torch", "tensorflow", "ai_edge_litert"),
            "lpot_research.adaptors.tensorflow:TensorFlowAdaptor",
            (*(f"features.{i}.conv" for i in range(5)), "fc"), tensorflow_int8_ops, tensorflow_copy),
    Backend("mxnet", ("torch", "mxnet"), "lpot_research.adaptors.mxnet:MXNetAdaptor",
            (*(f"features{i}_conv_fwd" for i in range(5)), "fc_fwd"), mxnet_int8_ops, mxnet_copy),
)


def _param(b: Backend) -> Any:
    missing = [m for m in b.modules if not installed(m)]
    reason = f"{b.name}: {', '.join(missing)} not installed (pip install 'lpot-research[{b.framework or b.name}]')"
    return pytest.param(b, id=b.name, marks=pytest.mark.skipif(bool(missing), reason=reason))


@dataclass
class Case:
    """One back end's adaptor on digits_cnn, with its prepared model and model-wise INT8 config."""

    backend: Backend
    adaptor: Any
    bundle: Any
    model: Any
    int8: TuneConfig  # the recommended model-wise config: every op INT8

    def fresh(self) -> Any:
        """An adaptor with nothing cached."""
        return self.backend.make()

    def quantize(self, config: TuneConfig, adaptor: Any = None) -> Any:
        return (adaptor or self.adaptor).quantize(self.model, config, self.bundle.calib_dataloader,
                                                  self.bundle.example_inputs)

    def inputs(self, n: int) -> Any:
        return self.adaptor.take_inputs(self.bundle.eval_dataloader, n)


class AdaptorContract:
    """Subclass it to run the contract (tests/test_adaptor_contract.py); narrow `backends` to run a few."""

    backends: tuple[Backend, ...] = BACKENDS

    @pytest.fixture(scope="class", params=[_param(b) for b in BACKENDS])
    def case(self, request: Any) -> Case:
        backend: Backend = request.param
        if backend not in self.backends:
            pytest.skip(f"{backend.name} is not in this contract's backends")
        from lpot_research.models.digits import DigitsCNN

        adaptor = backend.make()
        bundle = DigitsCNN().load(backend.framework or backend.name)
        model = adaptor.prepare(bundle.model, bundle.example_inputs)
        caps = adaptor.capabilities(model, STATIC, bundle.example_inputs)
        return Case(backend, adaptor, bundle, model, build_space(caps, STATIC, SAMPLING).model_wise_configs()[0])

    @pytest.fixture(scope="class")
    def fallback(self, case: Case) -> tuple[str, Any]:
        """(op, the model quantized with that op, a middle convolution, in FP32 and the others INT8)."""
        op = case.backend.ops[2]
        return op, case.quantize(case.int8.with_ops({op: OpChoice("fp32")}))

    # ------------------------------------------------------------------ capabilities and quantization
    def test_capabilities_cover_the_models_quantizable_ops(self, case: Case):
        caps = case.adaptor.capabilities(case.model, STATIC, case.bundle.example_inputs)
        assert tuple(c.name for c in caps) == case.backend.ops
        for c in caps:
            assert c.quantizable and "int8" in c.weight["dtype"] and "fp32" in c.fallback, c
        assert [n for n, _ in case.int8.ops] == list(case.backend.ops)
        assert all(choice.quantized for _, choice in case.int8.ops)

    def test_model_wise_int8_quantizes_every_op_and_keeps_accuracy(self, case: Case):
        before = case.adaptor.fingerprint(case.model)
        q = case.quantize(case.int8)
        assert case.backend.int8_ops(q) >= set(case.backend.ops)
        assert case.adaptor.fingerprint(case.model) == before  # the input model is left untouched
        fp32 = case.adaptor.evaluate(case.model, case.bundle.eval_dataloader, TopK(1))
        int8 = case.adaptor.evaluate(q, case.bundle.eval_dataloader, TopK(1))
        assert fp32 > 0.95 and abs(int8 - fp32) < 0.02

    def test_fallback_op_stays_fp32_and_the_others_are_int8(self, case: Case, fallback):
        op, q = fallback
        assert case.backend.int8_ops(q) & set(case.backend.ops) == set(case.backend.ops) - {op}
        x = case.inputs(32)
        ref, got = to_numpy(case.adaptor.predict(case.model, x)), to_numpy(case.adaptor.predict(q, x))
        assert got.shape == ref.shape == (32, 10)
        assert (got.argmax(1) == ref.argmax(1)).mean() > 0.9

    def test_a_fallback_the_quantizer_ignores_fails_the_trial_naming_the_op(self, case: Case, monkeypatch):
        """The base checks the quantized model itself: a back end that quantized a fallback op anyway
        (here: its quantizer is handed the all-INT8 config) fails instead of being scored."""
        adaptor = case.fresh()
        real = adaptor._quantize
        monkeypatch.setattr(adaptor, "_quantize", lambda model, config, *a: real(model, case.int8, *a))
        op = case.backend.ops[1]
        with pytest.raises(FallbackError, match=f"op {op!r} was to stay FP32"):
            case.quantize(case.int8.with_ops({op: OpChoice("fp32")}), adaptor)

    def test_bad_configs_fail_naming_what_is_wrong(self, case: Case):
        unknown = TuneConfig(STATIC, SAMPLING, (*case.int8.ops, ("no_such_op", OpChoice("fp32"))))
        with pytest.raises(ConfigError, match=r"op 'no_such_op' .*valid op names: .*" + case.backend.ops[-1]):
            case.quantize(unknown)
        approach = TuneConfig("post_training_imaginary_quant", SAMPLING, case.int8.ops)
        with pytest.raises(ConfigError, match="'post_training_imaginary_quant' is not supported.*valid choices"):
            case.quantize(approach)

    # ------------------------------------------------------------------ calibration
    def test_calibration_runs_once_per_key(self, case: Case):
        adaptor = case.fresh()
        case.quantize(case.int8, adaptor)
        assert adaptor.calibrations == 1
        for op in case.backend.ops[:2]:  # the same sampling size and algorithm: the cached statistics
            case.quantize(case.int8.with_ops({op: OpChoice("fp32")}), adaptor)
        case.quantize(case.int8, adaptor)
        assert adaptor.calibrations == 1
        case.quantize(TuneConfig(STATIC, 16, case.int8.ops), adaptor)  # another key: another pass
        assert adaptor.calibrations == 2

    # ------------------------------------------------------------------ saving, measuring, fingerprints
    def test_saved_model_reloads_with_the_framework_alone_and_matches(self, case: Case, fallback, tmp_path):
        _, q = fallback
        x = np.asarray(to_numpy(case.inputs(32)), dtype=np.float32)
        path = case.adaptor.save(q, tmp_path / "best_model", case.bundle.example_inputs)
        assert path.exists()
        np.save(tmp_path / "x.npy", x)
        code = (BLOCKED + f"PATH, X, Y = {str(path)!r}, {str(tmp_path / 'x.npy')!r}, {str(tmp_path / 'y.npy')!r}\n"
                + textwrap.dedent(RELOAD[case.backend.name]) + "np.save(Y, y)\n")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_OMP_MAX_THREADS": "1"}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), to_numpy(case.adaptor.predict(q, x)), rtol=0,
                                   atol=1e-5)

    def test_latency_size_and_a_warmed_up_footprint_are_positive(self, case: Case, fallback, monkeypatch):
        _, q = fallback
        x = case.inputs(32)
        assert case.adaptor.latency_ms(q, x, 1, 3) > 0
        assert 0 < case.adaptor.size_bytes(q)
        runs = []
        hook = case.adaptor._footprint_run

        @contextlib.contextmanager
        def counted(model: Any, inputs: Any):
            with hook(model, inputs) as load_and_run:
                yield lambda: (runs.append(1), load_and_run())[1]

        monkeypatch.setattr(case.adaptor, "_footprint_run", counted)
        first = case.adaptor.footprint_bytes(q, x)
        assert len(runs) == 2  # one warm-up run, then the measured one
        second = case.adaptor.footprint_bytes(q, x)
        assert first > 0 and second > 0
        assert max(first, second) < 10 * min(first, second), (first, second)  # warmed up: no one-time set-up

    def test_fingerprint_is_stable_and_follows_the_weights(self, case: Case):
        a = case.adaptor
        same, moved = case.backend.copy(a, case.bundle, 0.0), case.backend.copy(a, case.bundle, 0.01)
        assert a.fingerprint(case.model) == a.fingerprint(case.model) == a.fingerprint(same)
        assert a.fingerprint(moved) != a.fingerprint(case.model)
        assert case.fresh().fingerprint(same) == a.fingerprint(same)  # not this adaptor's state
