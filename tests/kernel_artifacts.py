"""Models and data for tests/test_cpu_kernels.py, built natively: `python -m tests.kernel_artifacts DIR`.

The kernel tests run under `qemu-x86_64 -cpu EPYC-Rome` (an AVX2-only CPUID) in `make test`'s last stage,
where importing PyTorch or TensorFlow and exporting would take minutes of emulation; a process started from
there runs natively (qemu-user emulates only the process it was given), so the test session builds these
files with one native child and emulates only ONNX Runtime's and LiteRT's kernels.

Quantizing is a graph transformation whose numbers come from FP32 calibration runs; what depends on the
CPU class is how the INT8 kernels then compute. So the child also quantizes, and measures FP32 accuracy
(FP32 kernels run ~500x slower under emulation: FMA is emulated in software; INT8 ones ~15x):

- digits_int8_rr0.onnx, digits_int8_rr1.onnx: digits_cnn exported and quantized by the ONNX Runtime
  adaptor's model-wise config with full-range (8-bit) and reduced-range (7-bit) weights;
- digits_int8.tflite: the Keras counterpart fully INT8-quantized by the TensorFlow adaptor;
- digits_nchw.npz / digits_nhwc.npz: the evaluation arrays; accuracy.json: the FP32 models' top-1 on
  them (ONNX Runtime, LiteRT);

each part only when its framework is installed (missing.txt names the ones that were not).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

STATIC = "post_training_static_quant"


def _eval_arrays(bundle) -> dict[str, np.ndarray]:
    xs, ys = zip(*bundle.eval_dataloader, strict=True)
    return {"x": np.concatenate(xs), "y": np.concatenate(ys)}


def _model_wise(adaptor, model):
    from lpot_research.quant.space import build_space

    return build_space(adaptor.capabilities(model, STATIC, None), STATIC, 64).model_wise_configs()[0]


def build(out: Path) -> None:
    import onnx

    from lpot_research.measure.metrics import TopK
    from lpot_research.models.digits import DigitsCNN

    out.mkdir(parents=True, exist_ok=True)
    missing, accuracy = [], {}
    if importlib.util.find_spec("onnxruntime"):
        from lpot_research.adaptors.onnxrt import OnnxRuntimeAdaptor

        bundle = DigitsCNN().load("pytorch")
        for reduce_range in (False, True):
            a = OnnxRuntimeAdaptor(threads=1, reduce_range=reduce_range)
            model = a.prepare(bundle.model, bundle.example_inputs)
            q = a.quantize(model, _model_wise(a, model), bundle.calib_dataloader, None)
            onnx.save(q.proto, str(out / f"digits_int8_rr{int(reduce_range)}.onnx"))
        accuracy["onnxrt"] = a.evaluate(model, bundle.eval_dataloader, TopK(1))
        np.savez(out / "digits_nchw.npz", **_eval_arrays(bundle))
    else:
        missing.append("onnxruntime")
    if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("ai_edge_litert"):
        from lpot_research.adaptors.tensorflow import TensorFlowAdaptor

        bundle = DigitsCNN().load("tensorflow")
        a = TensorFlowAdaptor(threads=1)
        model = a.prepare(bundle.model, bundle.example_inputs)
        q = a.quantize(model, _model_wise(a, model), bundle.calib_dataloader, None)
        (out / "digits_int8.tflite").write_bytes(q.content)
        accuracy["tensorflow"] = a.evaluate(model, bundle.eval_dataloader, TopK(1))
        np.savez(out / "digits_nhwc.npz", **_eval_arrays(bundle))
    else:
        missing.append("tensorflow")
    (out / "accuracy.json").write_text(json.dumps(accuracy))
    (out / "missing.txt").write_text("\n".join(missing))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
