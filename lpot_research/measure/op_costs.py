"""Per-op cost: what each tunable op takes of one inference in the FP32 model and in the all-INT8 model,
from the framework's own profiler (e.g. ONNX Runtime's session profiling).

A profiler reports the kernels the framework ran, after its graph rewrites: fused nodes, layout
conversions, the quantize/dequantize steps around an INT8 op. `attribute` maps each kernel to the tunable
op it runs for (by the names the rewrites derive from the op's node and tensors); what maps to none (layout
conversions, untunable ops, a conversion between two untunable ops) is the model's `rest`. An op's
INT8 time includes the conversions quantizing it added (its input's quantize, its output's dequantize),
so `fp32_ms - int8_ms` is what keeping it INT8 saves, and what a fallback gives back.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class OpCosts:
    """Milliseconds per inference (the benchmark batch) of each tunable op, median over `runs` profiled runs."""

    profiler: str
    runs: int
    fp32_ms: dict[str, float]
    int8_ms: dict[str, float]
    rest_ms: tuple[float, float] = (0.0, 0.0)  # (FP32, INT8): kernels attributed to no tunable op
    config_id: str = ""  # the all-INT8 configuration profiled
    notes: list[str] = field(default_factory=list)

    def saving(self, op: str) -> float | None:
        """What keeping `op` INT8 saves over FP32 (ms; negative: INT8 is slower), if both were profiled."""
        a, b = self.fp32_ms.get(op), self.int8_ms.get(op)
        return None if a is None or b is None else a - b

    @property
    def int8_total(self) -> float:
        """The all-INT8 model's profiled milliseconds: its ops and the rest."""
        return sum(self.int8_ms.values()) + self.rest_ms[1]

    def to_dict(self) -> dict[str, Any]:
        ops = sorted(set(self.fp32_ms) | set(self.int8_ms))
        return {"profiler": self.profiler, "runs": self.runs, "config_id": self.config_id,
                "ops": {o: {"fp32_ms": _r(self.fp32_ms.get(o)), "int8_ms": _r(self.int8_ms.get(o))} for o in ops},
                "rest": {"fp32_ms": _r(self.rest_ms[0]), "int8_ms": _r(self.rest_ms[1])}, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpCosts:
        ops = d.get("ops", {})
        return cls(d["profiler"], int(d["runs"]),
                   {o: v["fp32_ms"] for o, v in ops.items() if v.get("fp32_ms") is not None},
                   {o: v["int8_ms"] for o, v in ops.items() if v.get("int8_ms") is not None},
                   (d["rest"]["fp32_ms"], d["rest"]["int8_ms"]), d.get("config_id", ""), list(d.get("notes", [])))


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


@dataclass(frozen=True)
class Graph:
    """What attribution needs of a model graph: node names, and each tensor's producer and consumers."""

    nodes: frozenset[str]
    producer: Mapping[str, str]  # tensor -> node
    consumers: Mapping[str, tuple[str, ...]]  # tensor -> nodes
    inputs: Mapping[str, tuple[str, ...]]  # node -> its input tensors


def graph_of(nodes: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> Graph:
    """From (node name, input tensors, output tensors) in graph order."""
    names, producer, consumers, ins = [], {}, {}, {}
    for name, inputs, outputs in nodes:
        names.append(name)
        ins[name] = tuple(inputs)
        for t in ins[name]:
            consumers.setdefault(t, []).append(name)
        for t in outputs:
            producer[t] = name
    return Graph(frozenset(names), producer, {t: tuple(c) for t, c in consumers.items()}, ins)


QUANTIZE_SUFFIXES = ("_QuantizeLinear", "_quantized")  # a conversion of a tensor *into* INT8: its consumer's


def attribute(kernel: str, graph: Graph, tunable: frozenset[str], hops: int = 3) -> tuple[str, ...]:
    """The tunable op(s) a profiled kernel runs for (several share it equally), or none.

    A kernel is named after a node (`p2o.Conv.3`, or a rewrite of it: `p2o.Conv.3_token_29`), or after a
    tensor (a fused node named by its output, `conv2d_186.tmp_0_nchwc`; a conversion, `x_QuantizeLinear`):
    the longest name prefix ending at an underscore or a slash (`p2o.MatMul.24/MatmulTransposeFusion/`)
    that is a node or a tensor of the original graph. A node is its own op. A tensor being quantized
    belongs to its tunable consumers (one quantize can feed several); any other tensor to its producer,
    walking up through untunable producers (a batch norm or an add fused into a conv names the fused
    node by its own output) at most `hops` nodes."""
    cuts = [len(kernel)] + [i for i in range(len(kernel) - 1, 0, -1) if kernel[i] in "_/"]
    for cut in cuts:
        prefix, suffix = kernel[:cut], kernel[cut:]
        as_tensor = prefix in graph.producer or prefix in graph.consumers
        if suffix.startswith(QUANTIZE_SUFFIXES) and as_tensor:
            return tuple(dict.fromkeys(c for c in graph.consumers.get(prefix, ()) if c in tunable))
        if prefix in graph.nodes and not (as_tensor and suffix.startswith("_DequantizeLinear")):
            return (prefix,) if prefix in tunable else ()
        if as_tensor:
            node = graph.producer.get(prefix)
            for _ in range(hops):
                if node is None or node in tunable:
                    break
                ups = [graph.producer[t] for t in graph.inputs.get(node, ()) if t in graph.producer]
                node = next((u for u in ups if u in tunable), ups[0] if ups else None)
            return (node,) if node in tunable else ()
    return ()


def per_op(kernel_runs: list[dict[str, float]], graph: Graph,
           tunable: frozenset[str]) -> tuple[dict[str, float], float]:
    """Per tunable op (and the rest): the median over runs of its kernels' summed milliseconds."""
    ops: dict[str, list[float]] = {}
    rest: list[float] = []
    for run in kernel_runs:
        this: dict[str, float] = {}
        other = 0.0
        for kernel, ms in run.items():
            owners = attribute(kernel, graph, tunable)
            if not owners:
                other += ms
            for op in owners:
                this[op] = this.get(op, 0.0) + ms / len(owners)
        for op, ms in this.items():
            ops.setdefault(op, []).append(ms)
        rest.append(other)
    n = len(kernel_runs)
    # an op missing from a run took no time in it
    return ({op: statistics.median(v + [0.0] * (n - len(v))) for op, v in ops.items()},
            statistics.median(rest) if rest else 0.0)


__all__ = ["OpCosts", "Graph", "attribute", "graph_of", "per_op"]
