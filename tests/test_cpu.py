"""CPU feature detection: what the frameworks' kernels will do on this machine, and LPOT_CPU_ISA,
which runs an older class's real kernels on a newer CPU so that one machine tests both."""

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lpot_research.core import cpu
from lpot_research.core.errors import ConfigError
from tests.helpers import env_without_isa_cap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
x86_linux = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists(),
                               reason="CPUID and /proc/cpuinfo are read on x86-64 Linux")


def run(code: str, **env: str) -> subprocess.CompletedProcess:
    e = env_without_isa_cap()
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env={**e, "PYTHONPATH": str(ROOT), **env}, timeout=300)


@x86_linux
def test_cpuid_reads_what_the_kernel_reports():
    """On real hardware CPUID (what the frameworks' kernels read) and /proc/cpuinfo agree on every
    feature this package decides by; a wrong register or bit would break that."""
    native, proc = cpu._cpuid_flags(), cpu._proc_cpuinfo()
    assert native is not None and proc is not None
    known = set(cpu._CPUID_BITS)
    assert native[0] == proc[0] & known
    assert "avx2" in native[0], "every CPU class this project supports has AVX2"


def test_classes_follow_the_features():
    def info(*flags):
        return cpu.CpuInfo(frozenset(flags))

    avx2 = info("avx", "avx2", "fma")
    assert (avx2.isa_class, avx2.vnni, avx2.bf16, avx2.amx) == ("AVX2", False, False, False)
    assert info("avx2", "avx_vnni").vnni and not info("avx2", "avx_vnni").avx512_vnni
    skx = info("avx2", "avx512f", "avx512bw", "avx512vl")
    assert (skx.isa_class, skx.vnni) == ("AVX-512", False)
    zen4 = info("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni")
    assert (zen4.isa_class, zen4.avx512_vnni, zen4.bf16, zen4.amx) == ("AVX-512 VNNI", True, True, False)
    spr = info(*zen4.flags, "amx_int8", "amx_bf16", "amx_tile")
    assert spr.isa_class == "AMX" and spr.features() == "avx2 avx512 vnni bf16 amx"
    assert info("avx512_vnni").vnni is False  # VNNI without the AVX-512 core is not usable


@x86_linux
def test_the_cap_narrows_the_features_and_sets_the_frameworks_switches():
    r = run("""
        import os
        from lpot_research.core.cpu import cpu_info
        assert "FBGEMM_ENABLE_INSTRUCTIONS" in os.environ  # set by importing the package
        c = cpu_info()
        print(c.isa_class, c.vnni, c.bf16, bool(c.capped_from), os.environ["FBGEMM_ENABLE_INSTRUCTIONS"],
              os.environ["ONEDNN_MAX_CPU_ISA"], os.environ["DNNL_MAX_CPU_ISA"])
    """, LPOT_CPU_ISA="avx2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["AVX2", "False", "False", "True", "AVX2", "AVX2", "AVX2"]


def test_an_unknown_cap_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("LPOT_CPU_ISA", "avx9000")
    cpu.cpu_info.cache_clear()
    try:
        with pytest.raises(ConfigError, match="LPOT_CPU_ISA='avx9000' is unknown; valid choices: avx2, avx2_vnni"):
            cpu.cpu_info()
    finally:
        cpu.cpu_info.cache_clear()


@x86_linux
def test_under_the_avx2_cap_pytorch_runs_saturating_avx2_kernels():
    """The cap is real: FBGEMM's AVX2 kernel sums u8 x s8 pairs into 16 bits with saturation, so
    255 x 127 x 64 comes out as 32 x 255 x 127 (half); AVX512-VNNI's is exact. This is why the
    PyTorch adaptor narrows activations to 7 bits on such CPUs."""
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'lpot-research[pytorch]')")
    code = """
        import lpot_research
        import torch
        torch.backends.quantized.engine = "fbgemm"
        x = torch.quantize_per_tensor(torch.ones(4, 64), 1 / 255, 0, torch.quint8)
        w = torch.quantize_per_tensor(torch.ones(8, 64), 1 / 127, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
        print(torch.ops.quantized.linear(x, packed, 1.0, 0).dequantize()[0, 0].item())
    """
    capped = run(code, LPOT_CPU_ISA="avx2")
    assert capped.returncode == 0, capped.stderr
    assert float(capped.stdout) == 32.0
    if cpu.native_cpu_info().avx512_vnni:
        vnni = run(code)
        assert float(vnni.stdout) == 64.0
