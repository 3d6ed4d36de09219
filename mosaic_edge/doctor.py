"""``mosaic-edge doctor``: what is installed and usable on this machine.

Every probe is defensive: a broken optional package is reported, never raised, so the command works on a bare
core install and on a Jetson alike.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
from typing import Any

from mosaic_edge import environment
from mosaic_edge.environment import CUDA_PYTHON_PIN, cuda_version, cuda_version_text


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


def _cuda_text(version: int | None) -> str | None:
    return cuda_version_text(version) if version else None


def _libcuda_driver_version() -> int | None:
    """``cuDriverGetVersion`` straight from libcuda (no bindings needed); None without a driver."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        out = ctypes.c_int(0)
        return int(out.value) if lib.cuDriverGetVersion(ctypes.byref(out)) == 0 and out.value else None
    except (OSError, AttributeError):
        return None


def _cuda_info() -> dict[str, Any]:
    """CUDA driver version and the CUDA runtime each installed binding needs, with a warning on a mismatch.

    cuda-python's bindings link a CUDA runtime (``cudaRuntimeGetVersion``); pycuda was built against one
    (``get_version``). A driver older than that runtime cannot run it (cuda-python 13 needs a CUDA 13 driver;
    JetPack 6 ships CUDA 12), so ``doctor`` says so next to the install line that fits.
    """
    info: dict[str, Any] = {"driver": None, "bindings": {}, "warnings": []}
    driver = None
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            rt = importlib.import_module(module)
            err, runtime = rt.cudaRuntimeGetVersion()
            derr, drv = rt.cudaDriverGetVersion()
        except Exception:  # noqa: BLE001 - absent or broken bindings: try the next layout
            continue
        version = _version("cuda.bindings") or _version("cuda")
        info["bindings"]["cuda-python"] = {"version": version, "module": module,
                                           "runtime": _cuda_text(int(runtime)) if int(err) == 0 else None}
        if int(derr) == 0 and int(drv):
            driver = int(drv)
        if int(err) == 0:
            info["bindings"]["cuda-python"]["runtime_int"] = int(runtime)
        break
    try:
        pycuda = importlib.import_module("pycuda.driver")
        built = tuple(pycuda.get_version()) + (0, 0)
        info["bindings"]["pycuda"] = {"version": _version("pycuda"), "runtime": f"{built[0]}.{built[1]}",
                                      "runtime_int": cuda_version(built[0], built[1])}
        driver = driver or int(pycuda.get_driver_version()) or None
    except Exception:  # noqa: BLE001
        pass
    driver = driver or _libcuda_driver_version()
    info["driver"] = _cuda_text(driver)
    for name, b in info["bindings"].items():
        need = b.pop("runtime_int", None)
        if driver and need and driver < need:
            fix = (f"pip install '{CUDA_PYTHON_PIN}' (the CUDA 12 bindings; pick the minor of your JetPack)"
                   if name == "cuda-python" else "rebuild pycuda against the installed CUDA")
            info["warnings"].append(f"{name} needs CUDA runtime {b['runtime']} but the driver supports "
                                    f"{_cuda_text(driver)}: {fix}")
    return info


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
        "cuda_python": _version("cuda.bindings") or _version("cuda"),
        "cuda": _cuda_info(),
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
        if key == "cuda" and isinstance(value, dict):
            need = ", ".join(f"{n} {b['version']} needs runtime {b['runtime']}" for n, b in value["bindings"].items())
            value = f"driver {value['driver'] or 'missing'}" + (f"; {need}" if need else "")
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"{key:>12}: {'missing' if value is None else value}")
    lines += [f"     WARNING: {w}" for w in (info.get("cuda") or {}).get("warnings", [])]
    return "\n".join(lines)
