"""GPU check of both CUDA adapters of the runtime (cuda-python and pycuda, whichever import).

Per adapter, all inside its primary context (``with adapter.current()``): device facts, device and pinned
allocations, an H2D/D2H round trip through one stream (bit-exact), event timing of a 64 MiB copy, a CUDA graph
replaying a device-to-device copy (cuda-python only), the same copy from a second thread (the runtime may infer
on another thread than the one that built it), and close. An adapter that does not import gives a ``skip`` row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import fail, row, skip

NBYTES = 64 << 20


def _check_adapter(backend: str) -> list[dict[str, Any]]:
    from mosaic_edge.edge_runtime.cuda_adapter import open_cuda_adapter

    name = f"cuda/{backend}"
    try:
        cuda = open_cuda_adapter(backend)
    except Exception as exc:  # noqa: BLE001 - not installed, or no device: this adapter is skipped
        return [skip(name, str(exc).splitlines()[0])]
    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {}

    def step(check: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            with cuda.current():
                extra = fn()
            status = extra.pop("status", "ok")
            rows.append(row(f"{name}/{check}", status, **extra, host_ms=round((time.perf_counter() - t0) * 1e3, 3)))
        except Exception as exc:  # noqa: BLE001 - a check reports, it does not stop the others
            rows.append(fail(f"{name}/{check}", exc))

    def device() -> dict[str, Any]:
        return cuda.device_info().to_dict()

    def alloc() -> dict[str, Any]:
        state["dev"], state["dev2"] = cuda.malloc(NBYTES), cuda.malloc(NBYTES)
        state["src"] = cuda.pinned_empty((NBYTES // 4,), np.float32)
        state["dst"] = cuda.pinned_empty((NBYTES // 4,), np.float32)
        state["stream"] = cuda.stream()
        state["events"] = [cuda.event(), cuda.event()]
        return {"bytes": NBYTES}

    def round_trip() -> dict[str, Any]:
        src, dst, s = state["src"], state["dst"], state["stream"]
        start, end = state["events"]
        src[:] = np.random.default_rng(0).standard_normal(src.shape, dtype=np.float32)
        dst[:] = 0
        cuda.record(start, s)
        cuda.h2d_async(state["dev"], src, s)
        cuda.d2h_async(dst, state["dev"], s)
        cuda.record(end, s)
        cuda.synchronize(s)
        ms = cuda.elapsed_ms(start, end)
        equal = bool(np.array_equal(src, dst))
        return {"status": "ok" if equal else "fail", "bit_exact": equal, "device_ms": round(ms, 3),
                "gb_per_s_both_ways": round(2 * NBYTES / (ms * 1e-3) / 1e9, 2) if ms > 0 else None}

    def graph() -> dict[str, Any]:
        if not cuda.supports_graphs:
            return {"status": "skip", "reason": f"the {backend} adapter has no CUDA graphs"}
        s = state["stream"]
        cuda.begin_capture(s)
        cuda.d2d_async(state["dev2"], state["dev"], NBYTES, s)  # replay must reproduce the copy
        exec_ = cuda.end_capture(s)
        state["dst"][:] = 0
        cuda.launch(exec_, s)
        cuda.d2h_async(state["dst"], state["dev2"], s)
        cuda.synchronize(s)
        cuda.destroy_graph(exec_)
        equal = bool(np.array_equal(state["src"], state["dst"]))
        return {"status": "ok" if equal else "fail", "bit_exact": equal}

    def other_thread() -> dict[str, Any]:
        out: dict[str, Any] = {}

        def work() -> None:
            try:
                with cuda.current():
                    state["dst"][:] = 0
                    cuda.d2h_async(state["dst"], state["dev"], state["stream"])
                    cuda.synchronize(state["stream"])
                out["equal"] = bool(np.array_equal(state["src"], state["dst"]))
            except Exception as exc:  # noqa: BLE001
                out["error"] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=work)
        t.start()
        t.join()
        if "error" in out:
            raise RuntimeError(out["error"])
        return {"status": "ok" if out["equal"] else "fail", "bit_exact": out["equal"]}

    step("device", device)
    step("alloc", alloc)
    if "events" in state:
        step("h2d_d2h_round_trip", round_trip)
        step("cuda_graph_replay", graph)
        step("second_thread", other_thread)
    try:
        with cuda.current():
            for event in state.get("events", []):
                cuda.destroy_event(event)
            if "stream" in state:
                cuda.destroy_stream(state.pop("stream"))
            for key in ("src", "dst"):
                if key in state:
                    cuda.free_pinned(state.pop(key))
            for key in ("dev", "dev2"):
                if key in state:
                    cuda.free(state.pop(key))
            state.clear()
        cuda.close()
        rows.append(row(f"{name}/close", "ok"))
    except Exception as exc:  # noqa: BLE001
        rows.append(fail(f"{name}/close", exc))
    return rows


def run(backends: tuple[str, ...] = ("cuda-python", "pycuda")) -> list[dict[str, Any]]:
    """Exercise every adapter in ``backends``; one row per check and adapter."""
    return [r for backend in backends for r in _check_adapter(backend)]
