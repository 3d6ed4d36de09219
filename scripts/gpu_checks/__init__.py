"""The checks of ``scripts/gpu_check.py``: everything that needs a CUDA GPU, outside the library.

One result format for every check: a list of rows, each a flat dict ``{"check": name, "status": "ok" | "fail" |
"skip", <numbers and short strings>}``; a skipped row says why in ``reason``, a failed one in ``error`` (or its
numbers show why). Each module has ``run() -> list[dict]`` and imports its heavy dependencies (torch, TensorRT,
the CUDA bindings) inside it, so a machine without them gets ``skip`` rows, never an ImportError.

- :mod:`.train`: MoSAiC training steps on CUDA with AMP (samples/s).
- :mod:`.train_paths`: a few steps of every training path through ``mosaic-edge train`` on a packed store.
- :mod:`.cuda_adapters`: both CUDA adapters of the runtime (contexts, memory, copies, events, graphs).
- :mod:`.profile`: torch CUDA-graph replay of the exported model, the device-time reference of ``profile``.
- :mod:`.tensorrt`: fp16 and INT8 engines built from an export, timed at batch 1 and 8 with CUDA events, INT8 <=
  fp16 at batch 8, decisions vs ONNX Runtime fp32, with every CUDA adapter that imports.
"""

from __future__ import annotations

from typing import Any

STATUSES = ("ok", "fail", "skip")


def row(check: str, status: str, **numbers: Any) -> dict[str, Any]:
    """One result row; ``status`` one of :data:`STATUSES`."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {"check": check, "status": status, **numbers}


def skip(check: str, reason: str) -> dict[str, Any]:
    return row(check, "skip", reason=reason[:300])


def fail(check: str, exc: BaseException) -> dict[str, Any]:
    return row(check, "fail", error=f"{type(exc).__name__}: {exc}"[:300])
