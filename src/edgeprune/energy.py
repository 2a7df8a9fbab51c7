"""Energy per inference: an estimate from operation counts, and a measurement from the CPU's RAPL counters.

**Estimate** (``energy_estimate``): 45 nm figures (Horowitz 2014, as used by Han et al. 2015), not a
measurement: 4.6 pJ per fp32 multiply-add (3.7 pJ multiply + 0.9 pJ add) and 640 pJ per 32-bit DRAM
access, with every weight and activation word moved once, i.e. ``memory_bytes / 4`` words of the SPEC
complexity totals:

    E = 4.6 pJ x MACs + 640 pJ x (params + output activations)

An int8 model (an .onnx file quantized by ``edgeprune.quantize``, counted by ``edgeprune.onnx_graph``)
takes the 8-bit figures of the same table: 0.2 pJ per 8-bit integer multiply + 0.03 pJ per 8-bit add
= 0.23 pJ per MAC, and DRAM traffic per byte actually stored, 640 pJ / 4 = 160 pJ per byte, with
weights at 1 byte, biases at 4 and quantized activations at 1 (``memory_bytes`` of its profile):

    E = 0.23 pJ x MACs + 160 pJ x memory_bytes

The DRAM term is the same formula in both cases (640 pJ per 4 bytes); a graph with both kinds of
layers ("mixed") prices each layer's MACs at its own figure.

**Measurement** (``read_rapl``, ``RaplMeter``): the Linux powercap interface exposes Intel's (and
recent AMD's) Running Average Power Limit energy counters as ``/sys/class/powercap/intel-rapl:N``
folders (``name``: ``package-N``, ``psys``, ...; ``energy_uj``: a wrapping microjoule counter;
``max_energy_range_uj``: where it wraps) with subdomains ``intel-rapl:N:M`` (``core``, ``uncore``,
``dram``). The package domains summed are the CPU's energy. It is the whole package's energy while
the work ran - idle cores and other processes included - so it is a measurement of the machine, not
of the model alone. ``energy_uj`` is readable by root only on most kernels since 5.10 (CVE-2020-8694);
an unreadable counter is reported with its reason, never replaced by the estimate.

This module imports neither torch nor edgeprune at load time: the measuring process (see
``edgeprune.backends``) loads this file by path to read the counters.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PJ_PER_MAC = 4.6  # 3.7 pJ fp32 multiply + 0.9 pJ fp32 add, 45 nm
PJ_PER_DRAM_WORD = 640.0  # one 32-bit DRAM access, 45 nm
ENERGY_SOURCE = "45 nm, Horowitz 2014"
PJ_PER_INT8_MAC = 0.23  # 0.2 pJ 8-bit integer multiply + 0.03 pJ 8-bit add, 45 nm
PJ_PER_DRAM_BYTE = PJ_PER_DRAM_WORD / 4  # 160 pJ: the same DRAM figure per byte stored
ENERGY_NOTE = (
    f"estimate ({ENERGY_SOURCE}): {PJ_PER_MAC} pJ per fp32 multiply-add + {PJ_PER_DRAM_WORD:g} pJ per "
    "32-bit DRAM word, every weight and activation moved once (memory_bytes / 4 words), batch 1"
)
INT8_ENERGY_NOTE = (
    f"estimate ({ENERGY_SOURCE}): {PJ_PER_INT8_MAC} pJ per int8 multiply-add (0.2 pJ multiply + 0.03 pJ add) + "
    f"{PJ_PER_DRAM_BYTE:g} pJ per DRAM byte (640 pJ per 32-bit word), every weight and activation moved once "
    "at its stored width (memory_bytes), batch 1"
)
POWERCAP_ENV = "EDGEPRUNE_POWERCAP"  # another powercap root (a test's fixture folder)
POWERCAP_ROOT = Path("/sys/class/powercap")
RAPL_NOTE = "whole-package energy while the loop ran: includes idle cores and other processes"
_DOMAIN_FOLDER = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


def _error(message: str) -> Exception:
    from edgeprune.errors import EdgepruneError

    return EdgepruneError(message)


# -- the estimate -----------------------------------------------------------------------------


def energy_estimate(profile: Any, precision: str | None = None) -> dict:
    """Energy per inference in microjoules from a Profile (or a totals dict): compute + DRAM, fp32 or int8 figures.

    A Profile's layers with 1-byte weights are priced as int8 MACs, the rest as fp32; a totals dict is
    all one ``precision`` (its "precision" key, else fp32). ``precision`` overrides either.
    """
    totals = profile.totals() if hasattr(profile, "totals") else dict(profile)
    macs = int(totals["flops"])
    precision = precision or getattr(profile, "precision", None) or totals.get("precision", "fp32")
    if precision not in ("fp32", "int8", "mixed"):
        raise _error(f"unknown precision '{precision}'; choose from: fp32, int8")
    if precision == "mixed":
        if not hasattr(profile, "layers"):
            raise _error("a mixed-precision energy estimate needs the profile's layers, not its totals")
        int8_macs = sum(layer.flops for layer in profile.layers if layer.weight_bytes == 1)
    else:
        int8_macs = macs if precision == "int8" else 0
    memory_bytes = int(totals["memory_bytes"])
    compute_uj = (PJ_PER_MAC * (macs - int8_macs) + PJ_PER_INT8_MAC * int8_macs) * 1e-6
    dram_uj = PJ_PER_DRAM_WORD * (memory_bytes / 4) * 1e-6
    out = {
        "total_uj": compute_uj + dram_uj,
        "compute_uj": compute_uj,
        "dram_uj": dram_uj,
        "macs": macs,
        "int8_macs": int8_macs,
        "fp32_macs": macs - int8_macs,
        "dram_words": memory_bytes / 4,
        "dram_bytes": memory_bytes,
        "precision": precision,
        "source": "estimate",
    }
    if precision == "fp32":
        constants = {"pj_per_mac": PJ_PER_MAC, "pj_per_dram_word": PJ_PER_DRAM_WORD, "source": ENERGY_SOURCE}
        return {**out, "constants": constants, "model": ENERGY_NOTE}
    constants = {"pj_per_mac": PJ_PER_INT8_MAC, "pj_per_dram_byte": PJ_PER_DRAM_BYTE, "source": ENERGY_SOURCE}
    if precision == "mixed":
        constants["pj_per_fp32_mac"] = PJ_PER_MAC
    note = INT8_ENERGY_NOTE + ("; fp32 layers at 4.6 pJ per MAC" if precision == "mixed" else "")
    return {**out, "constants": constants, "model": note}


def estimate_lines(e: dict) -> str:
    """The energy estimate of a bench result, with its constants, as two lines of text."""
    if e.get("precision", "fp32") == "fp32":
        return (
            f"energy per inference: {e['total_uj']:.1f} uJ = compute {e['compute_uj']:.1f} uJ "
            f"({e['macs']:,} MACs x {PJ_PER_MAC} pJ) + DRAM {e['dram_uj']:.1f} uJ "
            f"({e['dram_words']:,.0f} 32-bit words x {PJ_PER_DRAM_WORD:g} pJ)\n"
            f"  estimate, not a measurement: {ENERGY_SOURCE} figures (fp32 multiply 3.7 pJ + add 0.9 pJ; "
            "DRAM 640 pJ per 32-bit word), every weight and activation moved once, batch 1"
        )
    fp32 = f" + {e['fp32_macs']:,} fp32 MACs x {PJ_PER_MAC} pJ" if e["fp32_macs"] else ""
    return (
        f"energy per inference ({e['precision']}): {e['total_uj']:.1f} uJ = compute {e['compute_uj']:.1f} uJ "
        f"({e['int8_macs']:,} int8 MACs x {PJ_PER_INT8_MAC} pJ{fp32}) + DRAM {e['dram_uj']:.1f} uJ "
        f"({e['dram_bytes']:,} bytes x {PJ_PER_DRAM_BYTE:g} pJ)\n"
        f"  estimate, not a measurement: {ENERGY_SOURCE} figures (8-bit multiply 0.2 pJ + add 0.03 pJ; "
        "DRAM 640 pJ per 32-bit word = 160 pJ per byte), every weight and activation moved once at its "
        "stored width, batch 1"
    )


def measured_lines(records: dict[str, dict]) -> list[str]:
    """One line per backend's measured (RAPL) energy record, or one saying why there is none."""
    missing = {backend: r["reason"] for backend, r in records.items() if not r.get("available", True)}
    if missing and len(missing) == len(records) and len(set(missing.values())) == 1:
        return [f"measured energy (RAPL): none, {next(iter(missing.values()))}"]
    lines = []
    for backend, r in records.items():
        if backend in missing:
            lines.append(f"measured energy ({backend}, RAPL): none, {r['reason']}")
            continue
        parts = ", ".join(f"{key} {uj:.1f}" for key, uj in r["domains"].items())
        lines.append(
            f"measured energy per inference ({backend}, RAPL): {r['uj_per_inference']:.1f} uJ (domains, uJ: "
            f"{parts}; {r['average_w']:.1f} W over {r['seconds']:.2f} s); {r['note']}"
        )
    return lines


# -- the measurement: RAPL counters -----------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    """One RAPL energy counter: its kernel name, its folder, its reading (None: unreadable, see reason)."""

    key: str  # unique in a snapshot: "package-0", "package-0/core", "package-0/dram", "psys"
    name: str  # as the kernel names it
    folder: str
    energy_uj: int | None
    max_energy_range_uj: int | None
    reason: str | None = None  # why energy_uj (or max_energy_range_uj) could not be read


def powercap_root() -> Path:
    """Where the powercap folders are: $EDGEPRUNE_POWERCAP, else /sys/class/powercap."""
    return Path(os.environ.get(POWERCAP_ENV) or POWERCAP_ROOT)


def read_rapl(root: Path = POWERCAP_ROOT) -> dict[str, RaplDomain]:
    """Every ``intel-rapl:N`` and ``intel-rapl:N:M`` domain under ``root`` with its counter; never raises."""
    return rapl_snapshot(root)[0]


def rapl_snapshot(root: Path = POWERCAP_ROOT) -> tuple[dict[str, RaplDomain], str | None]:
    """The domains under ``root`` and why they cannot measure the CPU's energy (None when they can)."""
    root = Path(root)
    if not root.is_dir():
        return {}, f"{root}: no such folder (no powercap interface: a VM, a container, or no intel_rapl driver)"
    try:
        folders = _domain_folders(root)
    except OSError as e:
        return {}, f"{root}: cannot list it ({e.strerror or e})"
    if not folders:
        return {}, f"{root}: no intel-rapl domains (not an Intel/AMD CPU with the intel_rapl driver, or a VM)"
    names = {f.name: _read_text(f / "name")[0] or f.name for f in folders.values()}
    domains: dict[str, RaplDomain] = {}
    for folder_name, folder in sorted(folders.items(), key=lambda kv: _order(kv[0])):
        parent = folder_name.rsplit(":", 1)[0] if folder_name.count(":") == 2 else None
        key = names[folder_name] if parent is None else f"{names.get(parent, parent)}/{names[folder_name]}"
        key = key if key not in domains else f"{key} ({folder_name})"
        domains[key] = _read_domain(key, names[folder_name], folder)
    packages = [d for d in domains.values() if d.name.startswith("package-")]
    if not packages:
        return domains, f"{root}: no package-N domain among {', '.join(domains)}"
    unreadable = [d.reason for d in packages if d.reason]
    return domains, (unreadable[0] if unreadable else None)


def _domain_folders(root: Path) -> dict[str, Path]:
    """intel-rapl:N folders under root, and their intel-rapl:N:M subfolders (listed at either level)."""
    found = {p.name: p for p in root.iterdir() if _DOMAIN_FOLDER.match(p.name)}
    for top in [p for name, p in found.items() if name.count(":") == 1]:
        with_subs = [p for p in top.iterdir() if _DOMAIN_FOLDER.match(p.name)] if top.is_dir() else []
        for sub in with_subs:
            found.setdefault(sub.name, sub)  # /sys/class/powercap lists subdomains at the top too
    return {name: p for name, p in found.items() if p.is_dir()}


def _order(folder_name: str) -> tuple[int, ...]:
    """intel-rapl:0, intel-rapl:0:0, intel-rapl:0:1, intel-rapl:1, ... in numeric order."""
    match = _DOMAIN_FOLDER.match(folder_name)
    return tuple(int(g) if g is not None else -1 for g in match.groups())  # type: ignore[union-attr]


def _read_text(path: Path) -> tuple[str | None, str | None]:
    """A sysfs file's stripped text, or None and why not."""
    try:
        return path.read_text().strip(), None
    except PermissionError:
        return None, (
            f"{path}: permission denied (RAPL counters are readable by root only on most kernels since 5.10, "
            "CVE-2020-8694; run as root or make energy_uj readable)"
        )
    except FileNotFoundError:
        return None, f"{path}: missing"
    except OSError as e:
        return None, f"{path}: cannot read it ({e.strerror or e})"


def _read_counter(path: Path) -> tuple[int | None, str | None]:
    """A sysfs counter as an integer, or None and why not."""
    text, reason = _read_text(path)
    if text is None:
        return None, reason
    try:
        return int(text), None
    except ValueError:
        return None, f"{path}: not a counter ({text[:40]!r})"


def _read_domain(key: str, name: str, folder: Path) -> RaplDomain:
    """One domain's counter and wrap range, read now."""
    energy, reason = _read_counter(folder / "energy_uj")
    top, range_reason = _read_counter(folder / "max_energy_range_uj")
    return RaplDomain(key, name, str(folder), energy, top, reason or range_reason)


class RaplMeter:
    """The RAPL energy used between ``start()`` and ``stop()``, in microjoules per domain; never raises."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else powercap_root()
        self._before: dict[str, RaplDomain] = {}
        self._reason: str | None = "not started"
        self._t0 = 0.0

    def start(self) -> None:
        """Take the first snapshot."""
        self._before, self._reason = rapl_snapshot(self.root)
        self._t0 = time.perf_counter()

    def stop(self) -> dict:
        """Energy since ``start()``: {"available": True, "package_uj", "domains_uj", "seconds"} or why none."""
        seconds = time.perf_counter() - self._t0
        if self._reason is not None:
            return {"available": False, "reason": self._reason}
        after, reason = rapl_snapshot(self.root)
        if reason is not None:
            return {"available": False, "reason": reason}
        used: dict[str, float] = {}
        for key, old in self._before.items():
            new = after.get(key)
            if new is not None and new.reason is None and old.reason is None:
                used[key] = float(counter_delta(old.energy_uj, new.energy_uj, new.max_energy_range_uj))
        packages = [key for key, d in self._before.items() if d.name.startswith("package-") and key in used]
        if not packages:
            return {"available": False, "reason": f"{self.root}: the package domains changed while measuring"}
        package_uj = sum(used[key] for key in packages)
        return {"available": True, "package_uj": package_uj, "domains_uj": used, "seconds": seconds}


def counter_delta(before: int, after: int, max_range: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 past ``max_range``."""
    delta = after - before
    return delta + max_range if delta < 0 else delta


def rapl_record(reading: dict, inferences: int) -> dict:
    """The measured energy record of a bench loop: per inference, per domain, with what it includes."""
    if not reading.get("available"):
        return {"source": "rapl", "available": False, "reason": reading.get("reason", "not measured")}
    n = max(inferences, 1)
    seconds = reading["seconds"]
    return {
        "source": "rapl",
        "available": True,
        "uj_per_inference": reading["package_uj"] / n,
        "domains": {key: uj / n for key, uj in reading["domains_uj"].items()},
        "total_uj": reading["package_uj"],
        "inferences": inferences,
        "seconds": seconds,
        "average_w": reading["package_uj"] * 1e-6 / seconds if seconds > 0 else 0.0,
        "note": RAPL_NOTE,
    }


__all__ = [
    "ENERGY_NOTE",
    "INT8_ENERGY_NOTE",
    "PJ_PER_DRAM_BYTE",
    "PJ_PER_DRAM_WORD",
    "PJ_PER_INT8_MAC",
    "PJ_PER_MAC",
    "RaplDomain",
    "RaplMeter",
    "counter_delta",
    "energy_estimate",
    "rapl_record",
    "rapl_snapshot",
    "read_rapl",
]
