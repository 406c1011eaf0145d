"""What this CPU offers ONNX Runtime's integer kernels: the one probe the backends consult.

On x86-64, ONNX Runtime's fused INT8 kernels (QLinearConv, QGemm, ...) multiply u8 activations by
s8 weights. Without VNNI they use VPMADDUBSW, which adds each pair of u8*s8 products into a
16-bit lane and saturates it at 32767: a Q/DQ model whose weights use the full [-127, 127] range
(ours, TensorRT's) gets wrong sums (logits cosine 0.76 against the model run as written,
EfficientNet-Lite0, BENCHMARKS.md, "INT8 on the CPU"). VNNI (VPDPBUSD, AVX512-VNNI or AVX-VNNI) and AMX
accumulate in 32 bits and are exact. On other architectures we have not checked the kernels, so
they count as not exact.

The probe reads ``/proc/cpuinfo`` once per process; :func:`parse_cpuinfo` is the pure part.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

__all__ = ["EXACT_INT8_FLAGS", "CpuFeatures", "cpu_features", "parse_cpuinfo"]

# The cpuinfo flags whose integer dot products accumulate in 32 bits (no 16-bit saturation).
EXACT_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
# Shown in descriptions: what a reader needs to place a CPU (and the flags above).
_NOTABLE = ("avx2", "avx512f", "avx512bw", *EXACT_INT8_FLAGS, "asimddp", "i8mm")


@dataclass(frozen=True)
class CpuFeatures:
    """This CPU's architecture (``platform.machine()``) and its cpuinfo flags."""

    machine: str
    flags: frozenset[str]

    @property
    def exact_int8_flags(self) -> tuple[str, ...]:
        """The flags present that make ONNX Runtime's integer kernels exact."""
        return tuple(f for f in EXACT_INT8_FLAGS if f in self.flags) if self.is_x86 else ()

    @property
    def exact_int8(self) -> bool:
        """Whether ONNX Runtime's fused INT8 kernels give the Q/DQ model's own result here."""
        return bool(self.exact_int8_flags)

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")

    def describe(self) -> str:
        """One line, e.g. ``x86_64 with avx2, without VNNI/AMX``."""
        notable = [f for f in _NOTABLE if f in self.flags]
        head = f"{self.machine or 'unknown CPU'}" + (f" with {', '.join(notable)}" if notable else "")
        if self.exact_int8:
            return head
        if self.is_x86:
            return f"{head}, without VNNI/AMX"
        return f"{head}; its integer kernels are not verified exact"


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """The features in ``/proc/cpuinfo`` text: the first ``flags`` (x86) or ``Features`` (Arm)
    line; every core of a machine reports the same."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return CpuFeatures(machine, frozenset(value.split()))
    return CpuFeatures(machine, frozenset())


@functools.cache
def cpu_features() -> CpuFeatures:
    """This machine's features (read once). Where ``/proc/cpuinfo`` cannot be read (macOS,
    Windows), no flags: the integer kernels then count as not exact."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())
