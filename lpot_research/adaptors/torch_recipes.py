"""The recipes (lpot_research.quant.recipes) on an exported ATen graph, for the PyTorch export back end.

SmoothQuant rewrites a copy of the FP32 graph before PT2E annotates it; bias correction edits the biases of
the converted graph, whose INT8 weights (a dequantize of folded INT8 constants) say exactly what the
weight rounding did."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import fx

from lpot_research.adaptors.base import limited_batches
from lpot_research.adaptors.export_graph import OPS, op_name, op_nodes
from lpot_research.adaptors.torch_common import torch_args
from lpot_research.quant.recipes import ChannelStats, bias_shift, equalization_scales, smoothing_scales

log = logging.getLogger(__name__)

aten = torch.ops.aten
LAYER_NORM = aten.layer_norm.default
CONV2D = aten.conv2d.default
# ops between an equalized pair: f(x / s) = f(x) / s for a per-channel s > 0
EQUALIZED_BETWEEN = (aten.relu.default, aten.relu_.default, aten.max_pool2d.default, aten.avg_pool2d.default)


def _axis(node: fx.Node) -> int:
    """The channel axis of an op's input: 1 for a convolution, the last for a Linear."""
    return -1 if OPS[node.target] == "Linear" else 1


@torch.inference_mode()
def collect_stats(gm: fx.GraphModule, loader: Iterable[Any], sampling_size: int) -> dict[str, ChannelStats]:
    """Per Linear/Conv call (keyed by its graph node's name: a module may make several calls, of different
    widths), the ChannelStats of its input activation over the first `sampling_size` calibration samples,
    read by running the graph node by node."""
    stats: dict[str, ChannelStats] = {}
    targets = {n.name: _axis(n) for nodes in op_nodes(gm).values() for n in nodes}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            if n.name in targets:
                x = self.env[n.args[0]].detach().float().cpu().numpy()
                stats.setdefault(n.name, ChannelStats()).update(x, targets[n.name] % x.ndim)
            return super().run_node(n)

    for inputs in limited_batches(loader, sampling_size, "calibration"):
        Recorder(gm).run(*torch_args(inputs))
    return stats


def _get(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor a get_attr node reads (None for anything else)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    t: Any = gm
    for part in str(node.target).split("."):
        t = getattr(t, part)
    return t if isinstance(t, torch.Tensor) else None


def _constant(gm: fx.GraphModule, node: Any) -> Any:
    """The value of a node computed from get_attr tensors and literals alone (e.g. an INT8 weight's
    dequantize), else None."""
    if not isinstance(node, fx.Node):
        return node
    if node.op == "get_attr":
        return _get(gm, node)
    if node.op != "call_function":
        return None
    args = [_constant(gm, a) for a in node.args]
    if any(a is None and isinstance(raw, fx.Node) for a, raw in zip(args, node.args, strict=True)):
        return None
    return node.target(*args, **node.kwargs)


def _new_attr(gm: fx.GraphModule, base: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
    """A new constant tensor of the graph (a buffer) and the get_attr node reading it, before `before`."""
    name, k = f"lpot_{base}".replace(".", "_"), 0
    while hasattr(gm, f"{name}_{k}"):
        k += 1
    gm.register_buffer(f"{name}_{k}", value)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(f"{name}_{k}")
    node.meta["val"] = value
    return node


def _set(gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> None:
    """Replace the tensor a get_attr node reads (a parameter stays a parameter)."""
    *path, last = str(node.target).split(".")
    owner: Any = gm
    for part in path:
        owner = getattr(owner, part)
    old = getattr(owner, last)
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, last, torch.nn.Parameter(value.to(old.dtype), requires_grad=False))
    else:
        setattr(owner, last, value.to(old.dtype))


def _readers(gm: fx.GraphModule) -> dict[str, int]:
    """How many get_attr nodes read each attribute, and how many users each has (a shared weight counts >1)."""
    count: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            count[str(n.target)] = count.get(str(n.target), 0) + len(n.users)
    return count


def smooth(gm: fx.GraphModule, stats: Mapping[str, ChannelStats], alpha: float) -> tuple[fx.GraphModule, int]:
    """SmoothQuant on a copy of the graph: the Linear calls reading one activation are smoothed together
    (one s for it, from the largest weight of each input channel among them). 1/s goes into the producer
    where that is a layer_norm read by these calls only (its weight and bias), else into a mul inserted
    after the activation. Returns the graph and how many Linear calls were smoothed."""
    gm = copy.deepcopy(gm)
    readers = _readers(gm)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and OPS.get(node.target) == "Linear" and node.name in stats:
            w = node.args[1]
            if _get(gm, w) is not None and readers.get(str(w.target)) == 1:
                groups.setdefault(node.args[0], []).append(node)
    smoothed = 0
    for x, nodes in groups.items():
        if any(OPS.get(u.target) == "Linear" for u in x.users if u not in nodes):
            continue  # another Linear reads x with a weight shared elsewhere: it would need the same s
        weights = [_get(gm, n.args[1]) for n in nodes]
        act = stats[nodes[0].name].absmax
        w_absmax = np.max([w.detach().abs().amax(dim=0).float().numpy() for w in weights], axis=0)
        if act is None or act.shape != w_absmax.shape:
            continue
        s = torch.as_tensor(smoothing_scales(act, w_absmax, alpha), dtype=torch.float32)
        for n, w in zip(nodes, weights, strict=True):
            _set(gm, n.args[1], w.detach() * s)
        producer = x if x.op == "call_function" else None
        ln_params = ([_get(gm, a) for a in producer.args[2:4]] if producer is not None
                     and producer.target == LAYER_NORM and len(producer.args) >= 4 else [])
        if (ln_params and all(p is not None for p in ln_params) and set(x.users) <= set(nodes)
                and all(readers.get(str(a.target)) == 1 for a in producer.args[2:4])):
            for a, p in zip(producer.args[2:4], ln_params, strict=True):
                _set(gm, a, p.detach() / s)
        else:
            first = min(nodes, key=lambda n: list(gm.graph.nodes).index(n))
            inv = _new_attr(gm, "smooth_scale", 1.0 / s, first)
            with gm.graph.inserting_before(first):
                mul = gm.graph.call_function(aten.mul.Tensor, (x, inv))
            if "val" in x.meta:
                mul.meta["val"] = x.meta["val"]
            for n in nodes:
                n.args = (mul, *n.args[1:])
        smoothed += len(nodes)
    gm.graph.lint()
    gm.recompile()
    return gm, smoothed


def equalize(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[tuple[str, str]]]:
    """Cross-layer equalization on a copy of the graph: each conv2d -> [relu, max_pool2d, avg_pool2d ...] ->
    conv2d pair whose tensors in between have no other reader (the second a plain or a depthwise conv).
    Returns the graph and the pairs (op names)."""
    gm = copy.deepcopy(gm)
    readers = _readers(gm)
    pairs = []
    for first in list(gm.graph.nodes):
        if first.op != "call_function" or first.target != CONV2D or len(first.users) != 1:
            continue
        w1 = _get(gm, first.args[1])
        if w1 is None or readers.get(str(first.args[1].target)) != 1 or (len(first.args) > 6 and first.args[6] != 1
                                                                          and first.args[6] != w1.shape[0]):
            continue
        second = next(iter(first.users))
        last = first
        while second.op == "call_function" and second.target in EQUALIZED_BETWEEN and len(second.users) == 1 \
                and second.args[0] is last:
            last, second = second, next(iter(second.users))
        if second.op != "call_function" or second.target != CONV2D or second.args[0] is not last:
            continue
        w2 = _get(gm, second.args[1])
        if w2 is None or readers.get(str(second.args[1].target)) != 1:
            continue
        channels = w1.shape[0]
        groups = int(second.args[6]) if len(second.args) > 6 else 1
        if groups not in (1, channels) or (groups == 1 and w2.shape[1] != channels) or \
                (groups == channels and w2.shape[0] != channels):  # (a depthwise multiplier > 1: not equalized)
            continue
        bias = first.args[2] if len(first.args) > 2 else None
        b1 = _get(gm, bias)
        if bias is not None and (b1 is None or readers.get(str(bias.target)) != 1):
            continue
        r1 = w1.detach().abs().reshape(channels, -1).amax(1).numpy()
        r2 = (w2.detach().abs().reshape(channels, -1).amax(1) if groups == channels
              else w2.detach().abs().transpose(0, 1).reshape(channels, -1).amax(1)).numpy()
        s = torch.as_tensor(equalization_scales(r1, r2), dtype=torch.float32)
        _set(gm, first.args[1], w1.detach() / s.reshape(-1, 1, 1, 1))
        if b1 is not None:
            _set(gm, bias, b1.detach() / s)
        column = s.reshape(-1, 1, 1, 1) if groups == channels else s.reshape(1, -1, 1, 1)
        _set(gm, second.args[1], w2.detach() * column)
        pairs.append((op_name(first), op_name(second)))
    gm.recompile()
    return gm, pairs


def correct_biases(source: fx.GraphModule, converted: fx.GraphModule, ops: Iterable[str],
                   stats: Mapping[str, ChannelStats]) -> list[str]:
    """Bias correction of the converted graph's INT8 ops among `ops`, in place: each call's expected output
    shift (FP32 weight of `source` less the INT8 weight the converted graph dequantizes, times the input's
    channel means) added to its bias (a bias created for a call without one). Returns the ops corrected."""
    fp32, int8 = op_nodes(source), op_nodes(converted)
    done = []
    for name in ops:
        if name not in int8 or len(int8[name]) != len(fp32.get(name, [])):
            continue
        for before, node in zip(fp32[name], int8[name], strict=True):
            if before.name not in stats:
                continue
            w = _get(source, before.args[1])
            wq = _constant(converted, node.args[1])
            if w is None or not isinstance(wq, torch.Tensor) or wq.shape != w.shape:
                continue
            groups = int(node.args[6]) if OPS[node.target] != "Linear" and len(node.args) > 6 else 1
            shift = torch.as_tensor(bias_shift(w.detach().float().numpy(), wq.detach().float().numpy(),
                                               stats[before.name].mean, groups), dtype=torch.float32)
            bias = node.args[2] if len(node.args) > 2 else None
            current = _get(converted, bias)
            if bias is not None and current is None:
                continue  # a computed bias: left as it is
            value = shift if current is None else current.detach().float() + shift
            args = list(node.args) + [None] * max(0, 3 - len(node.args))
            args[2] = _new_attr(converted, f"{name}_bias", value, node)
            node.args = tuple(args)
        done.append(name)
    converted.graph.eliminate_dead_code()
    converted.graph.lint()
    converted.recompile()
    return done
