"""Quantization-aware training on the real PyTorch back end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")

import lpot_research  # noqa: E402
import lpot_research.config  # noqa: E402
from lpot_research.adaptors.pytorch import PyTorchAdaptor  # noqa: E402
from lpot_research.core.errors import ConfigError  # noqa: E402
from lpot_research.quant.space import build_space  # noqa: E402
from lpot_research.run.history import History  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QAT = "quant_aware_training"


@pytest.fixture(scope="module")
def bundle():
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN().load()


def qat_config(adaptor, model):
    return build_space(adaptor.capabilities(model, QAT, None), QAT, 100).model_wise_configs()[0]


def quantized_kinds(model):
    return {type(m).__module__.split(".")[-2] for m in model.modules() if "quantized" in type(m).__module__}


def test_q_func_trains_a_fake_quantized_model_then_it_is_converted_to_int8(bundle, tmp_path):
    seen = []

    def q_func(model):
        fq = [m for m in model.modules() if "FakeQuantize" in type(m).__name__]
        seen.append((model.training, len(fq)))
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        for inputs, labels in bundle.calib_dataloader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            opt.step()

    r = lpot_research.tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, bundle.metric,
                           config={"quantization": {"approach": QAT}}, q_func=q_func, output_dir=tmp_path)
    assert seen and seen[0][0] is True and seen[0][1] >= 12  # training mode, weight + activation fake quant
    best = r.summary.best
    assert r.summary.met_criterion
    # the converted model was benchmarked against FP32: its trial's measured ratio is the summary's
    rec = next(t for t in History.read(tmp_path).trials if t.trial == best.trial)
    assert best.latency_ratio == rec.metrics["latency_ratio"] and 0 < best.latency_ratio < math.inf
    assert best.latency_ms == rec.metrics["latency_ms"] > 0 and best.fp32_latency_ms > 0
    weights = [n.args[1] for n in r.model.graph.nodes  # the export back end: each op's weight dequantized from INT8
               if n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)]
    assert len(weights) == 6 and all("dequantize_per_channel" in str(w.target) for w in weights)
    assert all(getattr(r.model, w.args[0].target).dtype == torch.int8 for w in weights)


def test_configured_loop_trains_deterministically(bundle):
    a = PyTorchAdaptor(threads=1)
    m = a.prepare(bundle.model, bundle.example_inputs)
    cfg = qat_config(a, m)
    x = a.take_inputs(bundle.eval_dataloader, 64)
    a.set_training(None, {"epochs": 0})
    untrained = a.predict(a.quantize(m, cfg, bundle.calib_dataloader, bundle.example_inputs), x)
    a.set_training(None, {"epochs": 1, "lr": 1e-3})
    once = a.predict(a.quantize(m, cfg, bundle.calib_dataloader, bundle.example_inputs), x)
    again = a.predict(a.quantize(m, cfg, bundle.calib_dataloader, bundle.example_inputs), x)
    assert not torch.equal(untrained, once)  # training changed the weights
    assert torch.equal(once, again)  # and is reproducible
    with pytest.raises(ConfigError, match="unknown key quantization.qat.steps; valid keys: epochs, lr, momentum"):
        lpot_research.config.load_settings({"quantization": {"qat": {"steps": 3}}})


def test_qat_from_tune_py_meets_the_criterion_and_the_saved_model_reproduces_it(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tune.py"), "quantization.approach=quant_aware_training",
                        f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["met_criterion"] and s["best"]["latency_ratio"] < 1.0
    v = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_saved_model.py"), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert v.returncode == 0 and "MATCH" in v.stdout, v.stdout + v.stderr


def test_qat_elsewhere_and_misused_q_func_are_clear_errors(bundle, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    with pytest.raises(ConfigError, match="'quant_aware_training' is not supported by framework=onnxrt; valid"):
        lpot_research.tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, bundle.metric,
                           framework="onnxrt", config={"quantization": {"approach": QAT}}, output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="used only with quantization.approach=quant_aware_training"):
        lpot_research.tune(bundle.model, bundle.calib_dataloader, bundle.eval_dataloader, bundle.metric,
                           q_func=lambda m: None, output_dir=tmp_path / "b")
