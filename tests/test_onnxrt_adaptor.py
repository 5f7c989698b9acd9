"""The real ONNX Runtime adaptor on the digits CNN exported from PyTorch."""


import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'lpot-research[onnxrt]')")
pytest.importorskip("torch", reason="the digits model is built with PyTorch (pip install 'lpot-research[pytorch]')")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from lpot_research.adaptors.onnxrt import OnnxRuntimeAdaptor  # noqa: E402
from lpot_research.measure.metrics import TopK  # noqa: E402
from lpot_research.quant.space import build_space  # noqa: E402

STATIC = "post_training_static_quant"
CONV0 = "/features/features.0/features.0.0/Conv"


@pytest.fixture(scope="module")
def bundle():
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN().load()


@pytest.fixture(scope="module")
def adaptor():
    return OnnxRuntimeAdaptor(threads=1)


@pytest.fixture(scope="module")
def model(adaptor, bundle):
    return adaptor.prepare(bundle.model, bundle.example_inputs)


def space(adaptor, model, approach=STATIC, **kw):
    return build_space(adaptor.capabilities(model, approach, None), approach, kw.pop("sampling_size", 64), **kw)


def ops_of(m):
    return [n.op_type for n in m.proto.graph.node]


def weight_scale(m, node_name):
    """The scale initializer of the DequantizeLinear feeding the node's weight input."""
    nodes = {n.name: n for n in m.proto.graph.node}
    producers = {o: n for n in m.proto.graph.node for o in n.output}
    dq = producers[nodes[node_name].input[1]]
    assert dq.op_type == "DequantizeLinear"
    inits = {i.name: i for i in m.proto.graph.initializer}
    return numpy_helper.to_array(inits[dq.input[1]])


def test_static_qdq_quantizes_and_shrinks_the_model(adaptor, bundle, model):
    cfg = space(adaptor, model).model_wise_configs()[0]
    q = adaptor.quantize(model, cfg, bundle.calib_dataloader, None)
    assert ops_of(q).count("QuantizeLinear") >= 6 and "DequantizeLinear" in ops_of(q)
    assert adaptor.size_bytes(q) < 0.5 * adaptor.size_bytes(model)


def test_reduce_range_follows_the_cpu(monkeypatch):
    from lpot_research.core import cpu

    assert OnnxRuntimeAdaptor()._reduce_range() is (not cpu.cpu_info().vnni)
    monkeypatch.setenv("LPOT_CPU_ISA", "avx2")
    cpu.cpu_info.cache_clear()
    try:
        assert OnnxRuntimeAdaptor()._reduce_range() is True
        assert "7-bit" in OnnxRuntimeAdaptor().cpu_notes()[0] and "no VNNI" in OnnxRuntimeAdaptor().cpu_notes()[0]
    finally:
        cpu.cpu_info.cache_clear()


def test_per_channel_and_per_tensor_weights_per_op(adaptor, bundle, model):
    s = space(adaptor, model)
    base = s.model_wise_configs()[0]  # per-channel weights
    per_tensor = next(o for o in s.op_options(CONV0) if o.quantized and o.weight.granularity == "per_tensor"
                      and o.activation == base.op(CONV0).activation)
    q = adaptor.quantize(model, base.with_ops({CONV0: per_tensor}), bundle.calib_dataloader, None)
    assert weight_scale(q, CONV0).shape == ()
    assert weight_scale(q, "/features/features.1/features.1.0/Conv").shape == (32,)


def test_qoperator_format(bundle, model):
    a = OnnxRuntimeAdaptor(quant_format="QOperator", threads=1)
    m = a.prepare(bundle.model, bundle.example_inputs)
    q = a.quantize(m, space(a, m).model_wise_configs()[0], bundle.calib_dataloader, None)
    assert "QLinearConv" in ops_of(q)
    assert a.evaluate(q, bundle.eval_dataloader, TopK(1)) > 0.95
    out = a.inspect(q, a.take_inputs(bundle.eval_dataloader, 4), [CONV0])[CONV0]
    assert out.dtype == np.float32 and out.shape == (4, 16, 32, 32)


def test_dynamic_quantization(adaptor, bundle, model):
    s = space(adaptor, model, approach="post_training_dynamic_quant")
    assert s.op_names == ["/fc/Gemm"]
    q = adaptor.quantize(model, s.model_wise_configs()[0], bundle.calib_dataloader, None)
    assert any(t in ops_of(q) for t in ("DynamicQuantizeLinear", "MatMulInteger"))
    assert adaptor.evaluate(q, bundle.eval_dataloader, TopK(1)) > 0.95


def test_calibration_runs_once_per_sampling_size_and_method(bundle, model):
    a = OnnxRuntimeAdaptor(threads=1)
    s = space(a, model, model_wise={"activation": {"algorithm": ["minmax", "kl", "mse"]}})
    mw = s.model_wise_configs()
    for cfg in mw:
        a.quantize(model, cfg, bundle.calib_dataloader, None)
    assert len(mw) == 12 and a.calibrations == 2  # (64, minmax) and (64, histograms: kl and mse share them)
    off = OnnxRuntimeAdaptor(threads=1, cache_calibration=False)
    for cfg in mw:
        off.quantize(model, cfg, bundle.calib_dataloader, None)
    assert off.calibrations == 12


def test_cached_calibration_matches_quantize_static(adaptor, bundle, model, tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from lpot_research.adaptors.onnxrt import _Reader

    cfg = space(adaptor, model, model_wise={"activation": {"algorithm": "minmax"}}).model_wise_configs()[0]
    ours = adaptor.quantize(model, cfg, bundle.calib_dataloader, None)
    src = tmp_path / "fp32.onnx"
    onnx.save(model.proto, str(src))
    quantize_static(str(src), str(tmp_path / "ref.onnx"), _Reader(model, bundle.calib_dataloader, 64),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, reduce_range=adaptor._reduce_range())
    ref = ort.InferenceSession(str(tmp_path / "ref.onnx"), providers=["CPUExecutionProvider"])
    # same graph and the same quantization parameters up to float rounding (ORT's override path
    # computes scales in another precision: ~1 ulp), hence outputs within one output step
    ref_nodes = onnx.load(str(tmp_path / "ref.onnx")).graph.node
    assert [n.op_type for n in ours.proto.graph.node] == [n.op_type for n in ref_nodes]
    x = adaptor.take_inputs(bundle.eval_dataloader, 64)
    a, b = adaptor.predict(ours, x), ref.run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, atol=0.05)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_inspect_op_outputs(adaptor, bundle, model):
    cfg = space(adaptor, model).model_wise_configs()[0]
    q = adaptor.quantize(model, cfg, bundle.calib_dataloader, None)
    x = adaptor.take_inputs(bundle.eval_dataloader, 8)
    ref = adaptor.inspect(model, x, [CONV0, "/fc/Gemm"])
    got = adaptor.inspect(q, x, [CONV0, "/fc/Gemm"])
    for name in (CONV0, "/fc/Gemm"):
        assert ref[name].shape == got[name].shape
        mse = float(np.mean((ref[name] - got[name]) ** 2))
        assert 0 < mse < 0.01 * float(np.mean(ref[name] ** 2))
    with pytest.raises(KeyError, match="no node named 'nope'"):
        adaptor.inspect(q, x, ["nope"])


def test_histogram_ranges_stay_inside_minmax_and_never_quantize_worse(bundle, model):
    from lpot_research.quant.calibration import quantization_mse

    a = OnnxRuntimeAdaptor(threads=1)
    mm = a._calibrated(model, bundle.calib_dataloader, 64, "minmax").data
    for algorithm in ("kl", "mse"):
        got = a._calibrated(model, bundle.calib_dataloader, 64, algorithm).data
        assert set(got) == set(mm)
        for t, r in got.items():
            lo, hi = float(mm[t].lowest), float(mm[t].highest)
            assert lo - 1e-6 <= float(r.lowest) <= float(r.highest) <= hi + 1e-6
            centers = (r.hist_edges[:-1] + r.hist_edges[1:]) / 2
            err = quantization_mse(r.hist, centers, float(r.lowest), float(r.highest))
            assert err <= quantization_mse(r.hist, centers, lo, hi) * (1 + 1e-9)
    assert a.calibrations == 2  # one MinMax pass, one histogram pass for both


def test_bad_format_is_named(bundle):
    from lpot_research.core.errors import ConfigError

    with pytest.raises(ConfigError, match="'QLinear'.*QDQ"):
        OnnxRuntimeAdaptor(quant_format="QLinear").prepare(bundle.model, bundle.example_inputs)


def test_api_exports_a_torch_model_without_example_inputs(bundle, tmp_path):
    """The API takes its example inputs from the calibration data (numpy here): export must still trace."""
    import lpot_research

    r = lpot_research.tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, TopK(1),
                           framework="onnxrt", exit_policy={"max_trials": 1}, output_dir=tmp_path)
    assert r.summary.trials == 1 and r.summary.best.accuracy > 0.95
