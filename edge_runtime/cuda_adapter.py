"""One small adapter over CUDA device memory, streams, pinned host buffers, events and graphs.

The TensorRT runner needs only these few calls. On a Jetson the user's stack usually has pycuda; elsewhere
cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in cuda-python < 12.6) installs from pip. The
backend is chosen once, at construction, through :func:`mosaic_edge.optional.require` (STYLE.md #2).

Pointers, streams, events and graphs are passed around as the backend's own objects;
:meth:`CudaAdapter.handle`
turns a stream into the integer TensorRT's ``execute_async_v3`` takes.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from mosaic_edge.errors import OptionalDependencyError, UserError
from mosaic_edge.optional import require

BACKENDS = ("auto", "cuda-python", "pycuda")


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


def _import_cudart() -> Any:
    try:
        return require("cuda.bindings.runtime", extra="trt")
    except OptionalDependencyError:
        return require("cuda.cudart", extra="trt")  # cuda-python < 12.6 layout


class CudaAdapter:
    """Base interface; use :func:`open_cuda_adapter`."""

    backend = "none"
    supports_graphs = False

    def malloc(self, nbytes: int) -> Any:
        raise NotImplementedError

    def free(self, ptr: Any) -> None:
        raise NotImplementedError

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        raise NotImplementedError

    def free_pinned(self, arr: np.ndarray) -> None:
        raise NotImplementedError

    def stream(self) -> Any:
        raise NotImplementedError

    def handle(self, stream: Any) -> int:
        raise NotImplementedError

    def h2d_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        raise NotImplementedError

    def d2h_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        raise NotImplementedError

    def d2d_async(self, dst: Any, src: Any, nbytes: int, stream: Any) -> None:
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        raise NotImplementedError

    def event(self) -> Any:
        raise NotImplementedError

    def record(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def device_name(self) -> str:
        raise NotImplementedError

    def ptr(self, dev: Any) -> int:
        return int(dev)

    def begin_capture(self, stream: Any) -> None:
        raise UserError(f"CUDA graphs need cuda-python; the {self.backend} adapter cannot capture")

    def end_capture(self, stream: Any) -> Any:
        raise NotImplementedError

    def launch(self, graph_exec: Any, stream: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the adapter itself created."""


class CudaPythonAdapter(CudaAdapter):
    """cuda-python runtime API: every call returns ``(cudaError_t, *results)``."""

    backend = "cuda-python"
    supports_graphs = True

    def __init__(self, device: int = 0):
        self.rt = _import_cudart()
        self._call("cudaSetDevice", device)
        self._call("cudaFree", 0)  # creates the primary context now, not inside the first timed call
        self.device = device
        self._pinned: dict[int, int] = {}  # id(array) -> host pointer

    def _call(self, fn: str, *args: Any) -> Any:
        out = getattr(self.rt, fn)(*args)
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            _, msg = self.rt.cudaGetErrorString(err)
            raise CudaError(f"{fn} failed: {err} ({msg.decode() if isinstance(msg, bytes) else msg})")
        return rest[0] if len(rest) == 1 else (rest or None)

    def malloc(self, nbytes: int) -> Any:
        return self._call("cudaMalloc", int(nbytes))

    def free(self, ptr: Any) -> None:
        self._call("cudaFree", ptr)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        host = int(self._call("cudaMallocHost", nbytes))
        buf = (ctypes.c_byte * nbytes).from_address(host)
        arr = np.frombuffer(buf, dtype=np.uint8, count=nbytes)[: int(np.prod(shape)) * dtype.itemsize]
        arr = arr.view(dtype).reshape(shape)
        self._pinned[id(arr)] = host
        return arr

    def free_pinned(self, arr: np.ndarray) -> None:
        host = self._pinned.pop(id(arr), None)
        if host is not None:
            self._call("cudaFreeHost", host)

    def stream(self) -> Any:
        return self._call("cudaStreamCreate")

    def handle(self, stream: Any) -> int:
        try:
            return int(stream)
        except TypeError:  # older bindings expose the raw pointer only through getPtr()
            return int(stream.getPtr())

    def h2d_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self._call(
            "cudaMemcpyAsync",
            dst,
            src.ctypes.data,
            src.nbytes,
            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            stream,
        )

    def d2h_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self._call(
            "cudaMemcpyAsync",
            dst.ctypes.data,
            src,
            dst.nbytes,
            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            stream,
        )

    def d2d_async(self, dst: Any, src: Any, nbytes: int, stream: Any) -> None:
        self._call(
            "cudaMemcpyAsync", dst, src, int(nbytes), self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream
        )

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def event(self) -> Any:
        return self._call("cudaEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", event, stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._call("cudaEventSynchronize", end)
        return float(self._call("cudaEventElapsedTime", start, end))

    def device_name(self) -> str:
        props = self._call("cudaGetDeviceProperties", self.device)
        name = props.name
        return (
            (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
        )

    def begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)

    def end_capture(self, stream: Any) -> Any:
        graph = self._call("cudaStreamEndCapture", stream)
        try:
            exec_ = self._call("cudaGraphInstantiate", graph, 0)  # CUDA 12 bindings: (graph, flags)
        except TypeError:
            exec_ = self._call("cudaGraphInstantiate", graph, b"", 0)  # CUDA 11 bindings
            exec_ = exec_[0] if isinstance(exec_, tuple) else exec_
        self._call("cudaGraphDestroy", graph)
        return exec_

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", graph_exec, stream)


class PycudaAdapter(CudaAdapter):
    """pycuda driver API with its own context on ``device``."""

    backend = "pycuda"

    def __init__(self, device: int = 0):
        self.cuda = require("pycuda.driver", extra="trt")
        self.cuda.init()
        self._dev = self.cuda.Device(device)
        self._ctx = self._dev.make_context()

    def malloc(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(int(nbytes))

    def free(self, ptr: Any) -> None:
        ptr.free()

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def free_pinned(self, arr: np.ndarray) -> None:
        base = getattr(arr, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def stream(self) -> Any:
        return self.cuda.Stream()

    def handle(self, stream: Any) -> int:
        return int(stream.handle)

    def h2d_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def d2h_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def d2d_async(self, dst: Any, src: Any, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_dtod_async(dst, src, int(nbytes), stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def device_name(self) -> str:
        return str(self._dev.name())

    def close(self) -> None:
        self._ctx.pop()


def open_cuda_adapter(backend: str = "auto", device: int = 0) -> CudaAdapter:
    """The adapter for ``backend``: "auto" takes pycuda when importable, else cuda-python.

    Raises:
        OptionalDependencyError: neither is installed (the message names both install routes).
    """
    if backend not in BACKENDS:
        raise UserError(f"CUDA backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pycuda":
        return PycudaAdapter(device)
    if backend == "cuda-python":
        return CudaPythonAdapter(device)
    try:
        require("pycuda.driver", extra="trt")
    except OptionalDependencyError:
        return CudaPythonAdapter(device)
    return PycudaAdapter(device)
