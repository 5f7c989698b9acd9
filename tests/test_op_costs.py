"""Per-op costs: profiled kernels mapped back to the tunable ops (known answers on a small graph), the
real ONNX Runtime profile of the digits CNN, and what a run does with them (report, history, resume)."""

import json

import pytest

from lpot_research.measure.op_costs import attribute, graph_of, per_op
from lpot_research.run.history import OP_COSTS, History

# conv0 -> bn -> relu -> conv1, conv2 (both read relu's output); relu + conv1 -> add -> gemm; node and tensor names
# overlap as paddle2onnx's do: conv1's output tensor is "conv1", conv2's is "p.Add", the add node's name
GRAPH = graph_of([
    ("conv0", ["x", "w0"], ["conv0_out"]),
    ("bn", ["conv0_out", "scale", "bias"], ["bn_out"]),
    ("relu", ["bn_out"], ["relu_out"]),
    ("conv1", ["relu_out", "w1"], ["conv1"]),
    ("conv2", ["relu_out", "w2"], ["p.Add"]),
    ("p.Add", ["relu_out", "conv1"], ["add_out"]),  # a residual add
    ("gemm", ["add_out", "wg"], ["y"]),
])
TUNABLE = frozenset({"conv0", "conv1", "conv2", "gemm"})


@pytest.mark.parametrize("kernel, owners", [
    ("conv0", ("conv0",)),  # a node keeps its name
    ("conv0_token_17", ("conv0",)),  # a rewrite of a node (QLinearConv from Q-DQ-Conv-Q)
    ("conv0_quant", ("conv0",)),  # QOperator format
    ("gemm/MatmulTransposeFusion/", ("gemm",)),  # a fusion named after the node
    ("bn_out_nchwc", ("conv0",)),  # conv+bn fused, named by bn's output: walks up to the conv
    ("add_out_nchwc", ("conv1",)),  # conv+add fused, named by the add's output: its tunable input, not its first
    ("x_QuantizeLinear", ("conv0",)),  # the conversion of an op's input into INT8 is the op's
    ("relu_out_QuantizeLinear", ("conv1", "conv2")),  # one quantize feeding two ops: shared
    ("conv1_DequantizeLinear", ("conv1",)),  # a tensor named as a node: the dequantize of conv1's output
    ("p.Add_DequantizeLinear", ("conv2",)),  # the dequantize of the tensor "p.Add", not the node
    ("p.Add_QuantizeLinear", ()),  # nothing tunable reads the tensor "p.Add": no owner
    ("relu", ()),  # an untunable node is the rest
    ("p.Add", ()),
    ("ReorderOutput_token_156", ()),  # a layout conversion
    ("y_nchwc", ("gemm",)),
])
def test_a_kernel_is_attributed_to_the_op_it_runs_for(kernel, owners):
    assert attribute(kernel, GRAPH, TUNABLE) == owners


def test_per_op_times_are_medians_over_runs_with_shared_kernels_split():
    runs = [{"conv0_token_1": 1.0, "relu_out_QuantizeLinear": 0.4, "relu": 0.5},
            {"conv0_token_1": 3.0, "relu_out_QuantizeLinear": 0.2, "relu": 0.7},
            {"conv0_token_1": 2.0, "relu": 0.6}]  # no quantize in run 3: it took no time there
    ops, rest = per_op(runs, GRAPH, TUNABLE)
    assert ops == {"conv0": 2.0, "conv1": pytest.approx(0.1), "conv2": pytest.approx(0.1)}
    assert rest == pytest.approx(0.6)


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("torch", reason="the digits model is built with PyTorch (pip install 'lpot-research[pytorch]')")
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN().load()


@pytest.fixture(scope="module")
def digits_onnx(digits):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'lpot-research[onnxrt]')")
    from lpot_research.adaptors.onnxrt import OnnxRuntimeAdaptor

    bundle = digits
    adaptor = OnnxRuntimeAdaptor(threads=1)
    return bundle, adaptor, adaptor.prepare(bundle.model, bundle.example_inputs)


def test_onnxruntime_profiles_every_op_in_fp32_and_in_int8(digits_onnx):
    from lpot_research.quant.space import build_space

    bundle, adaptor, model = digits_onnx
    approach = "post_training_static_quant"
    space = build_space(adaptor.capabilities(model, approach, None), approach, 64)
    q = adaptor.quantize(model, space.model_wise_configs()[0], bundle.calib_dataloader, None)
    inputs = adaptor.take_inputs(bundle.eval_dataloader, 8)
    costs = adaptor.op_costs(model, q, inputs, sorted(space.quantizable), 3)
    ops = set(space.quantizable)
    assert len(ops) == 6
    # every conv and the gemm found in both profiles, under the FP32 graph's names (the INT8 graph's
    # QLinearConv nodes, the FP32 one's fused NCHWc convs are named otherwise)
    assert set(costs.fp32_ms) == ops and set(costs.int8_ms) == ops
    assert all(v > 0 for v in [*costs.fp32_ms.values(), *costs.int8_ms.values()])
    # what is not a tunable op's is little: the convs and the gemm are the model's work
    assert costs.rest_ms[1] < 0.5 * sum(costs.int8_ms.values())
    assert costs.profiler == "onnxruntime session profiling" and costs.runs == 3


def test_a_run_keeps_its_op_costs_reports_them_beside_the_fallbacks_and_a_resume_reuses_them(digits_onnx, tmp_path):
    from lpot_research.api import tune
    from lpot_research.measure.metrics import TopK

    bundle, _, _ = digits_onnx
    fc = "/fc/Gemm"
    cfg = {"quantization": {"op_wise": {fc: {"activation": {"dtype": ["fp32"]}}}},
           "exit_policy": {"timeout": 0, "max_trials": 2}, "benchmark": {"warmup": 1, "iterations": 3}}
    res = tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, TopK(1), config=cfg,
               framework="onnxrt", output_dir=tmp_path, example_inputs=bundle.example_inputs)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert res.met_criterion and fc in s["best"]["fallback_ops"]
    costs = s["op_costs"]
    assert costs["profiler"] == "onnxruntime session profiling" and len(costs["ops"]) == 6
    assert costs["config_id"] == s["all_int8"]["config_id"]
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith(f"| `{fc}`"))
    f, i = costs["ops"][fc]["fp32_ms"], costs["ops"][fc]["int8_ms"]
    assert row == f"| `{fc}` | {f:.3f} | {i:.3f} | {f - i:+.3f} |"
    h = History.read(tmp_path)
    assert h.analysis_records[OP_COSTS] == 1
    tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, TopK(1),
         config={**cfg, "exit_policy": {"timeout": 0, "max_trials": 3}}, framework="onnxrt", output_dir=tmp_path,
         example_inputs=bundle.example_inputs, resume=True)
    assert History.read(tmp_path).analysis_records[OP_COSTS] == 1  # profiled once per run


@pytest.mark.parametrize("name, kind", [
    ("onednn::qconv_pointwise", "conv"), ("onednn::qconv2d_pointwise.binary", "conv"),
    ("mkldnn::_convolution_pointwise", "conv"), ("aten::conv2d", "conv"),
    ("onednn::qlinear_pointwise.tensor", "linear"), ("mkl::_mkl_linear", "linear"), ("aten::addmm", "linear"),
    ("mkldnn::_linear_pointwise", "linear"),
    ("graph_0_cpp_fused_addmm_mean_view_1", None),  # Inductor's fused elementwise kernel, named after its ops
    ("graph_1_cpp_fused_quantize_per_tensor_0", None), ("aten::bmm", None), ("aten::empty", None),
    ("## Call CompiledFxGraph None ##", None),
])
def test_the_extern_conv_and_linear_kernels_are_told_from_the_rest(name, kind):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
    from lpot_research.adaptors.pytorch_export import kernel_kind

    assert kernel_kind(name) == kind


def fp32_and_all_int8(adaptor, bundle):
    """The prepared FP32 model, the first model-wise (all-INT8) config's model, 8 inputs, the space."""
    from lpot_research.quant.space import build_space

    model = adaptor.prepare(bundle.model, bundle.example_inputs)
    approach = "post_training_static_quant"
    space = build_space(adaptor.capabilities(model, approach, None), approach, 64)
    q = adaptor.quantize(model, space.model_wise_configs()[0], bundle.calib_dataloader, bundle.example_inputs)
    return model, q, adaptor.take_inputs(bundle.eval_dataloader, 8), space


def test_torch_profiler_finds_every_conv_and_linear_of_the_compiled_models(digits):
    from lpot_research.adaptors.pytorch_export import PyTorchExportAdaptor

    adaptor = PyTorchExportAdaptor(threads=1)
    model, q, inputs, space = fp32_and_all_int8(adaptor, digits)
    costs = adaptor.op_costs(model, q, inputs, sorted(space.quantizable), 3)
    # five convs and the fc, each one extern kernel per run in graph order: all matched, none left over
    assert costs.notes == []
    assert set(costs.fp32_ms) == set(costs.int8_ms) == set(space.quantizable) and len(costs.int8_ms) == 6
    assert all(v > 0 for v in [*costs.fp32_ms.values(), *costs.int8_ms.values()])
    assert costs.rest_ms[1] < sum(costs.int8_ms.values())


def test_kernels_are_matched_per_run_by_kind_and_order_and_a_count_that_differs_is_said():
    """torch.profiler on an eager two-conv model (aten::conv2d and its own sub-calls: counted once)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
    from lpot_research.adaptors.pytorch_export import profile_compiled

    small, big = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 64, 7, padding=3)
    x = torch.randn(2, 3, 32, 32)

    def run():
        with torch.no_grad():
            return big(small(x))

    notes: list[str] = []
    ops, rest = profile_compiled(run, 3, {"conv": ["small", "big"], "linear": []}, "FP32", notes)
    assert notes == [] and set(ops) == {"small", "big"}
    # in order, not swapped: 64 7x7 filters take ~1000x the arithmetic of 4 1x1 ones
    assert ops["big"] > ops["small"] > 0 and rest >= 0
    ops, _ = profile_compiled(run, 3, {"conv": ["only"], "linear": ["fc"]}, "INT8", notes)
    assert ops == {}
    assert notes == ["INT8: 2 conv kernel(s) per run for 1 conv call(s) in the graph: not attributed",
                     "INT8: 0 linear kernel(s) per run for 1 linear call(s) in the graph: not attributed"]


def test_the_fx_back_end_times_each_conv_and_linear_module_in_both_models(digits):
    """torch.profiler ranges around each quantizable module (hooks): every op found in the FP32 model and
    in the converted one (fused conv+relu modules keep the conv's name), each module's range once per run."""
    import torch

    from lpot_research.adaptors.pytorch import PyTorchAdaptor

    bundle = digits
    adaptor = PyTorchAdaptor(threads=1)
    model, q, inputs, space = fp32_and_all_int8(adaptor, bundle)
    costs = adaptor.op_costs(model, q, inputs, sorted(space.quantizable), 3)
    assert costs.profiler == adaptor.profiler and costs.notes == []
    assert set(costs.fp32_ms) == set(costs.int8_ms) == set(space.quantizable) and len(costs.int8_ms) == 6
    assert all(v > 0 for v in [*costs.fp32_ms.values(), *costs.int8_ms.values()])
    assert costs.rest_ms[0] >= 0 and costs.rest_ms[1] >= 0
    # the hooks are gone afterwards: the models run as before, without ranges
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in (*model.modules(), *q.modules()))
    scripted = torch.jit.trace(model, bundle.example_inputs if isinstance(bundle.example_inputs, torch.Tensor)
                               else tuple(bundle.example_inputs))
    with pytest.raises(NotImplementedError, match="TorchScript model takes no forward hooks"):
        adaptor.op_costs(scripted, q, inputs, sorted(space.quantizable), 3)


def test_mxnet_events_line_up_with_the_graph_nodes_per_run():
    from lpot_research.adaptors.mxnet_profile import node_runs

    def ev(name, ph, ts):
        return {"cat": "operator", "name": name, "ph": ph, "ts": ts, "tid": 1}

    ops = ["_sg_mkldnn_conv", "Pooling", "_sg_mkldnn_fully_connected"]
    events = [{"cat": "operator", "name": "WaitForVar", "ph": "B", "ts": 0}]  # not a node: ignored
    t = 10.0
    for run in range(2):
        for name, us in zip(ops, (300.0 + run, 20.0, 50.0), strict=True):
            events += [ev(name, "B", t), ev(name, "E", t + us)]
            t += us + 5
    assert node_runs(events, ops, 2) == [[0.3, 0.02, 0.05], [0.301, 0.02, 0.05]]
    with pytest.raises(ValueError, match="5 operator events for 2 runs of 3 nodes"):
        node_runs(events[:-2], ops, 2)
    with pytest.raises(ValueError, match="run 0: event 0 is _sg_mkldnn_conv, the node there is Pooling"):
        node_runs(events, ["Pooling", "_sg_mkldnn_conv", "_sg_mkldnn_fully_connected"], 2)


def test_mxnet_profiler_times_each_op_of_both_models_in_a_process_of_its_own():
    """MXNet's profiler with bulking off, in a subprocess: each conv and the fc is one event per run in both
    models; the INT8 graph's quantize node is its first conv's, its quantized pooling is the rest."""
    mxnet_adaptor = pytest.importorskip("lpot_research.adaptors.mxnet",
                                        reason="MXNet is not installed (pip install 'lpot-research[mxnet]')")
    MXNetAdaptor, _owners = mxnet_adaptor.MXNetAdaptor, mxnet_adaptor._owners  # noqa: N806
    from lpot_research.models.digits import DigitsCNN

    adaptor = MXNetAdaptor(threads=1)
    model, q, inputs, space = fp32_and_all_int8(adaptor, DigitsCNN().load("mxnet"))
    ops = sorted(space.quantizable)
    owners = _owners(json.loads(q.symbol.tojson()), frozenset(ops))
    kinds = [n["op"] for n in json.loads(q.symbol.tojson())["nodes"] if n["op"] != "null"]
    assert owners[kinds.index("_contrib_quantize_v2")] == ("features0_conv_fwd",)
    assert owners[kinds.index("_contrib_quantized_pooling")] == ()
    costs = adaptor.op_costs(model, q, inputs, ops, 3)
    assert costs.profiler == adaptor.profiler and costs.notes == []
    assert set(costs.fp32_ms) == set(costs.int8_ms) == set(ops) and len(ops) == 6
    assert all(v > 0 for v in [*costs.fp32_ms.values(), *costs.int8_ms.values()])
    assert costs.rest_ms[1] > 0  # the quantized pooling
