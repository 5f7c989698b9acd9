"""The ppocr_rec model: the real PP-OCRv4 recognizer on rendered lines, and why it needs tuning."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'lpot-research[onnxrt]')")
pytest.importorskip("rapidocr_onnxruntime", reason="the ocr extra is not installed (pip install 'lpot-research[ocr]')")

from lpot_research.adaptors.onnxrt import OnnxRuntimeAdaptor  # noqa: E402
from lpot_research.models.ppocr import PPOCRRec, TextMatch, ctc_decode, edit_distance, render_lines  # noqa: E402
from lpot_research.quant.space import build_space  # noqa: E402


def test_ctc_decode_and_metrics():
    chars = ["blank", "a", "b", " "]
    probs = np.eye(4)[[[1, 1, 0, 1, 2, 2, 0, 0], [3, 1, 0, 0, 0, 0, 0, 2]]]
    assert ctc_decode(probs, chars) == ["aab", " ab"]
    m = TextMatch(chars)
    m.update(probs, ["aab", "abb"])
    assert m.result() == 0.5  # " ab".strip() == "ab" != "abb"
    c = TextMatch(chars, kind="char")
    c.update(probs, ["aab", "abb"])
    assert c.result() == pytest.approx((1 + (1 - 1 / 3)) / 2)
    assert edit_distance("kitten", "sitting") == 3


def test_rendering_is_deterministic():
    a, la = render_lines(4, seed=3)
    b, lb = render_lines(4, seed=3)
    assert la == lb and np.array_equal(a, b)
    assert a.shape == (4, 3, 48, 320) and a.min() >= -1 and a.max() <= 1


def test_fp32_reads_the_lines_and_naive_int8_does_not():
    bundle = PPOCRRec(eval_size=48, calib_size=16).load()
    a = OnnxRuntimeAdaptor(threads=1)
    m = a.prepare(bundle.model, bundle.example_inputs)
    assert not any(n.op_type == "Constant" for n in m.proto.graph.node)  # weights became initializers
    fp32 = a.evaluate(m, bundle.eval_dataloader, bundle.metric)
    assert fp32 > 0.75
    # ORT's default static quantization (per-tensor weights, MinMax) breaks the recognizer
    s = build_space(a.capabilities(m, "post_training_static_quant", None), "post_training_static_quant", 16,
                    model_wise={"weight": {"granularity": "per_tensor"}, "activation": {"algorithm": "minmax",
                                                                                        "scheme": "asym"}})
    q = a.quantize(m, s.model_wise_configs()[0], bundle.calib_dataloader, None)
    assert a.evaluate(q, bundle.eval_dataloader, bundle.metric) < 0.1
    assert {p.key for p in q.proto.metadata_props} >= {"character"}  # the dictionary travels with the model


def test_onnx_model_with_the_pytorch_framework_is_one_clear_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tune.py"), "model=ppocr_rec", f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=root, timeout=300)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: model 'ppocr_rec' is not available for framework 'pytorch'; it is available for: onnxrt"]
