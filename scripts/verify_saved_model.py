#!/usr/bin/env python
"""Load a run's saved best model with its framework alone and re-evaluate it on the run's own evaluation data;
print both accuracies and exit non-zero if they differ. Loaders: torch.jit.load (PyTorch), an onnxruntime
InferenceSession (ONNX Runtime), the LiteRT interpreter (TensorFlow Lite), SymbolBlock.imports (MXNet).

    python scripts/verify_saved_model.py outputs/2026-11-22/10-00-00-123456
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf


def torch_runner(run_dir: Path, threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    model = torch.jit.load(str(run_dir / "best_model.pt"))  # plain PyTorch: no package class needed

    def run(inputs: Any) -> Any:
        with torch.inference_mode():
            return model(*(inputs if isinstance(inputs, tuple) else (inputs,)))

    return run


def onnx_runner(run_dir: Path, threads: int) -> Any:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(run_dir / "best_model.onnx"), sess_options=so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(inputs: Any) -> Any:
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        feed = {n: np.asarray(a.numpy() if hasattr(a, "numpy") else a) for n, a in zip(names, arrays, strict=True)}
        return sess.run(None, feed)[0]

    return run


def tflite_runner(run_dir: Path, threads: int) -> Any:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreters: dict[tuple[tuple[int, ...], ...], Any] = {}

    def run(inputs: Any) -> Any:
        arrays = [np.asarray(a) for a in (inputs if isinstance(inputs, tuple) else (inputs,))]
        key = tuple(a.shape for a in arrays)
        if key not in interpreters:  # one interpreter per batch shape (the last batch may be smaller)
            it = Interpreter(model_path=str(run_dir / "best_model.tflite"), num_threads=threads)
            for d, a in zip(it.get_input_details(), arrays, strict=True):
                it.resize_tensor_input(d["index"], list(a.shape))
            it.allocate_tensors()
            interpreters[key] = it
        it = interpreters[key]
        for d, a in zip(it.get_input_details(), arrays, strict=True):
            it.set_tensor(d["index"], a.astype(d["dtype"], copy=False))
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])

    return run


def mxnet_runner(run_dir: Path, threads: int) -> Any:
    import numpy as np

    from lpot_research.adaptors.mxnet import import_mxnet

    mx = import_mxnet(threads)  # plain mxnet, importable on numpy >= 1.24 and with the run's threads

    sym = run_dir / "best_model-symbol.json"
    nodes = json.loads(sym.read_text())["nodes"]  # inputs are named data, or data0, data1, ...
    names = [n["name"] for n in nodes if n["op"] == "null" and re.fullmatch(r"data\d*", n["name"])]
    net = mx.gluon.SymbolBlock.imports(str(sym), names, str(run_dir / "best_model-0000.params"))

    def run(inputs: Any) -> Any:
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        out = net(*(mx.nd.array(np.asarray(a), dtype="float32") for a in arrays))
        return (out[0] if isinstance(out, list | tuple) else out).asnumpy()

    return run


RUNNERS = {"pytorch": torch_runner, "onnxrt": onnx_runner, "tensorflow": tflite_runner, "mxnet": mxnet_runner}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--atol", type=float, default=1e-9, help="allowed accuracy difference")
    args = ap.parse_args()
    summary = json.loads((args.run_dir / "summary.json").read_text())
    cfg = OmegaConf.load(args.run_dir / "config_resolved.yaml")
    adaptor = summary["framework"]
    if adaptor not in RUNNERS:
        print(f"error: no loader for {adaptor}; valid: {', '.join(RUNNERS)}", file=sys.stderr)
        return 2
    run = RUNNERS[adaptor](args.run_dir, int(cfg.get("threads") or 1))
    bundle = instantiate(cfg.model).load(framework=summary["framework"])  # the run's evaluation data and metric
    metric = bundle.metric
    metric.reset()
    for inputs, labels in bundle.eval_dataloader:
        metric.update(run(inputs), labels)
    got, reported = float(metric.result()), summary["best"]["accuracy"]
    ok = abs(got - reported) <= args.atol
    print(f"reported accuracy {reported:.6f}, saved model re-evaluated {got:.6f}: {'MATCH' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
