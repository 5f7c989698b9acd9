"""MXNet's profiler, one op at a time: `python -m lpot_research.adaptors.mxnet_profile PREFIX INPUTS RUNS WARMUP`
profiles a checkpoint (PREFIX-symbol.json, PREFIX-0000.params) on the arrays of INPUTS (.npz, one per input
name) and prints, as JSON, each run's milliseconds per graph node (non-variable nodes, in graph order).

It runs in a process of its own, started by `MXNetAdaptor.op_costs`, because what it needs is fixed for a
whole process: MXNet bulks consecutive ops into one profiled segment (named by op types, e.g.
`_sg_mkldnn_conv,...,Pooling`) unless bulking is off before the engine starts (MXNET_EXEC_BULK_EXEC_INFERENCE=0:
`mxnet.PROFILE_ENV`, set by the parent), and the profiler takes its configuration once. The symbolic executor
then runs (and the profiler records) each node as one operator event, in graph order on one thread, so the
k-th event of a run is the k-th node: the event's op type is checked against the node's.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def graph_nodes(symbol_json: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes a run executes, in graph order (variables are not ops)."""
    return [n for n in symbol_json["nodes"] if n["op"] != "null"]


def node_runs(events: list[dict[str, Any]], ops: list[str], runs: int) -> list[list[float]]:
    """Per run, the milliseconds of each node, from a Chrome trace's operator events (begin/end pairs) in time
    order; raises ValueError when the events do not line up with the nodes' op types."""
    wanted = set(ops)
    spans: list[tuple[float, str, float]] = []
    open_: dict[tuple[Any, str], list[float]] = {}
    for e in sorted((e for e in events if e.get("cat") == "operator" and e.get("name") in wanted
                     and e.get("ph") in ("B", "E")), key=lambda e: (e["ts"], e["ph"] == "B")):
        key = (e.get("tid"), e["name"])
        if e["ph"] == "B":
            open_.setdefault(key, []).append(e["ts"])
        elif open_.get(key):
            start = open_[key].pop()
            spans.append((start, e["name"], (e["ts"] - start) / 1e3))
    spans.sort()
    if len(spans) != runs * len(ops):
        raise ValueError(f"{len(spans)} operator events for {runs} runs of {len(ops)} nodes")
    out = []
    for r in range(runs):
        chunk = spans[r * len(ops):(r + 1) * len(ops)]
        names = [name for _, name, _ in chunk]
        if names != ops:
            k = next(i for i, (a, b) in enumerate(zip(names, ops, strict=True)) if a != b)
            raise ValueError(f"run {r}: event {k} is {names[k]}, the node there is {ops[k]}")
        out.append([ms for _, _, ms in chunk])
    return out


def profile(prefix: str, inputs: str, runs: int, warmup: int) -> dict[str, Any]:
    from lpot_research.adaptors.mxnet import import_mxnet

    mx = import_mxnet()
    sym = mx.sym.load(f"{prefix}-symbol.json")
    params = {k.split(":", 1)[1]: v for k, v in mx.nd.load(f"{prefix}-0000.params").items()}
    arrays = dict(np.load(inputs))
    exe = sym.simple_bind(mx.cpu(), grad_req="null", **{k: v.shape for k, v in arrays.items()})
    for table in (exe.arg_dict, exe.aux_dict):
        for k, v in table.items():
            if k in params:
                params[k].astype(v.dtype).copyto(v)
            elif k in arrays:
                mx.nd.array(arrays[k], dtype=v.dtype).copyto(v)

    def run() -> None:
        exe.forward(is_train=False)
        for o in exe.outputs:
            o.wait_to_read()

    for _ in range(warmup):
        run()
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.json"
        mx.profiler.set_config(profile_symbolic=True, profile_imperative=False, aggregate_stats=False,
                               filename=str(trace))
        mx.profiler.set_state("run")
        for _ in range(runs):
            run()
        mx.profiler.set_state("stop")
        mx.profiler.dump()
        events = json.loads(trace.read_text())["traceEvents"]
    ops = [n["op"] for n in graph_nodes(json.loads(sym.tojson()))]
    return {"ops": ops, "runs": node_runs(events, ops, runs)}


if __name__ == "__main__":
    prefix, inputs, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(profile(prefix, inputs, runs, warmup)))
