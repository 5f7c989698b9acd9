"""The recipes that keep ops INT8 (SmoothQuant, cross-layer equalization, bias correction): their arithmetic
against answers worked by hand, their place in the tuning space, and each one on tiny ONNX models quantized
by ONNX Runtime for real (the PyTorch export back end's are in tests/test_pytorch_export.py)."""

import numpy as np
import pytest

from lpot_research.core.errors import ConfigError
from lpot_research.quant.recipes import ChannelStats, bias_shift, equalization_scales, smoothing_scales
from lpot_research.quant.space import RECIPES, OpCapability, TuneConfig, build_space, recipe_dimensions

STATIC = "post_training_static_quant"


# ---------------------------------------------------------------- the arithmetic, worked by hand
def test_smoothing_scales_balance_activation_and_weight_ranges():
    act, w = np.array([100.0, 1.0, 4.0]), np.array([1.0, 4.0, 4.0])
    s = smoothing_scales(act, w, 0.5)
    np.testing.assert_allclose(s, [10.0, 0.5, 1.0])
    np.testing.assert_allclose(act / s, w * s)  # alpha 0.5: both become sqrt(act * w) = 10, 2, 4
    np.testing.assert_allclose(smoothing_scales(act, w, 1.0), act)  # alpha 1: every activation range becomes 1
    np.testing.assert_allclose(act / smoothing_scales(act, w, 1.0), 1.0)


def test_equalization_scales_make_both_ranges_the_geometric_mean():
    r1, r2 = np.array([8.0, 0.5, 0.0]), np.array([2.0, 2.0, 3.0])
    s = equalization_scales(r1, r2)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0])  # a dead channel (range 0) keeps s = 1
    np.testing.assert_allclose((r1 / s)[:2], (r2 * s)[:2])
    np.testing.assert_allclose((r1 / s)[:2], np.sqrt(r1 * r2)[:2])


def test_bias_shift_of_a_linear_and_of_a_depthwise_conv():
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    wq = w - np.array([[0.1, 0.0], [0.0, -0.2]])
    np.testing.assert_allclose(bias_shift(w, wq, np.array([10.0, 5.0])), [1.0, -1.0])
    # a depthwise conv (2 channels, 2x2 kernels): each output channel sees only its own input channel's mean
    wd = np.ones((2, 1, 2, 2))
    wdq = wd - np.stack([np.full((1, 2, 2), 0.1), np.full((1, 2, 2), -0.05)])
    np.testing.assert_allclose(bias_shift(wd, wdq, np.array([3.0, 2.0]), groups=2), [4 * 0.1 * 3, 4 * -0.05 * 2])


def test_channel_stats_accumulate_over_batches():
    st = ChannelStats()
    st.update(np.array([[1.0, -5.0], [3.0, 1.0]]), axis=1)
    st.update(np.array([[-7.0, 2.0]]), axis=1)
    np.testing.assert_allclose(st.absmax, [7.0, 5.0])
    np.testing.assert_allclose(st.mean, [-1.0, -2.0 / 3])


# ---------------------------------------------------------------- recipes in the tuning space
def _caps(n=2):
    w = {"dtype": ("int8",), "scheme": ("sym",), "granularity": ("per_channel",), "algorithm": ("minmax",)}
    a = {"dtype": ("uint8",), "scheme": ("asym",), "granularity": ("per_tensor",), "algorithm": ("minmax",)}
    return [OpCapability(f"op{i}", "MatMul", w, a, ("fp32",)) for i in range(n)]


def test_recipes_are_dimensions_of_the_space_and_of_the_config_id():
    dims = recipe_dimensions({"smooth_quant": [0.5, 0.75], "bias_correction": True, "cle": False}, RECIPES, "x",
                             STATIC)
    assert dims == (("smooth_quant", (None, 0.5, 0.75)), ("bias_correction", (False, True)))
    plain = build_space(_caps(), STATIC, 100)
    space = build_space(_caps(), STATIC, 100, recipes=dims)
    assert space.radices == [1, 3, 2, 2, 2] and space.size == 6 * plain.size
    assert space.global_dimensions == ["sampling_size", "smooth_quant", "bias_correction"]
    # every point round-trips through its index and its dict (the history's form), recipes included
    seen = set()
    for flat in range(space.size):
        cfg = space.config_at_flat(flat)
        assert space.config_at(space.index_of(cfg)) == cfg
        back = space.canonical(TuneConfig.from_dict(cfg.to_dict()))
        assert back == cfg and back.id == cfg.id
        seen.add(cfg.id)
    assert len(seen) == space.size
    # a configuration with no recipe has the id it had before recipes existed (old run dirs resume)
    first = space.model_wise_configs()[0]
    assert first.recipes == () and "recipes" not in first.to_dict() and first.id == plain.model_wise_configs()[0].id
    smoothed = first.with_recipes({"smooth_quant": 0.75, "bias_correction": True})
    assert smoothed.to_dict()["recipes"] == {"smooth_quant": 0.75, "bias_correction": True}
    assert smoothed.id != first.id and smoothed.describe_recipes() == "smooth_quant 0.75, bias_correction"
    assert smoothed.with_ops({"op0": first.op("op0")}).recipes == smoothed.recipes  # fallbacks keep the recipes
    assert smoothed.with_recipes({"smooth_quant": None}).recipes == (("bias_correction", True),)
    assert "recipes none->smooth_quant 0.75, bias_correction" in smoothed.diff(first)
    # a value the space does not tune is not one of its points
    assert not space.contains(first.with_recipes({"smooth_quant": 0.3}))
    assert not plain.contains(smoothed)


@pytest.mark.parametrize("recipes, message", [
    ({"smoothquant": [0.5]}, r"quantization.recipes.smoothquant is unknown; valid choices: \['cle', 'smooth_quant', "
                             r"'bias_correction'\]"),
    ({"smooth_quant": [0.5, 1.5]}, r"smooth_quant=\[0.5, 1.5\]: each alpha .* in \(0, 1\]"),
    ({"smooth_quant": True}, r"smooth_quant=True: each alpha"),
    ({"cle": "yes"}, r"quantization.recipes.cle='yes' must be true"),
])
def test_a_bad_recipe_value_is_one_clear_error(recipes, message):
    with pytest.raises(ConfigError, match=message):
        recipe_dimensions(recipes, RECIPES, "x", STATIC)


def test_recipes_are_checked_against_the_framework_and_the_approach():
    with pytest.raises(ConfigError, match=r"recipes.cle is not available with framework=tensorflow; valid choices "
                                          r"there: none"):
        recipe_dimensions({"cle": True}, (), "tensorflow", STATIC)
    with pytest.raises(ConfigError, match="post-training quantization, not quant_aware_training"):
        recipe_dimensions({"bias_correction": True}, RECIPES, "x", "quant_aware_training")
    assert recipe_dimensions({"smooth_quant": [], "cle": False}, (), "tensorflow", STATIC) == ()  # all off: fine


def test_the_settings_check_recipe_values_before_any_model_loads():
    from lpot_research.config import Recipes

    with pytest.raises(ConfigError, match=r"smooth_quant=0: each alpha"):
        Recipes(smooth_quant=0)
    assert Recipes(smooth_quant=[0.5]).smooth_quant == [0.5]


# ---------------------------------------------------------------- ONNX Runtime, for real
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'lpot-research[onnxrt]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lpot_research.adaptors import onnx_recipes  # noqa: E402
from lpot_research.adaptors.onnxrt import OnnxRuntimeAdaptor, make_session  # noqa: E402


def _model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(proto, x):
    return make_session(proto.SerializeToString(), 1).run(None, {"x": x.astype(np.float32)})


def _stats(proto, batches):
    return onnx_recipes.collect_stats(proto, ({"x": b.astype(np.float32)} for b in batches),
                                      lambda blob: make_session(blob, 1))


def _int8(adaptor, proto, loader, recipes=None, **model_wise):
    model = adaptor.prepare(proto, None)
    caps = adaptor.capabilities(model, STATIC, None)
    space = build_space(caps, STATIC, 64, model_wise={"weight": model_wise} if model_wise else None)
    cfg = space.model_wise_configs()[0]
    cfg = cfg.with_recipes(recipes) if recipes else cfg
    return adaptor.quantize(model, cfg, loader, None)


def _outliers(rng, n, channels, big=(0,), scale=60.0):
    x = rng.normal(size=(n, channels))
    x[:, list(big)] *= scale
    return x


def test_onnx_smooth_quant_keeps_fp32_outputs_balances_ranges_and_folds_into_layer_norm():
    rng = np.random.default_rng(0)
    ln_scale, ln_bias = rng.uniform(0.5, 2, 8), rng.normal(size=8)
    ln_scale[3] = 40.0  # one LayerNorm channel carries the outliers, as in transformers
    inits = {"g": ln_scale, "b": ln_bias, "w1": rng.normal(size=(8, 4)), "w2": rng.normal(size=(8, 3)),
             "w3": rng.normal(size=(4, 2))}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["t"], name="ln", axis=-1),
             helper.make_node("MatMul", ["t", "w1"], ["y1"], name="mm1"),
             helper.make_node("MatMul", ["t", "w2"], ["y2"], name="mm2"),
             helper.make_node("Relu", ["y1"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w3"], ["y3"], name="mm3")]
    proto = _model(nodes, inits, [("x", ["n", 8])], ["y2", "y3"])
    batches = [rng.normal(size=(16, 8)) for _ in range(4)]
    stats = _stats(proto, batches)
    smoothed, n = onnx_recipes.smooth(proto, stats, 0.5)
    assert n == 3
    x = rng.normal(size=(32, 8))
    for before, after in zip(_run(proto, x), _run(smoothed, x), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    ops = [nd.op_type for nd in smoothed.graph.node]
    # mm1 and mm2 share LayerNorm's output: 1/s went into its scale and bias (no Mul); mm3 reads a Relu: a Mul
    assert ops.count("Mul") == 1 and [nd.name for nd in smoothed.graph.node if nd.op_type == "Mul"] == ["r_smooth"]
    # alpha 0.5: each input channel's activation range equals the largest weight row range of the group
    after = _stats(smoothed, batches)
    inits_after = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    w_rows = np.maximum(np.abs(inits_after["w1"]).max(1), np.abs(inits_after["w2"]).max(1))
    np.testing.assert_allclose(after["mm1"].absmax, w_rows, rtol=1e-4)
    np.testing.assert_allclose(after["mm3"].absmax, np.abs(inits_after["w3"]).max(1), rtol=1e-4)


def test_onnx_smooth_quant_cuts_the_int8_error_of_outlier_activations():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 8))
    w[0] *= 0.1  # the outlier channel's weights are small: its outliers do not dominate the (quantized) output
    proto = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w}, [("x", ["n", 16])], ["y"])
    loader = [(_outliers(rng, 32, 16).astype(np.float32), None) for _ in range(2)]
    x = _outliers(rng, 64, 16)
    fp32 = x @ w
    adaptor = OnnxRuntimeAdaptor(threads=1)
    errors = {}
    for alpha in (None, 0.5):
        q = _int8(adaptor, proto, loader, {"smooth_quant": alpha} if alpha else None)
        assert "QuantizeLinear" in [nd.op_type for nd in q.proto.graph.node]  # really INT8
        errors[alpha] = np.abs(q.run(x) - fp32).mean()
    # channel 0 (60x) sets the per-tensor activation scale: the 15 others keep ~2 bits without smoothing
    # (measured: 0.93 mean error without, 0.21 with alpha 0.5)
    assert errors[0.5] < 0.3 * errors[None], errors


def _conv_pair(rng, second_groups, balanced_output=False, pool=False):
    spread = np.array([0.02, 0.1, 1.0, 5.0, 20.0, 0.5])
    w1 = rng.normal(size=(6, 4, 1, 1)) * spread.reshape(6, 1, 1, 1)  # ranges 1000x apart
    w2 = rng.normal(size=(6, 1, 3, 3)) if second_groups == 6 else rng.normal(size=(5, 6, 1, 1))
    if balanced_output:  # the depthwise conv undoes the spread (as a BN folded into it would): outputs alike
        w2 /= spread.reshape(6, 1, 1, 1)
    inits = {"w1": w1, "b1": rng.normal(size=6) * 0.1, "w2": w2}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", group=second_groups,
                              pads=[1, 1, 1, 1] if second_groups == 6 else [0, 0, 0, 0])]
    if pool:  # Relu -> MaxPool between the two
        nodes.insert(2, helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
        nodes[3].input[0] = "p"
    return _model(nodes, inits, [("x", ["n", 4, 8, 8])], ["y"])


@pytest.mark.parametrize("groups, pool", [(6, False), (1, False), (1, True)],
                         ids=["pointwise-depthwise", "pointwise-pointwise", "pointwise-maxpool-pointwise"])
def test_onnx_cle_keeps_fp32_outputs_and_equalizes_each_channel_pair(groups, pool):
    rng = np.random.default_rng(2)
    proto = _conv_pair(rng, groups, pool=pool)
    out, pairs = onnx_recipes.equalize(proto)
    assert pairs == [("conv1", "conv2")]
    x = rng.normal(size=(2, 4, 8, 8))
    np.testing.assert_allclose(_run(out, x)[0], _run(proto, x)[0], rtol=1e-4, atol=1e-5)
    w = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    r1 = np.abs(w["w1"].reshape(6, -1)).max(1)
    r2 = np.abs(w["w2"].reshape(6, -1)).max(1) if groups == 6 else np.abs(np.moveaxis(w["w2"], 1, 0)
                                                                          .reshape(6, -1)).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def test_onnx_cle_leaves_pairs_it_cannot_keep_exact():
    rng = np.random.default_rng(3)
    proto = _conv_pair(rng, 6)
    proto.graph.node[1].op_type = "HardSigmoid"  # not f(x / s) = f(x) / s: the pair is left as it is
    out, pairs = onnx_recipes.equalize(proto)
    assert pairs == [] and out.graph.initializer[0].raw_data == proto.graph.initializer[0].raw_data


def test_onnx_cle_cuts_the_int8_error_with_per_tensor_weights():
    rng = np.random.default_rng(4)
    proto = _conv_pair(rng, 6, balanced_output=True)
    loader = [(rng.normal(size=(8, 4, 8, 8)).astype(np.float32), None) for _ in range(2)]
    x = rng.normal(size=(8, 4, 8, 8))
    fp32 = _run(proto, x)[0]
    adaptor = OnnxRuntimeAdaptor(threads=1)
    errors = {cle: np.abs(_int8(adaptor, proto, loader, {"cle": True} if cle else None,
                                granularity="per_tensor").run(x) - fp32).mean() for cle in (False, True)}
    # per-tensor weights: conv1's small channels round to 0 without equalization, and the depthwise conv
    # scales that error up again (Nagel et al.'s MobileNet case); measured: 1.57 mean error without, 0.046 with
    assert errors[True] < 0.2 * errors[False], errors


@pytest.mark.parametrize("kind", ["matmul+add", "conv without bias"])
def test_onnx_bias_correction_removes_the_mean_output_shift_of_weight_rounding(kind):
    rng = np.random.default_rng(5)
    if kind == "matmul+add":
        w = rng.normal(size=(16, 8))
        w[0, :] *= 30  # one large weight: per-tensor rounding of every other weight is coarse
        proto = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                        helper.make_node("Add", ["m", "b"], ["y"], name="add")], {"w": w, "b": np.zeros(8)},
                       [("x", ["n", 16])], ["y"])
        make = lambda n: 3.0 + 0.05 * rng.normal(size=(n, 16))  # noqa: E731 - inputs far from 0 on average
    else:
        w = rng.normal(size=(6, 3, 3, 3))
        w[0, 0, 0, 0] = 25.0
        proto = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[0, 0, 0, 0])], {"w": w},
                       [("x", ["n", 3, 8, 8])], ["y"])
        make = lambda n: 2.0 + 0.05 * rng.normal(size=(n, 3, 8, 8))  # noqa: E731
    loader = [(make(32).astype(np.float32), None) for _ in range(2)]
    x = make(64)
    fp32 = _run(proto, x)[0]
    adaptor = OnnxRuntimeAdaptor(threads=1)
    axes = (0,) if fp32.ndim == 2 else (0, 2, 3)
    shift = {bc: np.abs((_int8(adaptor, proto, loader, {"bias_correction": True} if bc else None,
                               granularity="per_tensor").run(x) - fp32).mean(axis=axes)).mean()
             for bc in (False, True)}
    # measured: a mean shift of 0.96 (MatMul) and 0.38 (Conv) without, 0.035 and 0.001 with
    assert shift[True] < 0.2 * shift[False], shift


def test_onnx_smooth_quant_and_bias_correction_handle_a_gemm_with_transposed_weights():
    rng = np.random.default_rng(6)
    w, b = rng.normal(size=(4, 8)), rng.normal(size=4)  # transB: [out, in], as torch exports a Linear
    proto = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], {"w": w, "b": b},
                   [("x", ["n", 8])], ["y"])
    batches = [_outliers(rng, 16, 8) + 2.0 for _ in range(2)]
    stats = _stats(proto, batches)
    smoothed, n = onnx_recipes.smooth(proto, stats, 0.5)
    x = _outliers(rng, 8, 8)
    assert n == 1
    np.testing.assert_allclose(_run(smoothed, x)[0], _run(proto, x)[0], rtol=1e-4, atol=1e-4)
    after = _stats(smoothed, batches)
    w_after = numpy_helper.to_array(next(i for i in smoothed.graph.initializer if i.name == "w"))
    np.testing.assert_allclose(after["fc"].absmax, np.abs(w_after).max(0), rtol=1e-4)  # columns are inputs
    from lpot_research.quant.space import OpChoice, QSpec

    choice = OpChoice("int8", QSpec("int8", "sym", "per_tensor", "minmax"), QSpec("uint8", "asym", "per_tensor",
                                                                                 "minmax"))
    corrected, done = onnx_recipes.correct_biases(proto, {"fc": choice}, stats, False)
    assert done == ["fc"]
    b_after = numpy_helper.to_array(next(i for i in corrected.graph.initializer if i.name == "b"))
    scale = np.abs(w).max() / 127
    wq = np.clip(np.round(w / scale), -127, 127) * scale
    np.testing.assert_allclose(b_after - b, (w - wq) @ stats["fc"].mean, rtol=1e-4, atol=1e-6)


def test_onnx_cle_leaves_a_depthwise_conv_with_a_channel_multiplier_alone():
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", group=4, pads=[1, 1, 1, 1])]
    proto = _model(nodes, {"w1": rng.normal(size=(4, 3, 1, 1)), "w2": rng.normal(size=(8, 1, 3, 3))},
                   [("x", ["n", 3, 8, 8])], ["y"])
    out, pairs = onnx_recipes.equalize(proto)
    assert pairs == []
    x = rng.normal(size=(2, 3, 8, 8))
    np.testing.assert_allclose(_run(out, x)[0], _run(proto, x)[0])
