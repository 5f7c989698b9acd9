"""The Python API on the real PyTorch back end, with a user eval_func."""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")

import lpot_research  # noqa: E402
from lpot_research.measure.metrics import TopK  # noqa: E402


@pytest.fixture(scope="module")
def bundle():
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN().load()


def test_tune_with_eval_func(bundle, tmp_path):
    calls = []

    def eval_func(model):
        calls.append(model)
        m = TopK(1)
        with torch.inference_mode():
            for x, y in bundle.eval_dataloader:
                m.update(model(x), y)
        return m.result()

    res = lpot_research.tune(bundle.model, bundle.calib_dataloader, eval_func=eval_func,
                             config={"accuracy_criterion": {"kind": "absolute", "tolerance": 0.01},
                                     "quantization": {"calibration": {"sampling_size": 64}}, "threads": 1},
                             output_dir=tmp_path, model_name="digits_api")
    assert res.met_criterion and len(calls) == 1 + res.summary.trials
    assert res.summary.model == "digits_api" and res.summary.criterion.kind == "absolute"
    assert "dequantize" in str(next(n for n in res.model.graph.nodes if n.target == torch.ops.aten.linear.default
                                    ).args[1].target)  # the export back end's INT8 fc
    assert (tmp_path / "best_model.pt2").exists()


def test_op_wise_forces_a_named_op_to_fp32(bundle, tmp_path):
    res = lpot_research.tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, TopK(1),
                             config={"quantization": {"op_wise": {"fc": {"activation": {"dtype": "fp32"}}}}},
                             output_dir=tmp_path)
    assert res.summary.best.fallback_ops == ["fc"]
    fc = next(n for n in res.model.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert fc.args[1].op == "get_attr"  # its float weight, no dequantize: no Q/DQ at fc


def test_op_wise_unknown_op_lists_valid_ops(bundle, tmp_path):
    from lpot_research.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'classifier' matches no op; valid op names: \['features.0.0'"):
        lpot_research.tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader,
                           config={"quantization": {"op_wise": {"classifier": {"activation": {"dtype": "fp32"}}}}},
                           output_dir=tmp_path)

