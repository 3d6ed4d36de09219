"""The one way to reach an optional dependency (STYLE.md #2).

Call :func:`require` when an object is built (a runner, an exporter), never deep inside a loop. It imports the
module or raises :class:`~mosaic_edge.errors.OptionalDependencyError` naming the package and the pip extra, and
for TensorRT and the CUDA bindings, the JetPack route.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from packaging.version import Version

from mosaic_edge.errors import OptionalDependencyError

# module name -> (pip distribution, extra)
_KNOWN: dict[str, tuple[str, str]] = {
    "torch": ("torch", "train"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "pyarrow": ("pyarrow", "data"),
    "matplotlib": ("matplotlib", "plot"),
    "tensorrt": ("tensorrt", "trt"),
    "pycuda": ("pycuda", "trt"),
    "cuda": ("cuda-python", "trt"),
    "modelopt": ("nvidia-modelopt", "export"),
    "inotify_simple": ("inotify-simple", "runtime"),
    "deflate": ("deflate", "runtime"),
}

_JETPACK_HINT = (
    " On a Jetson, TensorRT and its Python bindings come from JetPack: `sudo apt install nvidia-jetpack` "
    "(or `python3-libnvinfer`), not from pip."
)


def install_hint(module: str, extra: str | None = None) -> str:
    """Return the sentence telling a user how to install ``module``."""
    dist, default_extra = _KNOWN.get(module.split(".")[0], (module, None))
    extra = extra or default_extra
    hint = f"`pip install 'mosaic-edge[{extra}]'`" if extra else f"`pip install {dist}`"
    msg = f"this needs the optional package '{dist}': install it with {hint}."
    if module.split(".")[0] in {"tensorrt", "pycuda", "cuda"}:
        msg += _JETPACK_HINT
    return msg


def require(module: str, extra: str | None = None, min_version: str | None = None) -> ModuleType:
    """Import ``module`` or raise one :class:`OptionalDependencyError` saying how to install it.

    Args:
        module: Dotted module name, e.g. ``"tensorrt"`` or ``"onnxruntime.quantization"``.
        extra: The pip extra of mosaic-edge that provides it (defaults to the known mapping).
        min_version: Lowest accepted ``__version__``, compared with ``packaging.version``.

    Returns:
        The imported module.
    """
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise OptionalDependencyError(f"{module} is not importable ({exc}); {install_hint(module, extra)}") from exc
    if min_version is not None:
        top = importlib.import_module(module.split(".")[0])
        have = getattr(top, "__version__", None)
        if have is None or Version(str(have).split("+")[0]) < Version(min_version):
            raise OptionalDependencyError(
                f"{module} {have} is too old (need >= {min_version}); {install_hint(module, extra)}"
            )
    return mod


def available(module: str) -> bool:
    """True when ``module`` imports (used by capability probes, never to pick code paths silently)."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True
