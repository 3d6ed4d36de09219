"""GPU check of the cuda-python adapter (rows for the lead's single GPU check script).

``python -m mosaic_edge.edge_runtime.gpu_check`` prints one JSON row per check: device name, device alloc,
pinned host buffer, H2D/D2H round trip through one stream (bit-exact), event timing of a 64 MiB copy, a CUDA
graph replaying a device-to-device copy, and, when TensorRT is importable, its version. Without cuda-python or
a CUDA device it returns a single ``skipped`` row and exits 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mosaic_edge.errors import OptionalDependencyError


def _row(check: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"check": check, "status": status, **extra}


def run(backend: str = "cuda-python") -> list[dict[str, Any]]:
    """Exercise the adapter; every row has ``check`` and ``status`` ("ok", "fail" or "skipped")."""
    from mosaic_edge.edge_runtime.cuda_adapter import CudaError, open_cuda_adapter

    try:
        cuda = open_cuda_adapter(backend)
    except (OptionalDependencyError, CudaError, RuntimeError) as exc:
        return [_row("cuda", "skipped", reason=str(exc).splitlines()[0][:300])]
    rows: list[dict[str, Any]] = [_row("device", "ok", backend=cuda.backend, name=cuda.device_name())]

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            extra = fn()
            rows.append(
                _row(
                    name,
                    extra.pop("status", "ok"),
                    **extra,
                    host_ms=round((time.perf_counter() - t0) * 1e3, 3),
                )
            )
        except Exception as exc:  # noqa: BLE001 - a check reports, it does not stop the others
            rows.append(_row(name, "fail", error=f"{type(exc).__name__}: {exc}"[:300]))

    nbytes = 64 << 20
    state: dict[str, Any] = {}

    def alloc() -> dict[str, Any]:
        state["dev"] = cuda.malloc(nbytes)
        state["dev2"] = cuda.malloc(nbytes)
        state["src"] = cuda.pinned_empty((nbytes // 4,), np.float32)
        state["dst"] = cuda.pinned_empty((nbytes // 4,), np.float32)
        state["stream"] = cuda.stream()
        return {"bytes": nbytes}

    def round_trip() -> dict[str, Any]:
        src, dst, s = state["src"], state["dst"], state["stream"]
        src[:] = np.random.default_rng(0).standard_normal(src.shape, dtype=np.float32)
        dst[:] = 0
        start, end = cuda.event(), cuda.event()
        cuda.record(start, s)
        cuda.h2d_async(state["dev"], src, s)
        cuda.d2h_async(dst, state["dev"], s)
        cuda.record(end, s)
        cuda.synchronize(s)
        ms = cuda.elapsed_ms(start, end)
        equal = bool(np.array_equal(src, dst))
        return {
            "status": "ok" if equal else "fail",
            "bit_exact": equal,
            "device_ms": round(ms, 3),
            "gb_per_s_both_ways": round(2 * nbytes / (ms * 1e-3) / 1e9, 2) if ms > 0 else None,
        }

    def graph() -> dict[str, Any]:
        if not cuda.supports_graphs:
            return {"status": "skipped", "reason": f"{cuda.backend} adapter has no CUDA graphs"}
        s = state["stream"]
        cuda.begin_capture(s)
        # device-to-device copy inside the graph; replay must reproduce it
        cuda.d2d_async(state["dev2"], state["dev"], nbytes, s)
        exec_ = cuda.end_capture(s)
        state["dst"][:] = 0
        cuda.launch(exec_, s)
        cuda.d2h_async(state["dst"], state["dev2"], s)
        cuda.synchronize(s)
        equal = bool(np.array_equal(state["src"], state["dst"]))
        return {"status": "ok" if equal else "fail", "bit_exact": equal}

    step("alloc+pinned+stream", alloc)
    if "stream" in state:
        step("h2d_d2h_round_trip", round_trip)
        step("cuda_graph_replay", graph)
    for key in ("src", "dst"):
        if key in state:
            cuda.free_pinned(state[key])
    for key in ("dev", "dev2"):
        if key in state:
            cuda.free(state[key])
    cuda.close()
    try:
        import tensorrt as trt

        rows.append(_row("tensorrt", "ok", version=str(trt.__version__)))
    except ImportError:
        rows.append(_row("tensorrt", "skipped", reason="tensorrt not importable"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
