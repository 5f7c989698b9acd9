"""The real MXNet adaptor (mxnet.contrib.quantization on oneDNN) on the Gluon digits_cnn."""

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the digits model is trained with PyTorch (pip install 'lpot-research[pytorch]')")
mxnet_adaptor = pytest.importorskip("lpot_research.adaptors.mxnet",
                                    reason="MXNet is not installed (pip install 'lpot-research[mxnet]')")
mx = mxnet_adaptor.import_mxnet(threads=1)  # one OpenMP thread: MXNet fixes it at this first import

from lpot_research.core.cpu import cpu_info  # noqa: E402
from lpot_research.measure.metrics import TopK  # noqa: E402
from lpot_research.quant.space import OpChoice, TuneConfig, build_space  # noqa: E402

MXNetAdaptor = mxnet_adaptor.MXNetAdaptor
STATIC = "post_training_static_quant"
OPS = [f"features{i}_conv_fwd" for i in range(5)] + ["fc_fwd"]
CPU = cpu_info()


@pytest.fixture(scope="module")
def digits():
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN()


@pytest.fixture(scope="module")
def bundle(digits):
    return digits.load(framework="mxnet")


@pytest.fixture(scope="module")
def adaptor():
    return MXNetAdaptor(threads=1)


@pytest.fixture(scope="module")
def model(adaptor, bundle):
    return adaptor.prepare(bundle.model, bundle.example_inputs)


@pytest.fixture(scope="module")
def int8_config(adaptor, model):
    """The recommended model-wise configuration: every op INT8, per-channel weights, minmax."""
    return space(adaptor, model).model_wise_configs()[0]


@pytest.fixture(scope="module")
def int8(adaptor, model, bundle, int8_config):
    return adaptor.quantize(model, int8_config, bundle.calib_dataloader, None)


def space(adaptor, model, **kw):
    return build_space(adaptor.capabilities(model, STATIC, None), STATIC, kw.pop("sampling_size", 64), **kw)


def nodes_of(m):
    return json.loads(m.symbol.tojson())["nodes"]


def holder(nodes, op_name):
    """(index, node) of the graph node that is, or holds in its fused subgraph, the op named op_name."""
    for i, n in enumerate(nodes):
        inner = [s["name"] for g in n.get("subgraphs", []) for s in g["nodes"]]
        if n["name"] in (op_name, f"quantized_{op_name}") or op_name in inner:
            return i, n
    raise AssertionError(f"{op_name} is not in the graph")


def is_quantized(node):
    return node["op"].startswith("_contrib_quantized") or str(node.get("attrs", {}).get("quantized")).lower() == "true"


def test_gluon_counterpart_matches_pytorch(digits, bundle):
    import torch

    x = bundle.example_inputs
    ref = digits.trained()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(bundle.model(mx.nd.array(x)).asnumpy(), ref, atol=2e-5, rtol=1e-5)


def test_capabilities_offer_mxnets_choices(adaptor, model):
    caps = adaptor.capabilities(model, STATIC, None)
    assert [c.type for c in caps] == ["Convolution"] * 5 + ["FullyConnected"]
    assert all(c.fallback == ("fp32",) and c.activation["algorithm"] == ("minmax", "kl") for c in caps)
    # convolution weights are always per channel in MXNet's fused INT8 conv; FullyConnected has both
    assert caps[0].weight["granularity"] == ("per_channel",)
    assert caps[-1].weight["granularity"] == ("per_channel", "per_tensor")


def test_no_dynamic_quantization(adaptor, model):
    with pytest.raises(ValueError, match="post_training_static_quant"):
        adaptor.capabilities(model, "post_training_dynamic_quant", None)


def test_int8_graph_runs_fused_onednn_int8_ops(adaptor, bundle, model, int8):
    quantized = [n for n in nodes_of(int8) if is_quantized(n)]
    assert {n["op"] for n in quantized} >= {"_sg_mkldnn_conv", "_sg_mkldnn_fully_connected"}
    assert any(n["op"] == "_contrib_quantize_v2" for n in nodes_of(int8))
    assert not any(is_quantized(n) for n in nodes_of(model))  # the FP32 baseline is the fused FP32 graph


def test_excluded_op_is_a_float_convolution_between_dequantize_and_quantize(adaptor, bundle, model, int8_config):
    q = adaptor.quantize(model, int8_config.with_ops({"features2_conv_fwd": OpChoice("fp32")}),
                         bundle.calib_dataloader, None)
    nodes = nodes_of(q)
    i, node = holder(nodes, "features2_conv_fwd")
    assert node["op"] in ("Convolution", "_sg_mkldnn_conv") and not is_quantized(node)
    inner = {s["name"]: s["op"] for g in node.get("subgraphs", []) for s in g["nodes"]}
    assert inner.get("features2_conv_fwd", node["op"]) == "Convolution"
    producer = nodes[node["inputs"][0][0]]
    assert producer["op"] == "_contrib_dequantize"  # FP32 data in
    assert any(n["op"] == "_contrib_quantize_v2" and n["inputs"][0][0] == i for n in nodes)  # INT8 again after


def two_dense_layers():
    from mxnet.gluon import nn

    mlp = nn.HybridSequential(prefix="mlp_")
    with mlp.name_scope():
        mlp.add(nn.Dense(16, activation="relu", in_units=8), nn.Dense(4, in_units=16))
    mx.random.seed(0)
    mlp.initialize()
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    return mlp, x


def test_mixed_fully_connected_granularity_is_a_config_error():
    mlp, x = two_dense_layers()
    a = MXNetAdaptor(threads=1)
    m = a.prepare(mlp, x)
    s = space(a, m, model_wise={"activation": {"algorithm": "minmax"}})
    per_channel, per_tensor = s.model_wise_configs()
    first = s.op_names[0]
    mixed = per_channel.with_ops({first: per_tensor.op(first)})
    with pytest.raises(ValueError, match="FullyConnected.*model-wide"):
        a.quantize(m, mixed, [(x, None)], None)
    for cfg in (per_tensor, per_channel):  # consistent: both build, with the granularity asked for
        q = a.quantize(m, cfg, [(x, None)], None)
        assert a.predict(q, x).shape == (64, 4)


@pytest.mark.skipif(not CPU.vnni, reason="oneDNN's INT8 FullyConnected without VNNI saturates on signed inputs "
                    f"(16-bit pair sums); this CPU: {CPU.describe()}")
def test_int8_dense_layers_stay_close_to_fp32_with_vnni():
    mlp, x = two_dense_layers()
    a = MXNetAdaptor(threads=1)
    m = a.prepare(mlp, x)
    for cfg in space(a, m, model_wise={"activation": {"algorithm": "minmax"}}).model_wise_configs():
        q = a.quantize(m, cfg, [(x, None)], None)
        assert np.abs(a.predict(q, x) - a.predict(m, x)).max() < 0.05 * np.abs(a.predict(m, x)).max()


def test_inspect_reads_op_outputs_close_to_fp32(adaptor, bundle, model, int8_config):
    only_last = int8_config.with_ops({n: OpChoice("fp32") for n in OPS if n != "features4_conv_fwd"})
    reference = adaptor.quantize(model, int8_config.with_ops({n: OpChoice("fp32") for n in OPS}),
                                 bundle.calib_dataloader, None)
    q = adaptor.quantize(model, only_last, bundle.calib_dataloader, None)
    x = adaptor.take_inputs(bundle.calib_dataloader, 16)
    names = ["features0_conv_fwd", "features4_conv_fwd", "fc_fwd"]
    ref, got = adaptor.inspect(reference, x, names), adaptor.inspect(q, x, names)
    assert ref["features4_conv_fwd"].shape == got["features4_conv_fwd"].shape == (16, 64, 8, 8)
    assert got["fc_fwd"].shape == (16, 10) and got["features4_conv_fwd"].dtype == np.float32
    np.testing.assert_allclose(got["features0_conv_fwd"], ref["features0_conv_fwd"], atol=1e-5)  # FP32 in both
    a, b = ref["features4_conv_fwd"], got["features4_conv_fwd"]
    nmse = np.mean((a - b) ** 2) / np.mean(a**2)
    assert 0 < nmse < 1e-2  # dequantized INT8, close to FP32 but not equal
    with pytest.raises(KeyError, match="features0_conv_fwd"):
        adaptor.inspect(q, x, ["nope"])


def test_calibration_respects_sampling_size_and_is_cached(bundle, model, int8_config):
    a = MXNetAdaptor(threads=1)
    cfg = TuneConfig(STATIC, 40, int8_config.ops)
    a.quantize(model, cfg, bundle.calib_dataloader, None)  # batches of 32: 32 + 8
    assert (a.calibrations, a.calibration_samples) == (1, 40)
    a.quantize(model, cfg.with_ops({"fc_fwd": OpChoice("fp32")}), bundle.calib_dataloader, None)
    assert a.calibrations == 1  # the fallback's new tensors were calibrated in the first pass
    a.quantize(model, TuneConfig(STATIC, 7, int8_config.ops), bundle.calib_dataloader, None)
    assert (a.calibrations, a.calibration_samples) == (2, 7)


def test_kl_calibration_applies_per_op(bundle, model, int8_config):
    """kl on the first conv only: its input (the image) gets MXNet's entropy threshold, symmetric
    about 0, while the tensors of the other ops keep their min/max ranges."""
    a = MXNetAdaptor(threads=1)
    first = int8_config.op("features0_conv_fwd")
    kl = OpChoice("int8", first.weight, type(first.activation)(**{**first.activation.to_dict(), "algorithm": "kl"}))
    q = a.quantize(model, int8_config.with_ops({"features0_conv_fwd": kl}), bundle.calib_dataloader, None)
    data_q = next(n for n in nodes_of(q) if n["op"] == "_contrib_quantize_v2")["attrs"]
    lo, hi = float(data_q["min_calib_range"]), float(data_q["max_calib_range"])
    assert lo == -hi and hi < 1.75  # minmax would be (-0.75, 1.75): (min, max) of the normalized pixels
    assert a.evaluate(q, bundle.eval_dataloader, TopK(1)) > 0.95


def test_saved_fp32_checkpoint_can_be_tuned_again(adaptor, bundle, model, int8, int8_config, tmp_path):
    x = adaptor.take_inputs(bundle.eval_dataloader, 8)
    reloaded = adaptor.prepare(str(adaptor.save(model, tmp_path / "fp32", x)), x)
    np.testing.assert_allclose(adaptor.predict(reloaded, x), adaptor.predict(model, x), atol=1e-5)
    assert [c.name for c in adaptor.capabilities(reloaded, STATIC, x)] == OPS
    q = adaptor.quantize(reloaded, int8_config, bundle.calib_dataloader, None)
    assert all(is_quantized(holder(nodes_of(q), op)[1]) for op in OPS)
    with pytest.raises(ValueError, match="already quantized"):
        adaptor.prepare(str(adaptor.save(int8, tmp_path / "int8", x)), x)


def test_measures_size_and_footprint(adaptor, bundle, model, int8):
    x = adaptor.take_inputs(bundle.eval_dataloader, 4)
    assert adaptor.size_bytes(model) > 250_000 and adaptor.size_bytes(int8) > 250_000  # FP32 conv weights stay
    small = adaptor.footprint_bytes(int8, x)
    assert small > 0
    # A batch this large has buffers the allocator maps afresh on every run, so its footprint shows whatever
    # earlier runs left behind (512 samples read ~10 MB once, then ~1 MB, as small as 4 do); it holds its input.
    big = np.concatenate([adaptor.take_inputs(bundle.eval_dataloader, 512)] * 8)
    assert adaptor.footprint_bytes(int8, big) > max(big.nbytes, small)


def test_tune_end_to_end(bundle, tmp_path):
    from lpot_research.api import tune

    result = tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, bundle.metric,
                  framework=MXNetAdaptor(threads=1), strategy="basic", exit_policy={"max_trials": 3},
                  output_dir=tmp_path / "run", example_inputs=bundle.example_inputs, model_name="digits_cnn",
                  config={"threads": 1, "benchmark": {"warmup": 1, "iterations": 3}})
    assert result.met_criterion
    assert is_quantized(holder(nodes_of(result.model), "features1_conv_fwd")[1])
    assert (tmp_path / "run" / "best_model-symbol.json").exists()
