"""SmoothQuant and bias correction on PyTorch's export back end (torch.export + torchao PT2E), on tiny models
with answers known in advance; quantized for real (the eager converted graph, reference Q/DQ arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
pytest.importorskip("torchao", reason="torchao is not installed (pip install 'lpot-research[pytorch]')")

from torch import nn  # noqa: E402

from lpot_research.adaptors import torch_recipes  # noqa: E402
from lpot_research.adaptors.export_graph import op_nodes  # noqa: E402
from lpot_research.adaptors.pytorch_export import PyTorchExportAdaptor  # noqa: E402
from lpot_research.quant.space import build_space  # noqa: E402

STATIC = "post_training_static_quant"


class Block(nn.Module):
    """LayerNorm -> two Linears reading it (as a query and a key) -> ReLU -> a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.q, self.k, self.out = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(4, 3)

    def forward(self, x):
        t = self.norm(x)
        return self.out(torch.relu(self.q(t) + self.k(t)))


class OneLinear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data = weight

    def forward(self, x):
        return self.fc(x)


class OneConv(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], bias=False)
        self.conv.weight.data = weight

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def adaptor():
    return PyTorchExportAdaptor(threads=1, compile=False)


def loader_of(batches):
    return [(torch.as_tensor(b, dtype=torch.float32), torch.zeros(len(b))) for b in batches]


def quantized(adaptor, gm, loader, recipes=None):
    caps = adaptor.capabilities(gm, STATIC, None)
    cfg = build_space(caps, STATIC, 64).model_wise_configs()[0]
    q = adaptor.quantize(gm, cfg.with_recipes(recipes) if recipes else cfg, loader, None)
    assert any("dequantize" in str(n.target) for n in q.graph.nodes)  # really INT8
    return q


@torch.no_grad()
def test_smooth_quant_keeps_fp32_outputs_balances_ranges_and_folds_into_layer_norm(adaptor):
    torch.manual_seed(0)
    block = Block().eval()
    block.norm.weight.data[3] = 40.0  # one LayerNorm channel carries the outliers, as in transformers
    x = torch.randn(32, 8)
    gm = adaptor.prepare(block, (x,))
    loader = loader_of([torch.randn(16, 8).numpy() for _ in range(4)])
    stats = torch_recipes.collect_stats(gm, loader, 64)
    call = {op: nodes[0].name for op, nodes in op_nodes(gm).items()}  # statistics are per call
    assert sorted(stats) == sorted(call.values()) and sorted(call) == ["k", "out", "q"]
    smoothed, n = torch_recipes.smooth(gm, stats, 0.5)
    assert n == 3
    torch.testing.assert_close(smoothed(x), gm(x), rtol=1e-4, atol=1e-4)
    assert torch.equal(gm(x), block(x))  # the original graph is left as it was
    muls = [nd for nd in smoothed.graph.nodes if nd.target == torch.ops.aten.mul.Tensor]
    # q and k share LayerNorm's output: 1/s went into its weight and bias; out reads a ReLU: one mul for it
    assert len(muls) == 1 and [u.target for u in muls[0].users] == [torch.ops.aten.linear.default]
    after = torch_recipes.collect_stats(smoothed, loader, 64)
    w = {name: p for name, p in smoothed.named_parameters()}
    q_w, k_w, out_w = (next(v for k, v in w.items() if k.endswith(f"{m}.weight")) for m in ("q", "k", "out"))
    # alpha 0.5: each input channel's activation range equals the largest weight column of its group
    np.testing.assert_allclose(after[call["q"]].absmax,
                               torch.maximum(q_w.abs().amax(0), k_w.abs().amax(0)).numpy(), rtol=1e-4)
    np.testing.assert_allclose(after[call["out"]].absmax, out_w.abs().amax(0).numpy(), rtol=1e-4)


def outliers(rng, n, channels=16, scale=60.0):
    x = rng.normal(size=(n, channels))
    x[:, 0] *= scale
    return x


@torch.no_grad()
def test_smooth_quant_cuts_the_int8_error_of_outlier_activations(adaptor):
    rng = np.random.default_rng(1)
    w = torch.as_tensor(rng.normal(size=(8, 16)), dtype=torch.float32)
    w[:, 0] *= 0.1  # the outlier channel's weights are small: its outliers do not dominate the output
    gm = adaptor.prepare(OneLinear(w).eval(), (torch.zeros(4, 16),))
    loader = loader_of([outliers(rng, 32) for _ in range(2)])
    x = torch.as_tensor(outliers(rng, 64), dtype=torch.float32)
    fp32 = gm(x)
    errors = {a: (quantized(adaptor, gm, loader, {"smooth_quant": a} if a else None)(x) - fp32).abs().mean().item()
              for a in (None, 0.5)}
    assert errors[0.5] < 0.3 * errors[None], errors  # measured: 0.89 mean error without, 0.060 with


@pytest.mark.parametrize("kind", ["linear", "conv without bias"])
@torch.no_grad()
def test_bias_correction_removes_the_mean_output_shift_of_weight_rounding(adaptor, kind):
    rng = np.random.default_rng(5)
    if kind == "linear":
        w = torch.as_tensor(rng.normal(size=(8, 16)), dtype=torch.float32)
        w[:, 0] = 30.0  # one large weight per output channel: rounding every other weight is coarse
        module, make = OneLinear(w), lambda n: 3.0 + 0.05 * rng.normal(size=(n, 16))
        axes: tuple[int, ...] = (0,)
    else:
        w = torch.as_tensor(rng.normal(size=(6, 3, 3, 3)), dtype=torch.float32)
        w[:, 0, 0, 0] = 25.0
        module, make = OneConv(w), lambda n: 2.0 + 0.05 * rng.normal(size=(n, 3, 8, 8))
        axes = (0, 2, 3)
    gm = adaptor.prepare(module.eval(), (torch.as_tensor(make(4), dtype=torch.float32),))
    loader = loader_of([make(32) for _ in range(2)])
    x = torch.as_tensor(make(64), dtype=torch.float32)
    fp32 = gm(x)
    shift = {bc: (quantized(adaptor, gm, loader, {"bias_correction": True} if bc else None)(x) - fp32)
             .mean(dim=axes).abs().mean().item() for bc in (False, True)}
    # measured: a mean shift of 0.77 (Linear) and 0.42 (Conv) without, 0.010 and 0.0005 with
    assert shift[True] < 0.2 * shift[False], shift


class ConvPair(nn.Module):
    """conv (channel ranges 1000x apart) -> ReLU [-> max pool] -> a depthwise or a plain conv."""

    SPREAD = torch.tensor([0.02, 0.1, 1.0, 5.0, 20.0, 0.5])

    def __init__(self, depthwise: bool, pool: bool = False, balanced_output: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 6, 1)
        self.conv1.weight.data *= self.SPREAD.reshape(6, 1, 1, 1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False) if depthwise else nn.Conv2d(6, 5, 1)
        if balanced_output:  # the depthwise conv undoes the spread (as a batch norm folded into it would)
            self.conv2.weight.data /= self.SPREAD.reshape(6, 1, 1, 1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x):
        return self.conv2(self.pool(torch.relu(self.conv1(x))))


@pytest.mark.parametrize("depthwise, pool", [(True, False), (False, True)], ids=["depthwise", "relu-maxpool-plain"])
@torch.no_grad()
def test_cle_keeps_fp32_outputs_and_equalizes_each_channel_pair(adaptor, depthwise, pool):
    torch.manual_seed(2)
    x = torch.randn(2, 4, 8, 8)
    gm = adaptor.prepare(ConvPair(depthwise, pool).eval(), (x,))
    out, pairs = torch_recipes.equalize(gm)
    assert pairs == [("conv1", "conv2")]
    torch.testing.assert_close(out(x), gm(x), rtol=1e-4, atol=1e-5)
    w1 = next(p for n, p in out.named_parameters() if n.endswith("conv1.weight"))
    w2 = next(p for n, p in out.named_parameters() if n.endswith("conv2.weight"))
    r2 = w2.abs().reshape(6, -1).amax(1) if depthwise else w2.abs().transpose(0, 1).reshape(6, -1).amax(1)
    torch.testing.assert_close(w1.abs().reshape(6, -1).amax(1), r2, rtol=1e-5, atol=0)


@torch.no_grad()
def test_cle_cuts_the_int8_error_of_a_depthwise_pair(adaptor):
    torch.manual_seed(4)
    gm = adaptor.prepare(ConvPair(True, balanced_output=True).eval(), (torch.randn(2, 4, 8, 8),))
    loader = loader_of([torch.randn(8, 4, 8, 8).numpy() for _ in range(2)])
    x = torch.randn(8, 4, 8, 8)
    fp32 = gm(x)
    errors = {cle: (quantized(adaptor, gm, loader, {"cle": True} if cle else None)(x) - fp32).abs().mean().item()
              for cle in (False, True)}
    # per-channel weights (PT2E's) round each channel well, but the activation between is per tensor: its small
    # channels round to 0 and the depthwise conv scales that up; measured: 0.24 mean error without, 0.014 with
    assert errors[True] < 0.2 * errors[False], errors


class TwoCalls(nn.Module):
    """One module, two functional linear calls of different widths (one op name, two calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(16, 8)), nn.Parameter(torch.randn(16))
        self.w2, self.b2 = nn.Parameter(torch.randn(4, 16)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        return nn.functional.linear(torch.relu(nn.functional.linear(x, self.w1, self.b1)), self.w2, self.b2)


@torch.no_grad()
def test_statistics_are_per_call_when_a_module_makes_several_of_different_widths(adaptor):
    torch.manual_seed(7)
    x = torch.randn(8, 8) + 2.0
    gm = adaptor.prepare(nn.Sequential(TwoCalls()).eval(), (x,))
    assert {op: len(nodes) for op, nodes in op_nodes(gm).items()} == {"0": 2}  # one op name, two calls
    loader = loader_of([(torch.randn(16, 8) + 2.0).numpy() for _ in range(2)])
    smoothed, n = torch_recipes.smooth(gm, torch_recipes.collect_stats(gm, loader, 32), 0.5)
    assert n == 2
    torch.testing.assert_close(smoothed(x), gm(x), rtol=1e-4, atol=1e-4)
    fp32 = gm(x)
    shift = {bc: (quantized(adaptor, gm, loader, {"bias_correction": True, "smooth_quant": 0.5} if bc else None)(x)
                  - fp32).mean(dim=0).abs().mean().item() for bc in (False, True)}
    assert shift[True] < shift[False], shift


def test_cle_leaves_a_depthwise_conv_with_a_channel_multiplier_alone(adaptor):
    class Multiplier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 3, padding=1, groups=4)

        def forward(self, x):
            return self.conv2(torch.relu(self.conv1(x)))

    x = torch.randn(2, 3, 8, 8)
    gm = adaptor.prepare(Multiplier().eval(), (x,))
    out, pairs = torch_recipes.equalize(gm)
    assert pairs == []
    torch.testing.assert_close(out(x), gm(x))
