"""What this CPU's integer instructions can do, for int8 settings that hold on the CPU a model will run on.

x86 CPUs without VNNI (AVX2-only, and AVX-512 without VNNI) multiply uint8 activations by int8 weights with
VPMADDUBSW, which adds each pair of products into a *saturating* 16-bit sum: two products of 255 x 127
(64,770) overflow it. onnxruntime's and OpenVINO's quantization guides give the remedy: 7-bit weights
(``reduce_range``), whose pair sums (at most 2 x 255 x 64 = 32,640) always fit. VNNI / AMX (VPDPBUSD,
TDPBUSD) and ARM's integer dot products accumulate in 32 bits and never saturate.

The class comes from torch's runtime dispatch (cpuid, so it reflects an emulated or masked CPU) joined
with the kernel's flags in /proc/cpuinfo (for VNNI and AMX, which torch does not report).

Imports nothing of edgeprune but its error type; torch only when asked for the class.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from edgeprune.errors import EdgepruneError

# The --target-cpu choices: ``any`` holds on every x86 and ARM CPU; ``native`` is what this CPU needs.
TARGETS = ("any", "native", "vnni", "avx2")
DEFAULT_TARGET = "any"
# Flags a report shows (lscpu / /proc/cpuinfo spelling).
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
# CPU classes whose int8 dot products accumulate in 32 bits (no 16-bit saturation).
WIDE_ACCUMULATORS = frozenset({"vnni", "amx", "arm"})


def cpu_flags() -> frozenset[str]:
    """The kernel's flags for this CPU (x86 ``flags``, ARM ``Features``), empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it, else the platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _torch_capability() -> str | None:
    """torch's dispatch level from cpuid ('AVX512', 'AVX2', 'DEFAULT', ...), None without torch."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old or absent torch: fall back to the flags alone
        return None


def cpu_class(flags: frozenset[str] | None = None, capability: str | None = None) -> str:
    """'amx', 'vnni', 'avx512', 'avx2', 'arm' or 'other': what decides int8 accuracy and speed here."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm"
    flags = cpu_flags() if flags is None else flags
    capability = (_torch_capability() if capability is None else capability) or ""
    # cpuid (torch) wins over /proc/cpuinfo where they disagree: under an emulator or a masked VM the
    # kernel's flags are the host's, while the code runs on the CPU cpuid describes.
    avx512 = "avx512f" in flags and capability.upper() not in ("AVX2", "DEFAULT", "NO AVX")
    if avx512 and {"amx_tile", "amx_int8"} <= flags:
        return "amx"
    if (avx512 and "avx512_vnni" in flags) or "avx_vnni" in flags:
        return "vnni"
    if avx512:
        return "avx512"
    if "avx2" in flags and capability.upper() != "DEFAULT":
        return "avx2"
    return "other"


def cpu_summary() -> dict:
    """This CPU's model, class and int8-relevant flags, for reports and metadata."""
    flags = cpu_flags()
    return {
        "model": cpu_model(),
        "class": cpu_class(flags),
        "machine": platform.machine(),
        "flags": {flag: flag in flags for flag in REPORTED_FLAGS},
        "cores": os.cpu_count(),
    }


def reduce_range_for(target: str, here: str | None = None) -> bool:
    """Whether int8 weights must use 7 bits for ``target`` (``here``: this CPU's class, for ``native``)."""
    if target not in TARGETS:
        raise EdgepruneError(f"unknown target CPU '{target}'; choose from: {', '.join(TARGETS)}")
    if target == "native":
        return (here or cpu_class()) not in WIDE_ACCUMULATORS
    return target in ("any", "avx2")  # 'any' must hold where it saturates: x86 without VNNI


__all__ = [
    "DEFAULT_TARGET",
    "REPORTED_FLAGS",
    "TARGETS",
    "cpu_class",
    "cpu_flags",
    "cpu_model",
    "cpu_summary",
    "reduce_range_for",
]
