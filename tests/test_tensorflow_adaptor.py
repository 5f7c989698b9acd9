"""The real TensorFlow Lite adaptor on the Keras counterpart of digits_cnn."""


import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install 'lpot-research[tensorflow]')")
pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed (pip install 'lpot-research[tensorflow]')")
pytest.importorskip("torch", reason="digits_cnn is trained with PyTorch (pip install 'lpot-research[pytorch]')")

from lpot_research.adaptors.tensorflow import TensorFlowAdaptor, TFLiteModel  # noqa: E402
from lpot_research.core.errors import ConfigError  # noqa: E402
from lpot_research.measure.metrics import TopK  # noqa: E402
from lpot_research.quant.space import OpChoice, build_space  # noqa: E402

STATIC = "post_training_static_quant"
OPS = [f"features.{i}.conv" for i in range(5)] + ["fc"]


@pytest.fixture(scope="module")
def bundle():
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN().load("tensorflow")


@pytest.fixture(scope="module")
def adaptor():
    return TensorFlowAdaptor(threads=1)


@pytest.fixture(scope="module")
def model(adaptor, bundle):
    return adaptor.prepare(bundle.model, bundle.example_inputs)


def space(adaptor, model, approach=STATIC):
    return build_space(adaptor.capabilities(model, approach, None), approach, 64)


def weight_dtypes(q: TFLiteModel) -> dict[str, str]:
    """Op name -> dtype of its weight tensor in the converted flatbuffer."""
    return {q.layers[op["inputs"][1]]: op["weight_dtype"].__name__ for op in q.ops
            if len(op["inputs"]) > 1 and op["inputs"][1] in q.layers}


def test_keras_counterpart_equals_the_pytorch_net(bundle):
    import torch

    from lpot_research.models.digits import DigitsCNN

    x = bundle.eval_dataloader.inputs[:16]
    net = DigitsCNN().trained()
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(bundle.model(x).numpy(), ref, atol=1e-4)


def test_full_integer_quantization_keeps_float_inputs_and_outputs_and_shrinks(adaptor, bundle, model):
    q = adaptor.quantize(model, space(adaptor, model).model_wise_configs()[0], bundle.calib_dataloader, None)
    types = [op["type"] for op in q.ops]
    assert types[0] == "QUANTIZE" and types[-1] == "DEQUANTIZE"  # float model inputs/outputs, INT8 inside
    assert adaptor.size_bytes(q) < 0.4 * adaptor.size_bytes(model)


def test_fallback_op_computes_in_float_between_dequantize_and_quantize(adaptor, bundle, model):
    cfg = space(adaptor, model).model_wise_configs()[0].with_ops({"features.2.conv": OpChoice("fp32")})
    q = adaptor.quantize(model, cfg, bundle.calib_dataloader, None)
    conv2 = next(op for op in q.ops if len(op["inputs"]) > 1 and q.layers.get(op["inputs"][1]) == "features.2.conv")
    assert conv2["output_dtype"].__name__ == "float32"
    # the float op is fed by a DEQUANTIZE and feeds a QUANTIZE
    producers = {o: op["type"] for op in q.ops for o in op["outputs"]}
    assert producers[conv2["inputs"][0]] == "DEQUANTIZE"


def test_per_tensor_weights_model_wide(bundle):
    a = TensorFlowAdaptor(per_channel=False, threads=1)
    m = a.prepare(bundle.model, bundle.example_inputs)
    s = space(a, m)
    assert {o.weight.granularity for _, opts in s.options for o in opts if o.quantized} == {"per_tensor"}
    q = a.quantize(m, s.model_wise_configs()[0], bundle.calib_dataloader, None)
    it_ops = [op for op in q.ops if op["type"] == "CONV_2D"]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=q.content)
    details = {t["name"]: t for t in it.get_tensor_details()}
    scales = [details[op["inputs"][1]]["quantization_parameters"]["scales"] for op in it_ops]
    assert all(len(s) == 1 for s in scales)
    assert a.evaluate(q, bundle.eval_dataloader, TopK(1)) > 0.95


def test_dynamic_range_quantization(adaptor, bundle, model):
    s = space(adaptor, model, "post_training_dynamic_quant")
    assert all(opts == tuple(o for o in opts if o.quantized) for _, opts in s.options)  # no per-op fallback
    q = adaptor.quantize(model, s.model_wise_configs()[0], bundle.calib_dataloader, None)
    dtypes = weight_dtypes(q)
    assert "int8" in dtypes.values()
    types = [op["type"] for op in q.ops]
    assert "QUANTIZE" not in types  # activations stay float between ops
    assert adaptor.evaluate(q, bundle.eval_dataloader, TopK(1)) > 0.95


def test_inspect_op_outputs(adaptor, bundle, model):
    q = adaptor.quantize(model, space(adaptor, model).model_wise_configs()[0], bundle.calib_dataloader, None)
    x = adaptor.take_inputs(bundle.eval_dataloader, 8)
    names = ["features.0.conv", "fc"]
    ref, got = adaptor.inspect(model, x, names), adaptor.inspect(q, x, names)
    assert ref["features.0.conv"].shape == (8, 32, 32, 16) and ref["fc"].shape == (8, 10)
    np.testing.assert_allclose(ref["fc"], adaptor.predict(model, x), rtol=1e-5, atol=1e-5)
    for name in names:
        mse = float(np.mean((ref[name] - got[name]) ** 2))
        assert 0 < mse < 0.01 * float(np.mean(ref[name] ** 2))
    with pytest.raises(KeyError, match="no op named 'nope'"):
        adaptor.inspect(q, x, ["nope"])


def test_savedmodel_and_keras_file_inputs(adaptor, bundle, tmp_path):
    bundle.model.export(str(tmp_path / "saved"), verbose=False)
    bundle.model.save(str(tmp_path / "m.keras"))
    for src in (tmp_path / "saved", tmp_path / "m.keras"):
        m = adaptor.prepare(src, None)
        assert len(m.ops) == 6
        q = adaptor.quantize(m, space(adaptor, m).model_wise_configs()[0], bundle.calib_dataloader, None)
        assert adaptor.evaluate(q, bundle.eval_dataloader, TopK(1)) > 0.95
    with pytest.raises(ConfigError, match="Keras model, a .keras file or a SavedModel"):
        adaptor.prepare(tmp_path / "m.h5", None)


def test_pytorch_model_is_refused_with_a_hint(adaptor):
    from lpot_research.models.digits import DigitsNet

    with pytest.raises(ConfigError, match="got DigitsNet; a PyTorch model needs framework=pytorch or onnxrt"):
        adaptor.prepare(DigitsNet(), None)
