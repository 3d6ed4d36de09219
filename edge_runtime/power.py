"""Power and environment of the machine a profile ran on (numpy-free, never torch).

On a Jetson: the power mode (``nvpmodel -q``), current clocks from sysfs, and ``tegrastats`` sampled during
the run, from which the profile reports the average input power and the energy per tile. Elsewhere: CPU model
and thread count. Every probe is defensive: a missing tool or unreadable file yields ``None``, never an
exception, because a profile must not fail for want of a power reading.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_JETSON_MODEL = Path("/proc/device-tree/model")
_L4T_RELEASE = Path("/etc/nv_tegra_release")

# One rail reading "NAME 5000mW/4980mW" (Orin, JetPack 5+) or "NAME 5000/4980" (Xavier/Nano/TX2, JetPack 4):
# the current value then the running average, in milliwatts. The lookahead keeps "RAM 2345/7772MB" and "SWAP
# 0/3886MB" out: those are memory, not power.
_RAIL = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![0-9A-Za-z])")
_NOT_RAILS = frozenset({"RAM", "SWAP", "IRAM", "lfb"})
# The rail that measures the whole module's input, by Jetson generation; without one, the rails are summed.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VDD_IN_SYS")


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """Instantaneous power of every rail in one ``tegrastats`` line, in mW (empty when it has none).

    Example: ``"... VDD_IN 5000mW/4980mW VDD_CPU_GPU_CV 1000mW/990mW"`` -> ``{"VDD_IN": 5000.0, ...}``.
    """
    return {m.group(1): float(m.group(2)) for m in _RAIL.finditer(line) if m.group(1) not in _NOT_RAILS}


def input_power_mw(rails: dict[str, float]) -> tuple[float | None, str | None]:
    """Module input power of one sample and the rail it came from (``"sum"`` without an input rail)."""
    for name in _INPUT_RAILS:
        if name in rails:
            return rails[name], name
    if rails:
        return sum(rails.values()), "sum"
    return None, None


@dataclass(frozen=True)
class PowerSummary:
    """Average input power over a time window, from tegrastats samples."""

    avg_power_w: float
    rail: str
    samples: int
    window_s: float

    def energy_per_tile_mj(self, tiles: int) -> float | None:
        """Energy of one tile in millijoules: average power x window / tiles."""
        return None if tiles <= 0 else self.avg_power_w * self.window_s / tiles * 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {"avg_power_w": self.avg_power_w, "rail": self.rail, "samples": self.samples,
                "window_s": self.window_s}


def summarize_power(samples: list[tuple[float, dict[str, float]]], t0: float,
                    t1: float) -> PowerSummary | None:
    """Average the input power of the samples taken in ``[t0, t1]`` (``time.perf_counter`` seconds)."""
    values, rail = [], None
    for t, rails in samples:
        if t0 <= t <= t1:
            mw, name = input_power_mw(rails)
            if mw is not None:
                values.append(mw)
                rail = rail or name
    if not values or rail is None:
        return None
    return PowerSummary(sum(values) / len(values) / 1000.0, rail, len(values), t1 - t0)


@dataclass
class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and keeps ``(perf_counter, rails)`` samples.

    A context manager; a no-op (``available`` False) where tegrastats is not installed.
    """

    interval_ms: int = 100
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which("tegrastats") is not None

    def __enter__(self) -> TegrastatsSampler:
        if self.available:
            self._proc = subprocess.Popen(
                ["tegrastats", "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            rails = parse_tegrastats_line(line)
            if rails:
                self.samples.append((time.perf_counter(), rails))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self, t0: float, t1: float) -> PowerSummary | None:
        return summarize_power(list(self.samples), t0, t1)


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


def cpu_info() -> dict[str, Any]:
    """CPU model and how many threads this process may use."""
    model = None
    text = _read(Path("/proc/cpuinfo")) or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            model = m.group(1).strip()
            break
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count()
    return {"model": model or platform.processor() or None, "logical_cpus": os.cpu_count(),
            "usable_threads": usable}


def _module_version(module: str) -> str | None:
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
        "numpy": _module_version("numpy"),
        "onnxruntime": _module_version("onnxruntime"),
        "tensorrt": _module_version("tensorrt"),
        "cuda": _cuda_version(),
        "jetpack": jetpack or None,
        "l4t": l4t.splitlines()[0] if l4t else None,
    }


def environment() -> dict[str, Any]:
    """Everything recorded next to the timings: versions, CPU, and on a Jetson the power mode and clocks."""
    env: dict[str, Any] = {"platform": platform.platform(), "versions": versions(), "cpu": cpu_info(),
                           "jetson": None}
    if is_jetson():
        env["jetson"] = {"model": _read(_JETSON_MODEL), "power_mode": power_mode(), "clocks": clocks()}
    return env

