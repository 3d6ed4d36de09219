"""TensorRT calibration cache (legacy implicit-INT8 path, TensorRT < 11): the file format, in the core.

Calibration writes it from its calibration run (``mosaic_edge.calibration``), the engine builder reads it on the
device (``mosaic_edge.export.trt_caches``): a fact that crosses a stage boundary, defined once here.

Format, as TensorRT's ``IInt8EntropyCalibrator2`` writes and reads it (and as NVIDIA ModelOpt's
``import_scales_from_calib_cache`` parses it)::

    TRT-8601-EntropyCalibration2
    sar: 3c010a14
    /encoder/conv1/Conv_output_0: 3d4ccccd
    ...

The header carries TensorRT's version integer ``NV_TENSORRT_VERSION``: ``major*1000 + minor*100 + patch`` up
to 8.x (8.6.1 -> 8601), ``major*10000 + minor*100 + patch`` from 10.0 on (10.3.0 -> 100300; NvInferVersion.h
of TensorRT 10 defines ``NV_TENSORRT_VERSION_INT``). Each further line is ``<tensor name>: <8 hex digits>``,
the big-endian IEEE float32 bits of the tensor's scale ``amax / 127``.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from mosaic_edge.errors import DataError, UserError

ALGORITHM = "EntropyCalibration2"
# JetPack 6.x ships TensorRT 10.3; the default header matches it.
DEFAULT_TRT_VERSION = "10.3.0"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


def trt_version_int(version: str) -> int:
    """TensorRT's ``NV_TENSORRT_VERSION`` integer: "8.6.1" -> 8601, "10.3.0" -> 100300."""
    v = Version(version)
    major, minor, patch = (list(v.release) + [0, 0, 0])[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """Big-endian float32 bits of ``scale`` as 8 lower-case hex digits (``0.5`` -> ``3f000000``)."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of :func:`scale_to_hex`."""
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


@dataclass(frozen=True)
class CalibCache:
    """A parsed calibration cache: header fields and tensor name -> scale (``amax / 127``)."""

    version_int: int
    algorithm: str
    scales: dict[str, float]

    @property
    def amax(self) -> dict[str, float]:
        return {k: v * 127.0 for k, v in self.scales.items()}


def format_calib_cache(amax: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION) -> str:
    """Cache text for per-tensor ``amax`` (one line per tensor, in the given order)."""
    lines = [f"TRT-{trt_version_int(trt_version)}-{ALGORITHM}"]
    for name, value in amax.items():
        if "\n" in name or ": " in name:
            raise UserError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        if not math.isfinite(value) or value < 0:
            raise UserError(f"tensor {name!r}: amax {value} is not a finite non-negative number")
        lines.append(f"{name}: {scale_to_hex(value / 127.0)}")
    return "\n".join(lines) + "\n"


def write_calib_cache(
    path: str | Path, amax: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION
) -> Path:
    """Write :func:`format_calib_cache` to ``path`` atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(format_calib_cache(amax, trt_version))
    tmp.replace(path)
    return path


def parse_calib_cache(text: str, what: str = "calibration cache") -> CalibCache:
    """Parse cache text; raises :class:`DataError` naming the first bad line."""
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{what}: empty")
    m = _HEADER.match(lines[0].strip())
    if m is None:
        raise DataError(f"{what}: first line {lines[0][:60]!r} is not 'TRT-<version>-<algorithm>'")
    scales: dict[str, float] = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        lm = _LINE.match(line.rstrip("\r"))
        if lm is None:
            raise DataError(f"{what}: line {i} is not '<tensor>: <8 hex digits>': {line[:80]!r}")
        scales[lm.group(1)] = hex_to_scale(lm.group(2))
    return CalibCache(int(m.group(1)), m.group(2), scales)


def read_calib_cache(path: str | Path) -> CalibCache:
    """Read and parse a cache file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read calibration cache: {exc}") from exc
    return parse_calib_cache(text, str(path))
