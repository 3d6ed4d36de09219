"""Power drawn while a profile runs (numpy-free, never torch).

On a Jetson, ``tegrastats`` is sampled during the run, from which the profile reports the average input power
and the energy per tile. What else describes the machine (versions, CPU, power mode, clocks) comes from the
environment probe shared with ``mosaic-edge doctor`` (:mod:`mosaic_edge.environment`). Every reading is
defensive: a missing tool yields ``None``, never an exception, because a profile must not fail for want of a
power reading.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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
