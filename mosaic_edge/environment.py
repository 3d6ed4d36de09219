"""One probe of the machine, shared by ``mosaic-edge doctor`` and ``mosaic-edge profile``.

Versions of the packages that matter, the CPU and how many of its cores this process may use, and on a Jetson
the module, L4T release, power mode (``nvpmodel -q``) and current clocks from sysfs. Core module: standard
library only. Every probe is defensive: a missing tool or unreadable file yields ``None``, never an exception,
because neither a diagnosis nor a profile may fail for want of one reading.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

_JETSON_MODEL = Path("/proc/device-tree/model")
_L4T_RELEASE = Path("/etc/nv_tegra_release")


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def is_jetson() -> bool:
    return _JETSON_MODEL.exists() and "jetson" in (_read(_JETSON_MODEL) or "").lower()


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """Parse ``nvpmodel -q`` output (``"NV Power Mode: MAXN\\n0"``) into ``{"name": "MAXN", "id": 0}``."""
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    ident = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    return {"name": name.group(1) if name else None, "id": int(ident.group(1)) if ident else None}


def power_mode() -> dict[str, Any] | None:
    out = _run(["nvpmodel", "-q"])
    return None if out is None else parse_nvpmodel(out)


def clocks() -> dict[str, Any]:
    """Current CPU (per core) and GPU/DLA devfreq clocks in MHz, from sysfs (no root needed)."""
    cpus = {}
    for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        khz = _read(f)
        if khz and khz.isdigit():
            cpus[f.parent.parent.name] = int(khz) / 1000.0
    devfreq = {}
    for f in sorted(Path("/sys/class/devfreq").glob("*/cur_freq")):
        hz = _read(f)
        if hz and hz.isdigit():
            devfreq[f.parent.name] = int(hz) / 1e6
    return {"cpu_mhz": cpus or None, "devfreq_mhz": devfreq or None}


# The CUDA 12 bindings: 13.x dropped ``cuda.cudart`` and needs a CUDA 13 driver (JetPack 6 ships CUDA 12).
CUDA_PYTHON_PIN = "cuda-python>=12.2,<13"


def cuda_version(major: int, minor: int) -> int:
    """CUDA's integer encoding of a version: (12, 2) -> 12020."""
    return int(major) * 1000 + int(minor) * 10


def cuda_version_text(version: int) -> str:
    """CUDA's integer encoding as text: 12020 -> "12.2"."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def usable_cores() -> int:
    """How many CPU cores this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_info() -> dict[str, Any]:
    """CPU model and how many threads this process may use."""
    model = None
    text = _read(Path("/proc/cpuinfo")) or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            model = m.group(1).strip()
            break
    return {"model": model or platform.processor() or None, "logical_cpus": os.cpu_count(),
            "usable_threads": usable_cores()}


def module_version(module: str) -> str | None:
    """``module.__version__`` ("installed" without one), None when it is absent or broken."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - absent or broken counts as missing
        return None
    return str(getattr(mod, "__version__", "installed"))


def _cuda_version() -> str | None:
    for path in (Path("/usr/local/cuda/version.json"), Path("/usr/local/cuda/version.txt")):
        text = _read(path)
        if text:
            m = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([^"]+)"', text) or re.search(
                r"CUDA Version\s+(\S+)", text)
            if m:
                return m.group(1)
    smi = _run(["nvidia-smi"])
    m = re.search(r"CUDA Version:\s*([\d.]+)", smi or "")
    return f"driver {m.group(1)}" if m else None


def versions() -> dict[str, Any]:
    """Versions of everything that changes the timings: runtimes, CUDA, JetPack/L4T."""
    from mosaic_edge.version import __version__

    jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) if is_jetson() else None
    l4t = _read(_L4T_RELEASE)
    return {
        "mosaic_edge": __version__,
        "python": platform.python_version(),
        "numpy": module_version("numpy"),
        "onnxruntime": module_version("onnxruntime"),
        "tensorrt": module_version("tensorrt"),
        "cuda": _cuda_version(),
        "jetpack": jetpack or None,
        "l4t": l4t.splitlines()[0] if l4t else None,
    }


def jetson_info(with_clocks: bool = True) -> dict[str, Any] | None:
    """On a Jetson: module name, L4T release line, power mode (``nvpmodel -q``) and clocks; else None."""
    if not _JETSON_MODEL.exists():
        return None
    l4t = _read(_L4T_RELEASE)
    info: dict[str, Any] = {"model": _read(_JETSON_MODEL), "l4t_release": l4t.splitlines()[0] if l4t else None,
                            "power_mode": power_mode()}
    if with_clocks:
        info["clocks"] = clocks()
    return info


def environment() -> dict[str, Any]:
    """Everything recorded next to timings: versions, CPU, and on a Jetson the power mode and clocks."""
    return {"platform": platform.platform(), "versions": versions(), "cpu": cpu_info(),
            "jetson": jetson_info() if is_jetson() else None}

