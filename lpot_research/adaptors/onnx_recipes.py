"""The recipes (lpot_research.quant.recipes) on an ONNX graph, for the ONNX Runtime back end. Each returns a new
ModelProto; node and weight names stay (the tuner's op names and the fallback check read them)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lpot_research.quant.recipes import ChannelStats, bias_shift, equalization_scales, smoothing_scales
from lpot_research.quant.space import OpChoice

log = logging.getLogger(__name__)

OP_TYPES = ("Conv", "MatMul", "Gemm")
# ops f between the pair with f(x / s) = f(x) / s for a per-channel s > 0 (none at all is fine too)
EQUALIZED_BETWEEN = ("Relu", "MaxPool", "AveragePool")


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


class Graph:
    """An editable view of a model copy: initializers as numpy arrays, producers and consumers."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = copy.deepcopy(proto)
        self.inits = {i.name: i for i in self.proto.graph.initializer}
        self.producer = {o: n for n in self.proto.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.proto.graph.node:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        self.outputs = {o.name for o in self.proto.graph.output}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def set(self, name: str, value: np.ndarray) -> None:
        """Replace an initializer's value (same name, same dtype)."""
        old = self.inits[name]
        new = numpy_helper.from_array(value.astype(numpy_helper.to_array(old).dtype), name)
        old.CopyFrom(new)

    def add(self, name: str, value: np.ndarray) -> str:
        self.proto.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.inits[name] = self.proto.graph.initializer[-1]
        return name

    def only_reader(self, tensor: str, node: onnx.NodeProto) -> bool:
        readers = self.consumers.get(tensor, [])
        return tensor not in self.outputs and len(readers) == 1 and readers[0] is node

    def weight(self, node: onnx.NodeProto) -> str | None:
        """The node's weight initializer (its second input), None when it multiplies two activations."""
        return node.input[1] if len(node.input) > 1 and node.input[1] in self.inits else None


def input_axes(proto: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """Per op (Conv/MatMul/Gemm node) its activation input and that tensor's channel axis (1 for a Conv, the
    last for a MatMul or Gemm)."""
    return {n.name: (n.input[0], 1 if n.op_type == "Conv" else -1) for n in proto.graph.node
            if n.op_type in OP_TYPES and not (n.op_type == "Gemm" and _attr(n, "transA", 0))}


def collect_stats(proto: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]],
                  session: Any) -> dict[str, ChannelStats]:
    """Per op, the ChannelStats of its activation input over `feeds`, read as extra graph outputs of a probe
    copy of `proto` run by `session(bytes)`."""
    axes = input_axes(proto)
    probe = copy.deepcopy(proto)
    existing = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    tensors = list(dict.fromkeys(t for t, _ in axes.values()))
    for t in tensors:
        if t not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    sess = session(probe.SerializeToString())
    per_tensor: dict[str, ChannelStats] = {t: ChannelStats() for t in tensors}
    for feed in feeds:
        values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
        values.update(feed)
        for t in tensors:
            axis = next(a for tt, a in axes.values() if tt == t)
            x = np.asarray(values[t])
            per_tensor[t].update(x, axis % x.ndim)
    return {op: per_tensor[t] for op, (t, _) in axes.items()}


def _in_channel_view(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The weight as [in, out] (a MatMul's own layout; a Gemm's transposed when transB)."""
    return w.T if node.op_type == "Gemm" and _attr(node, "transB", 0) else w


def smooth(proto: onnx.ModelProto, stats: Mapping[str, ChannelStats], alpha: float) -> tuple[onnx.ModelProto, int]:
    """SmoothQuant on every MatMul/Gemm with a 2-D weight initializer: the ops reading one activation are
    smoothed together (one s for the tensor, from the largest weight of each input channel among them).
    1/s goes into the producer where that is a LayerNormalization read by these ops only (its scale and
    bias), else into a Mul inserted before them. Returns the model and how many ops were smoothed."""
    g = Graph(proto)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in g.proto.graph.node:
        w = g.weight(n)
        if n.op_type in ("MatMul", "Gemm") and w and len(g.inits[w].dims) == 2 and n.name in stats \
                and not (n.op_type == "Gemm" and _attr(n, "transA", 0)):
            groups.setdefault(n.input[0], []).append(n)
    smoothed = 0
    for x, nodes in groups.items():
        weights = [g.weight(n) for n in nodes]
        if len(set(weights)) < len(weights) or any(len(g.consumers[w]) > 1 for w in weights):
            continue  # a weight shared with another op: scaling it would change that op too
        act = stats[nodes[0].name].absmax
        w_absmax = np.max([np.abs(_in_channel_view(n, g.array(w))).max(axis=1) for n, w in zip(nodes, weights,
                                                                                                strict=True)], axis=0)
        if act is None or act.shape != w_absmax.shape:
            continue
        s = smoothing_scales(act, w_absmax, alpha)
        for n, w in zip(nodes, weights, strict=True):
            g.set(w, _in_channel_view(n, _in_channel_view(n, g.array(w)) * s[:, None]))
        producer = g.producer.get(x)
        readers = g.consumers.get(x, [])
        folded = (producer is not None and producer.op_type == "LayerNormalization" and x not in g.outputs
                  and all(r in nodes for r in readers) and len(producer.output) >= 1 and producer.output[0] == x
                  and all(t in g.inits and len(g.consumers[t]) == 1 for t in producer.input[1:3])
                  and len(producer.input) >= 2)
        if folded:
            for t in producer.input[1:3]:
                g.set(t, g.array(t) / s)
        else:
            scale = g.add(f"{x}_smooth_scale", 1.0 / s)
            out = f"{x}_smoothed"
            mul = helper.make_node("Mul", [x, scale], [out], name=f"{x}_smooth")
            first = min(list(g.proto.graph.node).index(n) for n in nodes)
            g.proto.graph.node.insert(first, mul)
            for n in nodes:
                n.input[0] = out
        smoothed += len(nodes)
    return g.proto, smoothed


def equalize(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """Cross-layer equalization of each Conv -> [Relu, MaxPool, AveragePool ...] -> Conv pair whose tensors in
    between have no other reader (the second a plain or a depthwise convolution). Returns the model and the
    pairs."""
    g = Graph(proto)
    pairs = []
    for first in list(g.proto.graph.node):
        w1 = g.weight(first)
        if first.op_type != "Conv" or w1 is None or len(g.consumers[w1]) > 1:
            continue
        t = first.output[0]
        nxt = g.consumers.get(t, [])
        if len(nxt) != 1 or not g.only_reader(t, nxt[0]):
            continue
        second = nxt[0]
        while second.op_type in EQUALIZED_BETWEEN and len(second.output) == 1:  # e.g. Relu -> MaxPool
            t = second.output[0]
            after = g.consumers.get(t, [])
            if len(after) != 1 or not g.only_reader(t, after[0]):
                break
            second = after[0]
        w2 = g.weight(second)
        if second.op_type != "Conv" or w2 is None or len(g.consumers[w2]) > 1 or second.input[0] != t:
            continue
        a, b = g.array(w1), g.array(w2)
        channels, group2 = a.shape[0], _attr(second, "group", 1)
        if group2 not in (1, channels) or (group2 == 1 and b.shape[1] != channels) or \
                (group2 == channels and b.shape[0] != channels):  # (a depthwise multiplier > 1: not equalized)
            continue
        r1 = np.abs(a.reshape(channels, -1)).max(axis=1)
        # input channel i of the second conv: a column of a plain conv, the whole filter i of a depthwise one
        r2 = (np.abs(b.reshape(channels, -1)).max(axis=1) if group2 == channels
              else np.abs(np.moveaxis(b, 1, 0).reshape(channels, -1)).max(axis=1))
        bias = first.input[2] if len(first.input) > 2 and first.input[2] else None
        if bias is not None and (bias not in g.inits or len(g.consumers[bias]) > 1):
            continue
        s = equalization_scales(r1, r2)
        shape1 = (-1,) + (1,) * (a.ndim - 1)
        g.set(w1, a / s.reshape(shape1))
        if bias is not None:
            g.set(bias, g.array(bias) / s)
        g.set(w2, b * (s.reshape(shape1) if group2 == channels else s.reshape((1, -1) + (1,) * (b.ndim - 2))))
        pairs.append((first.name, second.name))
    return g.proto, pairs


def correct_biases(proto: onnx.ModelProto, choices: Mapping[str, OpChoice], stats: Mapping[str, ChannelStats],
                   reduce_range: bool) -> tuple[onnx.ModelProto, list[str]]:
    """Bias correction of the INT8 ops in `choices` whose weight is an initializer: Q(W) as ONNX Runtime's
    quantizer computes it (`quantize_data`, per channel or per tensor, symmetric or not, 7-bit with
    `reduce_range`), its expected output shift added to the op's bias (a Conv's or Gemm's bias input, a
    MatMul's following Add of a 1-D constant; a Conv without one gets one). Returns the model and the
    ops corrected."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    g = Graph(proto)
    done = []
    for node in list(g.proto.graph.node):
        choice, w_name = choices.get(node.name), g.weight(node)
        if choice is None or choice.weight is None or w_name is None or node.name not in stats:
            continue
        if node.op_type == "Gemm" and (_attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0):
            continue
        w = g.array(w_name).astype(np.float64)
        spec = choice.weight
        sym = spec.scheme == "sym"
        axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and _attr(node, "transB", 0)) else w.ndim - 1
        slices = ([np.take(w, i, axis=axis) for i in range(w.shape[axis])]
                  if spec.granularity == "per_channel" else [w])
        deq = []
        for part in slices:
            zp, scale, q = quantize_data(part.astype(np.float32).ravel(), TensorProto.INT8, sym,
                                         reduce_range=reduce_range)
            deq.append(((np.asarray(q, dtype=np.float64) - float(zp)) * float(scale)).reshape(part.shape))
        wq = np.stack(deq, axis=axis) if spec.granularity == "per_channel" else deq[0]
        mean = stats[node.name].mean
        if node.op_type == "Conv":
            shift = bias_shift(w, wq, mean, _attr(node, "group", 1))
        else:  # [in, out] -> [out, in]
            shift = bias_shift(_in_channel_view(node, w).T, _in_channel_view(node, wq).T, mean)
        bias = _bias_of(g, node, len(shift))
        if bias is None:
            continue
        g.set(bias, g.array(bias) + shift)
        done.append(node.name)
    return g.proto, done


def _bias_of(g: Graph, node: onnx.NodeProto, channels: int) -> str | None:
    """The initializer holding the node's bias (read by it alone), created for a Conv without one."""
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2]:
            b = node.input[2]
            ok = b in g.inits and len(g.consumers[b]) == 1 and g.array(b).shape == (channels,)
            return b if ok else None
        if node.op_type == "Conv":
            b = g.add(f"{node.name}_corrected_bias", np.zeros(channels, np.float32))
            node.input.append(b)
            g.consumers[b] = [node]
            return b
        return None
    readers = g.consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    add = readers[0]
    b = next((t for t in add.input if t in g.inits), None)
    if b is None or len(g.consumers[b]) > 1 or g.array(b).shape != (channels,):
        return None
    return b
