"""What ONNX Runtime's and LiteRT's INT8 kernels really do on this CPU's class.

Both pick their kernels from CPUID and ignore LPOT_CPU_ISA, so each expectation here reads the class
from `native_cpu_info()` (never the cap). `make test` runs this module natively and then again under
`qemu-x86_64 -cpu EPYC-Rome`, an AVX2-only CPUID (LPOT_EMULATED_CPU=AVX2 says so), where the kernels
are the AVX2 ones whatever the host. The quantized models and FP32 accuracies come from one native child
process (tests/kernel_artifacts.py): under emulation PyTorch and TensorFlow would take minutes to import
and FP32 kernels run ~500x slower, while the INT8 kernels under test run the 540 evaluation samples in
~15 s.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lpot_research.core.cpu import native_cpu_info

ROOT = Path(__file__).resolve().parents[1]
EMULATED = os.environ.get("LPOT_EMULATED_CPU", "")
NATIVE = native_cpu_info()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """The models and accuracies; `make test` builds them once for its native pass and its qemu stage
    (LPOT_KERNEL_ARTIFACTS, emptied at its start; missing.txt is written last)."""
    shared = os.environ.get("LPOT_KERNEL_ARTIFACTS")
    out = Path(shared) if shared else tmp_path_factory.mktemp("kernel_artifacts")
    if (out / "missing.txt").exists():
        return out
    r = subprocess.run([sys.executable, "-m", "tests.kernel_artifacts", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0 and "No module named 'torch'" in r.stderr:
        pytest.skip("digits_cnn is built with PyTorch (pip install 'lpot-research[pytorch]')")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def need(artifacts: Path, framework: str) -> tuple[dict[str, np.ndarray], float]:
    """The evaluation arrays and the FP32 model's accuracy on them, for `framework`."""
    if framework in (artifacts / "missing.txt").read_text().split():
        pytest.skip(f"{framework} is not installed (pip install 'lpot-research[{framework}]')")
    layout = "nchw" if framework == "onnxrt" else "nhwc"
    fp32 = json.loads((artifacts / "accuracy.json").read_text())[framework]
    return dict(np.load(artifacts / f"digits_{layout}.npz")), fp32


def kept(int8: float, fp32: float) -> bool:
    """INT8 keeps FP32's accuracy (within 1%)."""
    return int8 >= 0.99 * fp32


def test_the_emulated_cpu_is_the_class_the_stage_pins():
    """Under `make test`'s qemu stage, CPUID is EPYC-Rome's (AVX2, no AVX-512, no VNNI) and the frameworks
    read that, not the host's class (/proc/cpuinfo still shows the host: the package takes both)."""
    if not EMULATED:
        pytest.skip("runs under qemu-x86_64 only (make test's AVX2 CPUID stage sets LPOT_EMULATED_CPU)")
    assert NATIVE.isa_class == EMULATED and not NATIVE.vnni and not NATIVE.avx512


# ------------------------------------------------------------------ ONNX Runtime (MLAS)
@functools.cache  # the automatic choice's test runs the same model as one of the reduce-range cases
def ort_run(artifacts: Path, reduce_range: bool) -> tuple[int, float, float]:
    """The peak |weight| of the quantized digits_cnn, its accuracy on this CPU's kernels, FP32's."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    d, fp32 = need(artifacts, "onnxrt")
    path = artifacts / f"digits_int8_rr{int(reduce_range)}.onnx"
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: d["x"]})[0]
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights), float((out.argmax(1) == d["y"]).mean()), fp32


FULL_RANGE = ("8bit-weights-keep-accuracy-with-vnni" if NATIVE.vnni
              else f"8bit-weights-saturate-on-{NATIVE.isa_class.replace(' ', '-')}")


@pytest.mark.parametrize("reduce_range", [True, False], ids=["7bit-weights-keep-accuracy", FULL_RANGE])
def test_reduce_range_gives_7_bit_weights(artifacts, reduce_range):
    """Without VNNI, MLAS's U8S8 kernels sum pairs of u8 x s8 products into int16 with saturation
    (VPMADDUBSW): digits_cnn with full-range weights scored 0.72-0.79 against FP32 0.989 on AVX2 EPYCs,
    and 0.787 under EPYC-Rome's CPUID on an AMX host. 7-bit weights (|q| <= 64) keep 255 x 64 x 2 inside
    int16, and the accuracy with them; with VNNI (32-bit accumulation) full-range weights keep it too."""
    peak, int8, fp32 = ort_run(artifacts, reduce_range)
    assert peak <= 64 if reduce_range else peak == 127
    if reduce_range or NATIVE.vnni:
        assert kept(int8, fp32), (int8, fp32)
    else:
        assert int8 < fp32 - 0.05, f"no saturation on {NATIVE.describe()}: {int8} vs FP32 {fp32}"


def test_the_automatic_choice_keeps_accuracy_on_this_cpu(artifacts):
    """reduce_range=None (the default) follows this package's view of the CPU, which is what the kernels
    read: 7-bit weights where they would saturate, and the model quantized so keeps its accuracy."""
    from lpot_research.adaptors.onnxrt import OnnxRuntimeAdaptor
    from lpot_research.core.cpu import cpu_info

    choice = OnnxRuntimeAdaptor()._reduce_range()
    assert choice is (not cpu_info().vnni)
    if not NATIVE.vnni:
        assert choice, "the AVX2 kernels saturate with 8-bit weights: the default must reduce the range"
    peak, int8, fp32 = ort_run(artifacts, choice)
    assert kept(int8, fp32), (choice, int8, fp32)


# ------------------------------------------------------------------ LiteRT (XNNPACK)
@pytest.mark.parametrize("cls", [NATIVE.isa_class.replace(" ", "-")])
def test_tflite_full_integer_model_keeps_accuracy_on_this_cpu(artifacts, cls):
    """XNNPACK's QS8 kernels widen to 16 bits before multiplying (no saturating pair sums) on AVX2 as on
    AVX-512 VNNI, so the fully INT8 model keeps FP32's accuracy on either class."""
    from ai_edge_litert.interpreter import Interpreter

    d, fp32 = need(artifacts, "tensorflow")
    it = Interpreter(model_path=str(artifacts / "digits_int8.tflite"), num_threads=1)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.float32  # float in, INT8 inside (the adaptor's full-integer conversion)
    it.resize_tensor_input(inp["index"], d["x"].shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], d["x"].astype(np.float32))
    it.invoke()
    int8 = float((it.get_tensor(out["index"]).argmax(1) == d["y"]).mean())
    assert fp32 > 0.95 and kept(int8, fp32), (int8, fp32)
