#!/usr/bin/env python
"""Load a run's saved best model with its framework alone and check it is the tuned model: its outputs on
the inputs recorded at the end of the run (best_model_check.npz, every run has it, API runs included) and,
for a tune.py run, its accuracy re-evaluated on the run's own evaluation data. Exit non-zero on a mismatch.
Loaders: torch.export.load (PyTorch's export back end: a .pt2) or torch.jit.load (its FX back end), an
onnxruntime InferenceSession (ONNX Runtime), the LiteRT interpreter
(TensorFlow Lite), SymbolBlock.imports (MXNet).

    python scripts/verify_saved_model.py outputs/2026-11-22/10-00-00-123456
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf


def torch_runner(run_dir: Path, threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    exported = run_dir / "best_model.pt2"
    if exported.exists():  # an ExportedProgram: plain torch, once the Q/DQ ops are registered
        import logging

        import torch.ao.quantization.fx._decomposed  # noqa: F401

        logging.getLogger("torch.export").setLevel(logging.ERROR)  # a bad file: our one line, not its traceback
        model = torch.export.load(str(exported)).module()
    else:  # TorchScript: plain PyTorch, no package class needed
        model = torch.jit.load(str(run_dir / "best_model.pt"))

    def run(inputs: Any) -> Any:
        arrays = tuple(inputs.values()) if isinstance(inputs, dict) else inputs
        arrays = tuple(torch.as_tensor(a) for a in (arrays if isinstance(arrays, tuple) else (arrays,)))
        with torch.inference_mode():
            return model(*arrays)

    return run


def onnx_runner(run_dir: Path, threads: int) -> Any:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(run_dir / "best_model.onnx"), sess_options=so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(inputs: Any) -> Any:
        if isinstance(inputs, dict):
            return sess.run(None, {n: np.asarray(a) for n, a in inputs.items()})[0]
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        feed = {n: np.asarray(a.numpy() if hasattr(a, "numpy") else a) for n, a in zip(names, arrays, strict=True)}
        return sess.run(None, feed)[0]

    return run


def tflite_runner(run_dir: Path, threads: int) -> Any:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreters: dict[tuple[tuple[int, ...], ...], Any] = {}

    def run(inputs: Any) -> Any:
        inputs = tuple(inputs.values()) if isinstance(inputs, dict) else inputs
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
        inputs = tuple(inputs.values()) if isinstance(inputs, dict) else inputs
        arrays = inputs if isinstance(inputs, tuple) else (inputs,)
        out = net(*(mx.nd.array(np.asarray(a), dtype="float32") for a in arrays))
        return (out[0] if isinstance(out, list | tuple) else out).asnumpy()

    return run


RUNNERS = {"pytorch": torch_runner, "onnxrt": onnx_runner, "tensorflow": tflite_runner, "mxnet": mxnet_runner}


def to_numpy(x: Any) -> Any:
    import numpy as np

    x = x[0] if isinstance(x, tuple | list) else x
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x)


def check_outputs(run_dir: Path, run: Any) -> str | None:
    """The saved model's outputs against those the run recorded for the tuned model; None if they match."""
    import numpy as np

    path = run_dir / "best_model_check.npz"
    if not path.exists():
        return f"{path} is missing (a run of an older lpot-research): the outputs cannot be checked"
    with np.load(path) as f:
        keys = sorted((k for k in f.files if k.startswith("input")), key=lambda k: (len(k), k))
        named = [k for k in keys if k.startswith("input:")]
        inputs: Any = ({k.split(":", 1)[1]: f[k] for k in named} if named else
                       tuple(f[k] for k in keys) if len(keys) > 1 else f[keys[0]])
        want = f["output0"]
    got = to_numpy(run(inputs))
    scale = float(np.abs(want).max()) or 1.0
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else "shape"
        return f"the saved model's outputs differ from the tuned model's (max |difference| {diff})"
    print(f"saved model outputs on {len(want)} recorded samples: MATCH")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--atol", type=float, default=1e-9, help="allowed accuracy difference")
    args = ap.parse_args()
    try:
        summary = json.loads((args.run_dir / "summary.json").read_text())
    except (OSError, ValueError) as e:
        print(f"error: {args.run_dir} holds no finished run ({args.run_dir / 'summary.json'}: {e})", file=sys.stderr)
        return 2
    cap = (summary.get("cpu") or {}).get("cap")
    if cap and not os.environ.get("LPOT_CPU_ISA"):  # the run's kernels: a capped run ran the older class's
        os.environ["LPOT_CPU_ISA"] = cap
        print(f"the run was capped to {cap} (LPOT_CPU_ISA): so are the kernels here")
    import lpot_research  # noqa: F401  (applies LPOT_CPU_ISA to the frameworks' switches before they load)
    from lpot_research.run.summary import Summary

    s = Summary.from_dict(summary)
    adaptor = s.framework
    if adaptor not in RUNNERS:
        print(f"error: no loader for framework {adaptor}; valid: {', '.join(RUNNERS)}", file=sys.stderr)
        return 2
    if s.best is None or not s.best.model_path:
        print("error: the run saved no quantized model (no trial succeeded)", file=sys.stderr)
        return 2
    config = args.run_dir / "config_resolved.yaml"
    cfg = OmegaConf.load(config) if config.exists() else None
    try:
        run = RUNNERS[adaptor](args.run_dir, int((cfg.get("threads") if cfg else None) or 1))
    except Exception as e:  # noqa: BLE001 - a truncated or replaced file: whatever its framework raises
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: the saved model {s.best.model_path} does not load with {adaptor} alone ({type(e).__name__}: "
              f"{first})", file=sys.stderr)
        return 1
    problem = check_outputs(args.run_dir, run)
    if problem:
        print(f"MISMATCH: {problem}")
        return 1
    if cfg is None:
        print("no config_resolved.yaml (an API run): the accuracy needs your evaluation, the outputs are checked")
        return 0
    with run_cwd(args.run_dir):  # relative paths (model.path, data.path) are the run's working dir's
        bundle = instantiate(cfg.model).load(framework=adaptor)  # the run's evaluation data and metric
        if cfg.get("data") is not None:
            bundle.eval_dataloader = instantiate(cfg.data).loaders(bundle_layout(adaptor))[1]
        metric = instantiate(cfg.metric) if cfg.get("metric") is not None else bundle.metric
    metric.reset()
    for inputs, labels in bundle.eval_dataloader:
        metric.update(run(inputs), labels)
    got, reported = float(metric.result()), s.best.accuracy
    ok = abs(got - reported) <= args.atol
    print(f"reported accuracy {reported:.6f}, saved model re-evaluated {got:.6f}: {'MATCH' if ok else 'MISMATCH'}")
    return 0 if ok else 1


@contextlib.contextmanager
def run_cwd(run_dir: Path) -> Any:
    """In the directory `tune.py` ran from (Hydra records it in .hydra/hydra.yaml)."""
    hydra = run_dir / ".hydra" / "hydra.yaml"
    cwd = OmegaConf.select(OmegaConf.load(hydra), "hydra.runtime.cwd") if hydra.exists() else None
    old = os.getcwd()
    os.chdir(cwd or old)
    try:
        yield
    finally:
        os.chdir(old)


def bundle_layout(framework: str) -> str:
    return "NHWC" if framework == "tensorflow" else "NCHW"


if __name__ == "__main__":
    sys.exit(main())
