"""The real PyTorch FX back end (framework.backend=fx: torch.ao FX graph mode, x86 engine) on the real
digits_cnn model."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")

from lpot_research.adaptors.pytorch import BF16Module, PyTorchAdaptor, bf16_supported  # noqa: E402
from lpot_research.core.cpu import cpu_info  # noqa: E402
from lpot_research.core.errors import ConfigError  # noqa: E402
from lpot_research.measure.metrics import TopK  # noqa: E402
from lpot_research.quant.calibration import kl_divergence, kl_window  # noqa: E402
from lpot_research.quant.space import OpChoice, build_space  # noqa: E402
from tests.helpers import env_without_isa_cap  # noqa: E402

STATIC, DYNAMIC = "post_training_static_quant", "post_training_dynamic_quant"
ROOT = Path(__file__).resolve().parents[1]
CPU = cpu_info()
OPS = ["features.0.0", "features.1.0", "features.2.0", "features.3.0", "features.4.0", "fc"]


@pytest.fixture(scope="module")
def bundle():
    from lpot_research.models.digits import DigitsCNN

    return DigitsCNN().load()


@pytest.fixture(scope="module")
def adaptor():
    return PyTorchAdaptor(threads=1)


def space(adaptor, bundle, approach=STATIC, **kw):
    caps = adaptor.capabilities(bundle.model, approach, bundle.example_inputs)
    return build_space(caps, approach, kw.pop("sampling_size", 64), **kw)


def test_dynamic_capabilities_quantize_only_the_linear_op(adaptor, bundle):
    dyn = adaptor.capabilities(bundle.model, DYNAMIC, bundle.example_inputs)
    assert [c.name for c in dyn] == OPS and [c.type for c in dyn] == ["Conv2d"] * 5 + ["Linear"]
    assert [c.quantizable for c in dyn] == [False] * 5 + [True]
    assert dyn[-1].activation is None


def test_static_int8_fuses_conv_relu_and_shrinks_the_model(adaptor, bundle):
    cfg = space(adaptor, bundle).model_wise_configs()[0]
    q = adaptor.quantize(bundle.model, cfg, bundle.calib_dataloader, bundle.example_inputs)
    assert type(q.get_submodule("features.1.0")).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    assert type(q.fc) is torch.ao.nn.quantized.Linear
    assert adaptor.size_bytes(q) < 0.5 * adaptor.size_bytes(bundle.model)


def test_a_torchscript_model_is_not_offered_kl_and_quantizes_with_histogram(adaptor, bundle):
    """JIT graph-mode quantization scripts its observers, and the KL search is Python: KL is not offered
    (asking for it names why), torch's histogram observer is, and it quantizes the scripted model."""
    scripted = torch.jit.script(bundle.model.eval())
    with pytest.raises(ConfigError, match=r"activation.algorithm='kl' is not supported .* a TorchScript model's "
                                          r"observers are scripted .*valid choices: \['minmax', 'histogram'\]"):
        space(adaptor, bundle.__class__(**{**bundle.__dict__, "model": scripted}),
              model_wise={"activation": {"algorithm": ["kl"]}})
    sp = space(adaptor, bundle.__class__(**{**bundle.__dict__, "model": scripted}),
               model_wise={"activation": {"algorithm": ["histogram"]}})
    cfg = sp.model_wise_configs()[0]
    assert {c.activation.algorithm for _, c in cfg.ops if c.quantized} == {"histogram"}
    q = adaptor.quantize(scripted, cfg, bundle.calib_dataloader, bundle.example_inputs)
    x, y = next(iter(bundle.eval_dataloader))
    assert (q(x).argmax(1) == y).float().mean() > 0.9


@pytest.mark.skipif(not bf16_supported(), reason=f"BF16 needs AVX512-BF16 or AMX-BF16; this CPU: {CPU.describe()}")
def test_fallback_to_bf16(adaptor, bundle):
    base = space(adaptor, bundle).model_wise_configs()[0]
    assert OpChoice("bf16") in space(adaptor, bundle).op_options("features.0.0")
    q = adaptor.quantize(bundle.model, base.with_ops({"features.0.0": OpChoice("bf16")}), bundle.calib_dataloader,
                         bundle.example_inputs)
    m = q.get_submodule("features.0.0")
    assert isinstance(m, BF16Module) and all(p.dtype == torch.bfloat16 for p in m.parameters())
    x = adaptor.take_inputs(bundle.eval_dataloader, 16)
    np.testing.assert_allclose(adaptor.predict(q, x).numpy(), adaptor.predict(bundle.model, x).numpy(), atol=0.5)


@pytest.mark.skipif(bf16_supported(), reason=f"this CPU has native BF16: {CPU.describe()}")
def test_without_native_bf16_it_is_not_offered_and_asking_names_the_feature(adaptor, bundle):
    assert all(OpChoice("bf16") not in opts for _, opts in space(adaptor, bundle).options)
    with pytest.raises(ConfigError, match="'bf16' is not supported for op 'features.0.0': BF16 needs a CPU with "
                                          "AVX512-BF16 or AMX-BF16"):
        space(adaptor, bundle, model_wise={"activation": {"dtype": ["uint8", "bf16"]}})


def test_reduced_range_offers_no_symmetric_activations_and_says_why(bundle):
    """Without AVX512-VNNI the adaptor narrows activations to 7 bits, and torch cannot range-reduce
    symmetric quint8 (every such trial used to fail with NotImplementedError)."""
    reduced, full = PyTorchAdaptor(threads=1, reduce_range=True), PyTorchAdaptor(threads=1, reduce_range=False)
    assert {o.activation.scheme for _, opts in space(reduced, bundle).options for o in opts if o.quantized} == {"asym"}
    assert {o.activation.scheme for _, opts in space(full, bundle).options for o in opts if o.quantized} == {
        "asym", "sym"}
    with pytest.raises(ConfigError, match="activation.scheme='sym' is not supported .* AVX512-VNNI"):
        space(reduced, bundle, model_wise={"activation": {"scheme": "sym"}})
    for cfg in space(reduced, bundle).model_wise_configs():  # every option of the space quantizes
        q = reduced.quantize(bundle.model, cfg, bundle.calib_dataloader, bundle.example_inputs)
        act = q.get_submodule("features.1.0")
        assert act.scale > 0  # a converted INT8 module
    assert PyTorchAdaptor(threads=1)._reduce_range() is (not CPU.avx512_vnni)


@pytest.mark.slow
def test_avx2_kernels_need_7_bit_activations():
    """Under the AVX2 cap (FBGEMM's real AVX2 kernels), the automatic choice keeps digits_cnn within 1%
    of FP32 while full-range activations saturate and lose many points (0.77 on a real AVX2 CPU)."""
    code = """
        from lpot_research.adaptors.pytorch import PyTorchAdaptor
        from lpot_research.measure.metrics import TopK
        from lpot_research.models.digits import DigitsCNN
        from lpot_research.quant.space import build_space
        b = DigitsCNN().load()
        for rr in (None, False):
            a = PyTorchAdaptor(threads=1, reduce_range=rr)
            caps = a.capabilities(b.model, "post_training_static_quant", b.example_inputs)
            cfg = build_space(caps, "post_training_static_quant", 100).model_wise_configs()[0]
            q = a.quantize(b.model, cfg, b.calib_dataloader, b.example_inputs)
            print(a.evaluate(b.model, b.eval_dataloader, TopK(1)), a.evaluate(q, b.eval_dataloader, TopK(1)))
    """
    env = env_without_isa_cap()
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env={**env, "LPOT_CPU_ISA": "avx2", "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (fp32, auto), (_, full) = [map(float, line.split()) for line in r.stdout.split("\n") if line.strip()]
    assert auto >= fp32 * 0.99
    assert full < fp32 - 0.05


@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("gran", ["per_channel", "per_tensor"])
def test_weight_scheme_and_granularity_reach_the_kernel(adaptor, bundle, scheme, gran):
    # packed int8 weights are stored affine; symmetric shows as all-zero zero points
    s = space(adaptor, bundle, model_wise={"weight": {"scheme": scheme, "granularity": gran}})
    q = adaptor.quantize(bundle.model, s.model_wise_configs()[0], bundle.calib_dataloader, bundle.example_inputs)
    for name in ("features.1.0", "fc"):
        w = q.get_submodule(name).weight()
        if gran == "per_channel":
            assert w.qscheme() == torch.per_channel_affine
            zp = w.q_per_channel_zero_points()
            assert len(zp) == w.shape[0]
        else:
            assert w.qscheme() == torch.per_tensor_affine
            zp = torch.tensor([w.q_zero_point()])
        assert bool((zp == 0).all()) is (scheme == "sym")


def test_dynamic_quantization(adaptor, bundle):
    s = space(adaptor, bundle, approach=DYNAMIC)
    cfg = s.model_wise_configs()[0]
    assert cfg.op("fc").quantized and cfg.op("fc").activation is None
    q = adaptor.quantize(bundle.model, cfg, bundle.calib_dataloader, bundle.example_inputs)
    assert type(q.fc) is torch.ao.nn.quantized.dynamic.Linear
    conv = q.get_submodule("features.1.0")  # dynamic INT8 has no conv kernels: it stays FP32 (fused, float)
    assert ".quantized" not in type(conv).__module__ and all(p.dtype == torch.float32 for p in conv.parameters())
    assert adaptor.evaluate(q, bundle.eval_dataloader, TopK(1)) > 0.95


class CountingLoader:
    def __init__(self, inner):
        self.inner, self.samples = inner, 0

    def __iter__(self):
        for x, y in self.inner:
            self.samples += len(x)
            yield x, y


def test_calibration_uses_sampling_size_samples(bundle, monkeypatch):
    import lpot_research.adaptors.torch_common as pt  # where the calibration feeding lives

    fresh = PyTorchAdaptor(threads=1)  # nothing cached: this quantization must calibrate
    s = space(fresh, bundle, sampling_size=40)
    cfg = s.model_wise_configs()[0]
    assert cfg.sampling_size == 40
    fed = []
    orig = pt.limited_batches

    def spy(loader, n, what):
        for batch in orig(loader, n, what):
            fed.append(pt.batch_len(batch))
            yield batch

    monkeypatch.setattr(pt, "limited_batches", spy)
    counter = CountingLoader(bundle.calib_dataloader)
    fresh.quantize(bundle.model, cfg, counter, bundle.example_inputs)
    assert fed == [32, 8]  # the model saw exactly sampling_size samples, in one pass
    assert 40 <= counter.samples <= 64  # and the loader was read no further than the batch holding the 40th


def test_kl_clips_outliers_that_minmax_keeps(adaptor, bundle):
    rng = np.random.default_rng(0)
    bulk = rng.standard_normal(200_000)
    # one-sided data with a lone outlier: the window starts at 0 and ends far below the outlier
    hist, _ = np.histogram(np.concatenate([np.abs(bulk), [60.0]]), bins=2048)
    start, end = kl_window(hist, 256, zero_bin=0)
    assert start == 0 and 256 <= end < 2048 // 4
    assert kl_divergence(hist, start, end, 256) < kl_divergence(hist, 0, 2048, 256)
    # two-sided data: zero stays inside, both ends move towards it in proportion
    x = np.concatenate([bulk, [60.0]])
    hist, _ = np.histogram(x, bins=2048, range=(x.min(), x.max()))
    z = int(round(-x.min() / ((x.max() - x.min()) / 2048)))
    start, end = kl_window(hist, 256, zero_bin=z)
    assert 0 < start < z < end < 2048 and end - start >= 256
    s_mm = space(adaptor, bundle, model_wise={"activation": {"algorithm": "minmax"}})
    s_kl = space(adaptor, bundle, model_wise={"activation": {"algorithm": "kl"}})
    q_mm = adaptor.quantize(bundle.model, s_mm.model_wise_configs()[0], bundle.calib_dataloader, bundle.example_inputs)
    q_kl = adaptor.quantize(bundle.model, s_kl.model_wise_configs()[0], bundle.calib_dataloader, bundle.example_inputs)
    scale_mm = q_mm.get_submodule("features.4.0").scale
    scale_kl = q_kl.get_submodule("features.4.0").scale
    assert scale_kl < scale_mm


def test_inspect_gives_per_op_outputs(adaptor, bundle):
    cfg = space(adaptor, bundle).model_wise_configs()[0]
    q = adaptor.quantize(bundle.model, cfg, bundle.calib_dataloader, bundle.example_inputs)
    # the FP32 reference is the same graph with every op in FP32 (conv+bn+relu fused alike)
    f = adaptor.quantize(bundle.model, cfg.with_ops({n: OpChoice("fp32") for n in OPS}), bundle.calib_dataloader,
                         bundle.example_inputs)
    x = adaptor.take_inputs(bundle.eval_dataloader, 8)
    ref = adaptor.inspect(f, x, ["features.0.0", "fc"])
    got = adaptor.inspect(q, x, ["features.0.0", "fc"])
    assert ref["features.0.0"].shape == got["features.0.0"].shape == (8, 16, 32, 32) and got["fc"].shape == (8, 10)
    np.testing.assert_allclose(adaptor.predict(f, x).numpy(), adaptor.predict(bundle.model, x).numpy(), atol=1e-4)
    for name in ("features.0.0", "fc"):
        mse = float(np.mean((ref[name] - got[name]) ** 2))
        assert 0 < mse < 0.01 * float(np.mean(ref[name] ** 2))
    with pytest.raises(KeyError, match="no module named 'nope'"):
        adaptor.inspect(q, x, ["nope"])


def test_footprint_and_latency_are_measured(adaptor, bundle):
    """Both grow with what the model runs on: 16 times the batch is more time and more memory. The footprint
    runs a copy of the model, so it holds at least the model's parameters."""
    small, big = adaptor.take_inputs(bundle.eval_dataloader, 4), adaptor.take_inputs(bundle.eval_dataloader, 64)
    assert 0 < adaptor.latency_ms(bundle.model, small, 1, 3) < adaptor.latency_ms(bundle.model, big, 1, 3)
    params = sum(p.numel() * p.element_size() for p in bundle.model.parameters())
    assert params < adaptor.footprint_bytes(bundle.model, small) < adaptor.footprint_bytes(bundle.model, big)


def test_unknown_engine_is_named(bundle):
    from lpot_research.core.errors import ConfigError

    with pytest.raises(ConfigError, match="framework.engine='tpu' is not available; valid choices"):
        PyTorchAdaptor(engine="tpu").prepare(bundle.model, bundle.example_inputs)
