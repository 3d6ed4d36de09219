"""One small adapter over CUDA contexts, device memory, streams, pinned host buffers, events and graphs.

Everything a TensorRT runner does on the GPU -- the device query, the engine build and deserialization, buffers,
the stream and every execution -- happens in ONE context, the device's **primary context**: the one TensorRT's
runtime-API calls use. Wrap every use in ``with adapter.current():`` on the thread that uses it; the adapter makes
the primary context current there and (pycuda) takes it off again afterwards.

* cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6), preferred when both import: the runtime
  API works in the primary context already; ``current()`` calls ``cudaSetDevice`` on the calling thread, which
  makes the device's primary context current there (a new thread otherwise gets device 0's). cuda-python 13
  removed ``cuda.cudart`` and links the CUDA 13 runtime, which a JetPack 6 (CUDA 12) driver cannot run: the
  ``trt`` extra pins ``cuda-python>=12.2,<13``.
* pycuda (driver API): ``Device(n).retain_primary_context()`` once, ``push()`` / ``Context.pop()`` around every
  use on the calling thread (pycuda keeps one context stack per thread and aborts the process at exit if one is
  not empty), ``push()`` + ``detach()`` on :meth:`CudaAdapter.close` (releases it from whichever thread closes).

Streams, events and graph executables are destroyed explicitly (:meth:`destroy_stream`, ...), inside
``current()``. Pointers, streams, events and graphs are the backend's own objects; :meth:`CudaAdapter.handle`
turns a stream into the integer TensorRT's ``execute_async_v3`` takes.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mosaic_edge.environment import CUDA_PYTHON_PIN, cuda_version
from mosaic_edge.errors import OptionalDependencyError, UserError
from mosaic_edge.optional import available, require

BACKENDS = ("auto", "cuda-python", "pycuda")


class CudaError(RuntimeError):
    """A CUDA call failed; the message names the call and CUDA's error."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the engine cache keys on, and what ``doctor`` shows.

    Attributes:
        name: CUDA device name (every Orin module may report the same one).
        compute_capability: "major.minor", e.g. "8.7".
        sm_count: Streaming multiprocessors.
        driver_version: Highest CUDA version the driver supports, as CUDA encodes it (12020 = 12.2).
        runtime_version: CUDA runtime the bindings use (cuda-python) or were built against (pycuda), same encoding.
    """

    name: str
    compute_capability: str
    sm_count: int
    driver_version: int
    runtime_version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _import_cudart() -> Any:
    try:
        return require("cuda.bindings.runtime", extra="trt")
    except OptionalDependencyError:
        return require("cuda.cudart", extra="trt")  # cuda-python < 12.6 layout


class CudaAdapter:
    """Base interface; use :func:`open_cuda_adapter`."""

    backend = "none"
    supports_graphs = False
    closed = False

    def current(self) -> contextlib.AbstractContextManager[None]:
        """Make the adapter's (primary) context current on the calling thread for the ``with`` block."""
        raise NotImplementedError

    def device_info(self) -> DeviceInfo:
        raise NotImplementedError

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

    def destroy_stream(self, stream: Any) -> None:
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

    def destroy_event(self, event: Any) -> None:
        raise NotImplementedError

    def record(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def ptr(self, dev: Any) -> int:
        return int(dev)

    def begin_capture(self, stream: Any) -> None:
        raise UserError(f"CUDA graphs need cuda-python; the {self.backend} adapter cannot capture")

    def end_capture(self, stream: Any) -> Any:
        raise NotImplementedError

    def launch(self, graph_exec: Any, stream: Any) -> None:
        raise NotImplementedError

    def destroy_graph(self, graph_exec: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the adapter's hold on the context (idempotent); call it outside :meth:`current`."""
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise CudaError(f"the {self.backend} CUDA adapter is closed")


class CudaPythonAdapter(CudaAdapter):
    """cuda-python runtime API (the primary context); every call returns ``(cudaError_t, *results)``."""

    backend = "cuda-python"
    supports_graphs = True

    def __init__(self, device: int = 0):
        self.rt = _import_cudart()
        self.device = device
        self._pinned: dict[int, int] = {}  # id(array) -> host pointer
        with self.current():
            self._call("cudaFree", 0)  # initialises the primary context now, not inside the first timed call

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._check_open()
        # cudaSetDevice makes the device's primary context current on THIS thread: cheap, and a thread that never
        # called it would run on device 0's primary context (or on whatever another library made current).
        self._call("cudaSetDevice", self.device)
        yield

    def _call(self, fn: str, *args: Any) -> Any:
        out = getattr(self.rt, fn)(*args)
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            _, msg = self.rt.cudaGetErrorString(err)
            text = msg.decode() if isinstance(msg, bytes) else str(msg)
            hint = ""
            if err == self.rt.cudaError_t.cudaErrorInsufficientDriver:
                hint = (f"; these CUDA bindings need a newer driver (JetPack 6 is CUDA 12): "
                        f"pip install '{CUDA_PYTHON_PIN}'")
            raise CudaError(f"{fn} failed: {err} ({text}){hint}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_info(self) -> DeviceInfo:
        props = self._call("cudaGetDeviceProperties", self.device)
        name = props.name
        name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
        return DeviceInfo(name, f"{props.major}.{props.minor}", int(props.multiProcessorCount),
                          int(self._call("cudaDriverGetVersion")), int(self._call("cudaRuntimeGetVersion")))

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

    def destroy_stream(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def handle(self, stream: Any) -> int:
        try:
            return int(stream)
        except TypeError:  # older bindings expose the raw pointer only through getPtr()
            return int(stream.getPtr())

    def h2d_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def d2h_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)

    def d2d_async(self, dst: Any, src: Any, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._call("cudaMemcpyAsync", dst, src, int(nbytes), kind, stream)

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def event(self) -> Any:
        return self._call("cudaEventCreate")

    def destroy_event(self, event: Any) -> None:
        self._call("cudaEventDestroy", event)

    def record(self, event: Any, stream: Any) -> None:
        self._call("cudaEventRecord", event, stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._call("cudaEventSynchronize", end)
        return float(self._call("cudaEventElapsedTime", start, end))

    def begin_capture(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)

    def end_capture(self, stream: Any) -> Any:
        graph = self._call("cudaStreamEndCapture", stream)
        try:
            try:
                exec_ = self._call("cudaGraphInstantiate", graph, 0)  # CUDA 12 bindings: (graph, flags)
            except TypeError:
                exec_ = self._call("cudaGraphInstantiate", graph, b"", 0)  # CUDA 11 bindings
                exec_ = exec_[0] if isinstance(exec_, tuple) else exec_
        finally:
            self._call("cudaGraphDestroy", graph)  # the executable does not need the graph
        return exec_

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", graph_exec, stream)

    def destroy_graph(self, graph_exec: Any) -> None:
        self._call("cudaGraphExecDestroy", graph_exec)


class PycudaAdapter(CudaAdapter):
    """pycuda driver API on the device's primary context (retained once, pushed per use, detached on close)."""

    backend = "pycuda"

    def __init__(self, device: int = 0):
        self.cuda = require("pycuda.driver", extra="trt")
        self.cuda.init()
        self._dev = self.cuda.Device(device)
        self._ctx = self._dev.retain_primary_context()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._check_open()
        self._ctx.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def device_info(self) -> DeviceInfo:
        major, minor = self._dev.compute_capability()
        sms = self._dev.get_attribute(self.cuda.device_attribute.MULTIPROCESSOR_COUNT)
        built = tuple(self.cuda.get_version()) + (0, 0)
        runtime = cuda_version(built[0], built[1])
        return DeviceInfo(str(self._dev.name()), f"{major}.{minor}", int(sms), int(self.cuda.get_driver_version()),
                          runtime)

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

    def destroy_stream(self, stream: Any) -> None:
        """pycuda destroys a stream when its object goes away: the caller drops it inside ``current()``."""

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

    def destroy_event(self, event: Any) -> None:
        """Like streams, pycuda destroys an event with its object."""

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # Detach while current: pycuda then releases the primary context from any thread and takes it off its
            # own stack (from another thread than the retaining one, a non-current detach releases nothing).
            self._ctx.push()
            self._ctx.detach()


def open_cuda_adapter(backend: str = "auto", device: int = 0) -> CudaAdapter:
    """The adapter for ``backend``: "auto" takes cuda-python when importable, else pycuda.

    Raises:
        OptionalDependencyError: neither is installed (the message names the install routes).
    """
    if backend not in BACKENDS:
        raise UserError(f"CUDA backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pycuda":
        return PycudaAdapter(device)
    if backend == "cuda-python" or available("cuda.bindings.runtime") or available("cuda.cudart"):
        return CudaPythonAdapter(device)
    try:
        return PycudaAdapter(device)
    except OptionalDependencyError as exc:
        raise OptionalDependencyError(f"no CUDA bindings: install '{CUDA_PYTHON_PIN}' (or pycuda). {exc}") from exc
