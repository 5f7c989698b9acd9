"""What this CPU can do for low-precision inference, read the way the frameworks' kernels read it.

ONNX Runtime (MLAS), PyTorch (FBGEMM / oneDNN), TensorFlow Lite (XNNPACK / ruy) and MXNet (oneDNN) pick
their INT8 and BF16 kernels from the CPUID instruction at run time. The features that change what a
quantizer should do:

- VNNI (AVX512-VNNI, or AVX-VNNI on AVX2-only parts): u8 x s8 products are accumulated in 32 bits. Without
  it, the AVX2 / AVX-512 kernels sum pairs of u8 x s8 products into 16 bits with saturation
  (VPMADDUBSW), so 8-bit activations times 8-bit weights can overflow: one of the two must lose a bit
  (PyTorch's `reduce_range` narrows activations to 7 bits, ONNX Runtime's narrows weights).
- AVX512-BF16 or AMX-BF16: bfloat16 matmuls run natively; without them BF16 is emulated and slower
  than FP32, so it is no use as a fallback precision.
- AMX-INT8: tile matmuls (Sapphire Rapids and later); INT8 gains most there.

`cpu_info()` asks CPUID itself (a few bytes of machine code run through ctypes) and, on Linux, keeps
only what the kernel also reports in /proc/cpuinfo (an OS that does not save AVX-512 or AMX state
makes those unusable). Where CPUID cannot be run, /proc/cpuinfo alone decides.

`LPOT_CPU_ISA=avx2` (or avx2_vnni, avx512, avx512_vnni, avx512_bf16) caps what this package assumes to
that class, and caps PyTorch's and MXNet's kernels with their own switches (FBGEMM_ENABLE_INSTRUCTIONS,
ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA) when the process has not set those itself (at import of
lpot_research, so set it before the process starts): a newer CPU then
runs the older class's real INT8 kernels, so one machine can test both. ONNX Runtime and TensorFlow
Lite have no such switch; under a cap they keep their own kernels and only this package's choices
(e.g. ONNX Runtime's reduce_range) follow the cap.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
from dataclasses import dataclass, replace

from lpot_research.core.errors import ConfigError

# Linux /proc/cpuinfo flag names of the features read from CPUID: (leaf, subleaf, register, bit).
_CPUID_BITS = {
    "fma": (1, 0, "ecx", 12),
    "avx": (1, 0, "ecx", 28),
    "avx2": (7, 0, "ebx", 5),
    "avx512f": (7, 0, "ebx", 16),
    "avx512bw": (7, 0, "ebx", 30),
    "avx512vl": (7, 0, "ebx", 31),
    "avx512_vnni": (7, 0, "ecx", 11),
    "amx_bf16": (7, 0, "edx", 22),
    "amx_tile": (7, 0, "edx", 24),
    "amx_int8": (7, 0, "edx", 25),
    "avx_vnni": (7, 1, "eax", 4),
    "avx512_bf16": (7, 1, "eax", 5),
}
_XCR0_AVX = 0b110  # SSE and AVX register state saved by the OS
_XCR0_AVX512 = 0b11100000  # opmask, ZMM_Hi256, Hi16_ZMM
_XCR0_AMX = (1 << 17) | (1 << 18)  # XTILECFG, XTILEDATA

# System V x86-64: void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])
#   push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid;
#   mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("5389f889f14989d00fa241890041895804418948084189500c5bc3")
# uint64 xgetbv0(void): xor ecx, ecx; xgetbv; shl rdx, 32; or rax, rdx; ret
_XGETBV_CODE = bytes.fromhex("31c90f01d048c1e2204809d0c3")


_AVX2 = frozenset({"avx", "avx2", "fma"})
_AVX512 = _AVX2 | {"avx512f", "avx512bw", "avx512vl"}
# LPOT_CPU_ISA value -> (the flags it keeps at most, the frameworks' own ISA switches for that class)
# (ATEN_CPU_CAPABILITY: ATen's kernels and Inductor's generated C++ code; oneDNN's and FBGEMM's their own)
ISA_CAPS: dict[str, tuple[frozenset[str], dict[str, str]]] = {
    "avx2": (_AVX2, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                     "ATEN_CPU_CAPABILITY": "avx2"}),
    "avx2_vnni": (_AVX2 | {"avx_vnni"}, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI",
                                         "ATEN_CPU_CAPABILITY": "avx2"}),
    "avx512": (_AVX512, {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
                         "ATEN_CPU_CAPABILITY": "avx512"}),
    "avx512_vnni": (_AVX512 | {"avx512_vnni"},
                    {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
                     "ATEN_CPU_CAPABILITY": "avx512"}),
    "avx512_bf16": (_AVX512 | {"avx512_vnni", "avx512_bf16"},
                    {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
                     "ATEN_CPU_CAPABILITY": "avx512"}),
}
ISA_ENV = "LPOT_CPU_ISA"


class _Native:
    """Two tiny functions in an executable page (kept alive with the object)."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._page.write(_CPUID_CODE + _XGETBV_CODE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(base)
        self._xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64)(base + len(_CPUID_CODE))

    def cpuid(self, leaf: int, subleaf: int = 0) -> dict[str, int]:
        out = (ctypes.c_uint32 * 4)()
        self._cpuid(leaf, subleaf, out)
        return dict(zip(("eax", "ebx", "ecx", "edx"), out, strict=True))

    def xgetbv0(self) -> int:
        return int(self._xgetbv())


def _cpuid_flags() -> tuple[frozenset[str], str] | None:
    """Feature flags and processor name from CPUID (None where it cannot be run: not x86-64, or no
    executable memory)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        native = _Native()
        leaf0 = native.cpuid(0)
        vendor = b"".join(leaf0[r].to_bytes(4, "little") for r in ("ebx", "edx", "ecx")).decode("ascii", "replace")
        regs = {(leaf, sub): native.cpuid(leaf, sub) if leaf0["eax"] >= leaf else {}
                for leaf, sub in {(1, 0), (7, 0), (7, 1)}}
        if regs[(7, 0)] and regs[(7, 0)]["eax"] < 1:
            regs[(7, 1)] = {}  # leaf 7 has no subleaf 1 on this CPU
        flags = {name for name, (leaf, sub, reg, bit) in _CPUID_BITS.items()
                 if regs[(leaf, sub)] and regs[(leaf, sub)][reg] >> bit & 1}
        osxsave = regs[(1, 0)].get("ecx", 0) >> 27 & 1
        xcr0 = native.xgetbv0() if osxsave else 0
        if native.cpuid(0x80000000)["eax"] >= 0x80000004:  # the brand string
            raw = b"".join(v.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004)
                           for v in native.cpuid(leaf).values())
            vendor = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip() or vendor
    except (OSError, ValueError, AttributeError):
        return None
    if xcr0 & _XCR0_AVX != _XCR0_AVX:
        flags -= {"avx", "avx2", "fma", "avx_vnni"}
    if xcr0 & _XCR0_AVX512 != _XCR0_AVX512:
        flags = {f for f in flags if not f.startswith("avx512")}
    if xcr0 & _XCR0_AMX != _XCR0_AMX:
        flags = {f for f in flags if not f.startswith("amx")}
    return frozenset(flags), vendor


def _proc_cpuinfo() -> tuple[frozenset[str], str] | None:
    """Flags and model name from /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return (flags, model) if flags else None


@dataclass(frozen=True)
class CpuInfo:
    """The CPU features that decide INT8 / BF16 behaviour (Linux flag names)."""

    flags: frozenset[str]
    model: str = ""  # the processor's name (CPUID brand string, else /proc/cpuinfo's model name)
    source: str = ""  # how the flags were read
    capped_from: str = ""  # the native class when LPOT_CPU_ISA caps it

    def has(self, *names: str) -> bool:
        return any(n in self.flags for n in names)

    @property
    def avx2(self) -> bool:
        return self.has("avx2")

    @property
    def avx512(self) -> bool:
        return all(f in self.flags for f in ("avx512f", "avx512bw", "avx512vl"))

    @property
    def avx512_vnni(self) -> bool:
        return self.avx512 and self.has("avx512_vnni")

    @property
    def vnni(self) -> bool:
        """u8 x s8 dot products accumulate in 32 bits (no saturation), at 512 or 256 bits."""
        return self.avx512_vnni or self.has("avx_vnni")

    @property
    def bf16(self) -> bool:
        """Native bfloat16 matmuls (AVX512-BF16 or AMX-BF16)."""
        return self.has("avx512_bf16", "amx_bf16")

    @property
    def amx(self) -> bool:
        return self.has("amx_int8", "amx_bf16")

    @property
    def isa_class(self) -> str:
        """A short name of the class: 'AMX', 'AVX-512 VNNI', 'AVX-512', 'AVX2 VNNI', 'AVX2' or 'pre-AVX2'."""
        if self.amx:
            return "AMX"
        if self.avx512:
            return "AVX-512 VNNI" if self.avx512_vnni else "AVX-512"
        if self.avx2:
            return "AVX2 VNNI" if self.vnni else "AVX2"
        return "pre-AVX2"

    def features(self) -> str:
        """What was found, e.g. 'avx2 avx512 vnni bf16; no amx'."""
        have = {"avx2": self.avx2, "avx512": self.avx512, "vnni": self.vnni, "bf16": self.bf16, "amx": self.amx}
        yes = " ".join(k for k, v in have.items() if v) or "none of avx2/avx512/vnni/bf16/amx"
        no = " ".join(k for k, v in have.items() if not v)
        return f"{yes}; no {no}" if no else yes

    def describe(self) -> str:
        name = self.model or platform.machine() or "unknown CPU"
        cap = f", capped by {ISA_ENV} from {self.capped_from}" if self.capped_from else ""
        return f"{name} [{self.isa_class}{cap}: {self.features()}]"


def _cap() -> str:
    cap = os.environ.get(ISA_ENV, "").strip().lower()
    if cap and cap not in ISA_CAPS:
        raise ConfigError(f"{ISA_ENV}={cap!r} is unknown; valid choices: {', '.join(ISA_CAPS)}")
    return cap


def apply_isa_cap() -> None:
    """Under LPOT_CPU_ISA, set the frameworks' own ISA switches (unless the process set them), so
    their kernels are the capped class's. Runs when lpot_research is imported: the switches are
    read when a framework first picks a kernel."""
    cap = _cap()
    if cap:
        for var, value in ISA_CAPS[cap][1].items():
            os.environ.setdefault(var, value)
            if var == "ONEDNN_MAX_CPU_ISA":
                os.environ.setdefault("DNNL_MAX_CPU_ISA", value)  # the name oneDNN 1.x/2.0 (MXNet) reads


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU features (capped by LPOT_CPU_ISA when it is set)."""
    native = native_cpu_info()
    cap = _cap()
    if not cap:
        return native
    return replace(native, flags=native.flags & ISA_CAPS[cap][0], capped_from=native.isa_class)


@functools.cache
def native_cpu_info() -> CpuInfo:
    """This machine's CPU features: CPUID, narrowed to what the kernel reports where it reports."""
    native = _cpuid_flags()
    proc = _proc_cpuinfo()
    model = proc[1] if proc else ""
    if native and proc:
        # CPUID says what the processor (or an emulator) offers; /proc/cpuinfo what the OS enabled
        return CpuInfo(native[0] & proc[0], native[1] or model, "cpuid+/proc/cpuinfo")
    if native:
        return CpuInfo(native[0], native[1], "cpuid")
    if proc:
        return CpuInfo(proc[0], model, "/proc/cpuinfo")
    return CpuInfo(frozenset(), "", "unknown")


def cpu_summary() -> dict[str, str]:
    """The CPU as summary.json records it: name, class, features (and the native class under a cap)."""
    info = cpu_info()
    d = {"model": info.model, "class": info.isa_class, "features": info.features()}
    if info.capped_from:
        d["capped_from"] = info.capped_from
        d["cap"] = _cap()  # the LPOT_CPU_ISA value: what reproduces this run's kernels (verify_saved_model)
    return d
