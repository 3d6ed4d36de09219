"""``mosaic-edge doctor``: what is installed and usable on this machine.

Every probe is defensive: a broken optional package is reported, never raised, so the command works on a bare
core install and on a Jetson alike.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from typing import Any

from mosaic_edge import environment


def _version(module: str) -> str | None:
    return environment.module_version(module)


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except Exception:  # noqa: BLE001
        return {"installed": False}
    info: dict[str, Any] = {"installed": True, "version": torch.__version__, "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["cuda_version"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _ort_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception:  # noqa: BLE001
        return {"installed": False}
    return {"installed": True, "version": ort.__version__, "providers": ort.get_available_providers()}


def _nvidia_smi_gpu() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _jetson_info() -> dict[str, Any] | None:
    return environment.jetson_info(with_clocks=False)


def collect() -> dict[str, Any]:
    """Gather the environment report as a JSON-serialisable dict."""
    from mosaic_edge.version import __version__

    return {
        "mosaic_edge": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": _version("numpy"),
        "tifffile": _version("tifffile"),
        "torch": _torch_info(),
        "onnx": _version("onnx"),
        "onnxruntime": _ort_info(),
        "tensorrt": _version("tensorrt"),
        "pycuda": _version("pycuda"),
        "cuda_python": _version("cuda.bindings"),
        "modelopt": _version("modelopt"),
        "gpu": _nvidia_smi_gpu(),
        "jetson": _jetson_info(),
    }


def render(info: dict[str, Any], as_json: bool = False) -> str:
    """Format the report: one JSON object, or aligned ``name: value`` lines."""
    if as_json:
        return json.dumps(info, indent=2, sort_keys=True)
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"{key:>12}: {'missing' if value is None else value}")
    return "\n".join(lines)
