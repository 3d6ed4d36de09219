"""A CUDA driver model with stand-ins of ``pycuda.driver`` and cuda-python's runtime bindings, for tests on CPU.

It is as strict as the real stack where our code has been wrong before:

* contexts: one context stack per thread; the runtime API (cuda-python, TensorRT) runs in the thread's current
  context, or -- when there is none -- makes the device's primary context current (as ``cudart`` does);
  ``cudaSetDevice`` makes the primary context current. Every handle (device or pinned memory, stream, event,
  graph, TensorRT engine and execution context) remembers its context; using it while another one is current
  raises :class:`FakeCudaError` (the real driver answers with invalid-handle / illegal-address errors).
* pycuda: ``retain_primary_context`` / ``make_context``, ``push`` / ``Context.pop`` on pycuda's own per-thread
  stack; a stack that is not empty at the end is an error (pycuda aborts the process at exit), and ``detach``
  from another thread than the retaining one releases nothing (pycuda's ``context::detach``).
* leaks: :meth:`Driver.check_clean` lists streams, events, graph executables, memory and TensorRT objects still
  alive, contexts still retained, and errors pycuda would print from destructors run outside their context.
* stream capture: work enqueued on a capturing stream is recorded; a graph launch replays it.

Memory is real (numpy), so copies and the fake engine's arithmetic can be checked.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class FakeCudaError(RuntimeError):
    """What the real driver would refuse (a wrong-context handle, a pop of an empty stack, ...)."""


@dataclass(eq=False)
class Ctx:
    label: str
    primary: bool
    alive: bool = True

    def __repr__(self) -> str:
        return self.label


@dataclass(eq=False)
class Handle:
    kind: str  # "mem", "host", "stream", "event", "graph", "graph_exec"
    ctx: Ctx
    payload: Any = None
    capture: list[Callable[[], None]] | None = None  # a stream's recorded work while capturing
    t: float = 0.0  # an event's record time


class Driver:
    """One fake GPU (device 0) and its contexts, handles and per-thread context stacks."""

    def __init__(self, name: str = "Orin (fake)", capability: tuple[int, int] = (8, 7), sm_count: int = 16,
                 driver_version: int = 12020):
        self.name, self.capability, self.sm_count, self.driver_version = name, capability, sm_count, driver_version
        self.primary = Ctx("primary context", primary=True, alive=False)
        self.primary_refs = 0
        self.runtime_holds_primary = False
        self.handles: dict[int, Handle] = {}
        self.errors: list[str] = []
        self.trt_objects: weakref.WeakSet[Any] = weakref.WeakSet()
        self._ids = itertools.count(0x7F0000001000, 0x100)
        self.timeline: list[str] = []  # "record <event>", "execute", "launch", "begin_capture", ... in call order
        self.on_record: list[Callable[[int], None]] = []  # called with the event handle at each event record
        self.counts: dict[str, int] = {}  # context API calls: make_context, retain_primary_context, push, ...
        self._stacks: dict[int, list[Ctx]] = {}  # thread ident -> driver context stack
        self.pycuda_stacks: dict[int, list[Any]] = {}  # thread ident -> pycuda's own stack
        self.lock = threading.RLock()

    # ---- contexts ------------------------------------------------------------------------------------------
    def stack(self) -> list[Ctx]:
        return self._stacks.setdefault(threading.get_ident(), [])

    def current(self) -> Ctx | None:
        stack = self.stack()
        return stack[-1] if stack else None

    def retain_primary(self) -> Ctx:
        self.primary_refs += 1
        self.primary.alive = True
        return self.primary

    def release_primary(self) -> None:
        if self.primary_refs <= 0:
            raise FakeCudaError("cuDevicePrimaryCtxRelease: the primary context is not retained")
        self.primary_refs -= 1
        if self.primary_refs == 0:
            live = [h.kind for h in self.handles.values() if h.ctx is self.primary]
            live += [type(o).__name__ for o in self.trt_objects if getattr(o, "ctx", None) is self.primary]
            if live:
                self.errors.append(f"primary context destroyed with live handles {sorted(live)}")
            self.primary.alive = False

    def set_current(self, ctx: Ctx) -> None:
        """``cuCtxSetCurrent``: replaces the top of this thread's stack."""
        stack = self.stack()
        if stack:
            stack[-1] = ctx
        else:
            stack.append(ctx)

    def runtime_ctx(self) -> Ctx:
        """The context a runtime-API call runs in on this thread (the primary one when none is current)."""
        cur = self.current()
        if cur is None:
            if not self.runtime_holds_primary:
                self.retain_primary()
                self.runtime_holds_primary = True
            self.set_current(self.primary)
            cur = self.primary
        if not cur.alive:
            raise FakeCudaError(f"{cur} was destroyed but is current on this thread")
        return cur

    # ---- handles -------------------------------------------------------------------------------------------
    def new(self, kind: str, ctx: Ctx, payload: Any = None) -> int:
        hid = next(self._ids)
        self.handles[hid] = Handle(kind, ctx, payload)
        return hid

    def get(self, hid: Any, kind: str, what: str, ctx: Ctx | None = None) -> Handle:
        """The live handle ``hid`` of ``kind``, checked against the current context (or ``ctx``)."""
        h = self.handles.get(int(hid))
        if h is None or h.kind != kind:
            raise FakeCudaError(f"{what}: invalid {kind} handle {hid!r}")
        cur = self.current() if ctx is None else ctx
        if cur is not h.ctx:
            raise FakeCudaError(f"{what}: {kind} of the {h.ctx} used while {cur or 'no context'} is current")
        return h

    def destroy(self, hid: Any, kind: str, what: str) -> None:
        self.get(hid, kind, what)
        del self.handles[int(hid)]

    def enqueue(self, stream: Any, work: Callable[[], None], what: str) -> None:
        h = self.get(stream, "stream", what)
        if h.capture is not None:
            h.capture.append(work)
        else:
            work()

    def memory(self, ptr: Any, what: str) -> np.ndarray:
        return self.get(ptr, "mem", what).payload

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def recorded(self, event: Any) -> None:
        self.timeline.append(f"record {int(event)}")
        for hook in self.on_record:
            hook(int(event))

    # ---- the end of a test ---------------------------------------------------------------------------------
    def check_clean(self) -> list[str]:
        """Everything a well-behaved user leaves behind: nothing (empty list) -- else what is wrong."""
        problems = list(self.errors)
        problems += [f"{h.kind} still alive" for h in self.handles.values()]
        problems += [f"TensorRT {type(o).__name__} still alive" for o in list(self.trt_objects)]
        problems += [f"pycuda context stack of a thread not empty: {s}" for s in self.pycuda_stacks.values() if s]
        held = self.primary_refs - int(self.runtime_holds_primary)
        if held:
            problems.append(f"primary context retained {held} time(s) more than the runtime holds it")
        return problems


# ---- pycuda.driver ---------------------------------------------------------------------------------------------
def make_pycuda(driver: Driver) -> types.ModuleType:
    """A stand-in of ``pycuda.driver`` on ``driver`` (install it with :func:`install`)."""
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    cuda.Error, cuda.LogicError = Error, LogicError
    cuda.device_attribute = enum.IntEnum("device_attribute", {"MULTIPROCESSOR_COUNT": 16})
    cuda.init = lambda flags=0: None
    cuda.get_driver_version = lambda: driver.driver_version
    cuda.get_version = lambda: (12, 2, 0)  # the CUDA pycuda was built against

    def pystack() -> list[Any]:
        return driver.pycuda_stacks.setdefault(threading.get_ident(), [])

    class Context:
        def __init__(self, ctx: Ctx):
            self.ctx, self.valid, self.thread = ctx, True, threading.get_ident()

        def push(self) -> None:
            driver.count("push")
            if not self.valid:
                raise LogicError("cannot push an invalid (detached) context")
            driver.stack().append(self.ctx)
            pystack().append(self)

        @staticmethod
        def pop() -> None:
            stack = pystack()
            if not stack:
                raise LogicError("context::pop failed: cannot pop non-current context")
            stack.pop()
            driver.stack().pop()

        @staticmethod
        def get_current() -> Context | None:
            stack = pystack()
            return stack[-1] if stack else None

        def detach(self) -> None:
            # pycuda's context::detach: when current, release and take it off pycuda's stack (the driver's stack
            # keeps it); else from the retaining thread push (driver) + release; from another thread: nothing.
            if not self.valid:
                raise LogicError("context::detach: cannot detach from invalid context")
            self.valid = False
            if pystack() and pystack()[-1] is self:
                pystack().pop()
            elif self.thread == threading.get_ident():
                driver.stack().append(self.ctx)
            else:
                return  # an out-of-thread context is not released (leaked until process exit)
            if self.ctx.primary:
                driver.release_primary()
            else:
                self.ctx.alive = False

    cuda.Context = Context

    class Device:
        def __init__(self, n: int):
            if n != 0:
                raise LogicError(f"cuDeviceGet failed: invalid device ordinal {n}")

        def name(self) -> str:
            return driver.name

        def compute_capability(self) -> tuple[int, int]:
            return driver.capability

        def get_attribute(self, attr: Any) -> int:
            assert attr == cuda.device_attribute.MULTIPROCESSOR_COUNT
            return driver.sm_count

        def retain_primary_context(self) -> Context:
            driver.count("retain_primary_context")
            return Context(driver.retain_primary())

        def make_context(self, flags: int = 0) -> Context:
            driver.count("make_context")
            ctx = Context(Ctx("pycuda-created context", primary=False))
            ctx.push()
            return ctx

    cuda.Device = Device

    def need_context(what: str) -> Ctx:
        cur = driver.current()
        if cur is None:
            raise LogicError(f"{what} failed: invalid device context")
        return cur

    class _Owned:
        """A pycuda object freed in its context: current, or pushed by pycuda from the owning thread."""

        hid: int | None = None  # stays None when the constructor failed (no context): nothing to free
        kind = ""

        def __init__(self, hid: int, kind: str):
            self.hid, self.kind, self.thread = hid, kind, threading.get_ident()

        def _free(self, what: str) -> None:
            if self.hid is None:
                return
            h = driver.handles.get(self.hid)
            if h is not None and driver.current() is not h.ctx and threading.get_ident() != self.thread:
                raise LogicError(f"{what}: cannot activate out-of-thread context")
            driver.handles.pop(self.hid, None)
            self.hid = None

        def __del__(self) -> None:
            try:
                self._free(f"{self.kind} destructor")
            except LogicError as exc:
                driver.errors.append(f"PyCUDA WARNING: a clean-up operation failed ({exc})")

    class DeviceAllocation(_Owned):
        def __init__(self, nbytes: int):
            super().__init__(driver.new("mem", need_context("cuMemAlloc"), np.zeros(nbytes, np.uint8)), "mem")

        def __int__(self) -> int:
            return int(self.hid)

        def free(self) -> None:
            self._free("DeviceAllocation.free")

    class HostAllocation(_Owned):
        def __init__(self, shape: Any, dtype: Any):
            buf = np.zeros(shape, dtype)
            super().__init__(driver.new("host", need_context("cuMemHostAlloc"), buf), "host")
            self.__array_interface__ = buf.__array_interface__

        def free(self) -> None:
            self._free("HostAllocation.free")

    cuda.mem_alloc = DeviceAllocation
    cuda.pagelocked_empty = lambda shape, dtype, order="C", mem_flags=0: np.asarray(HostAllocation(shape, dtype))

    class Stream(_Owned):
        def __init__(self, flags: int = 0):
            super().__init__(driver.new("stream", need_context("cuStreamCreate")), "stream")

        @property
        def handle(self) -> int:
            return int(self.hid)

        def synchronize(self) -> None:
            driver.get(self.hid, "stream", "cuStreamSynchronize")

    class Event(_Owned):
        def __init__(self, flags: int = 0):
            super().__init__(driver.new("event", need_context("cuEventCreate")), "event")

        def record(self, stream: Stream | None = None) -> None:
            h = driver.get(self.hid, "event", "cuEventRecord")
            driver.get(stream.hid, "stream", "cuEventRecord")  # type: ignore[union-attr]
            h.t = time.perf_counter()
            driver.recorded(self.hid)

        def synchronize(self) -> None:
            driver.get(self.hid, "event", "cuEventSynchronize")

        def time_since(self, start: Event) -> float:
            return (driver.get(self.hid, "event", "cuEventElapsedTime").t
                    - driver.get(start.hid, "event", "cuEventElapsedTime").t) * 1e3

    cuda.Stream, cuda.Event = Stream, Event

    def htod(dst: Any, src: np.ndarray, stream: Stream) -> None:
        mem = driver.memory(int(dst), "cuMemcpyHtoDAsync")
        data = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        driver.enqueue(stream.hid, lambda: mem.__setitem__(slice(0, data.size), data), "cuMemcpyHtoDAsync")

    def dtoh(dst: np.ndarray, src: Any, stream: Stream) -> None:
        mem = driver.memory(int(src), "cuMemcpyDtoHAsync")
        view = dst.reshape(-1).view(np.uint8)
        driver.enqueue(stream.hid, lambda: view.__setitem__(slice(None), mem[: view.size]), "cuMemcpyDtoHAsync")

    def dtod(dst: Any, src: Any, size: int, stream: Stream) -> None:
        a, b = driver.memory(int(dst), "cuMemcpyDtoDAsync"), driver.memory(int(src), "cuMemcpyDtoDAsync")
        driver.enqueue(stream.hid, lambda: a.__setitem__(slice(0, size), b[:size]), "cuMemcpyDtoDAsync")

    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async, cuda.memcpy_dtod_async = htod, dtoh, dtod
    return cuda


# ---- cuda-python runtime bindings ------------------------------------------------------------------------------
class _Ptr:
    """cuda-python's opaque handle types (cudaStream_t, cudaEvent_t, ...): ``int()`` and ``getPtr()``."""

    def __init__(self, hid: int):
        self.hid = hid

    def __int__(self) -> int:
        return self.hid

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        return self.hid


def make_cudart(driver: Driver, runtime_version: int = 12020, name: str = "cuda.bindings.runtime"
                ) -> types.ModuleType:
    """A stand-in of cuda-python's runtime module: every call returns ``(cudaError_t, *results)``.

    ``runtime_version`` is the CUDA runtime the bindings link; a driver older than its major version fails
    every call with ``cudaErrorInsufficientDriver`` (cuda-python 13 on a JetPack 6 driver).
    """
    rt = types.ModuleType(name)
    err = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1,
                                       "cudaErrorInsufficientDriver": 35, "cudaErrorInvalidResourceHandle": 400,
                                       "cudaErrorStreamCaptureInvalidated": 901})
    rt.cudaError_t = err
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2,
                                                        "cudaMemcpyDeviceToDevice": 3})
    rt.cudaStreamCaptureMode = enum.IntEnum("cudaStreamCaptureMode", {"cudaStreamCaptureModeGlobal": 0,
                                                                      "cudaStreamCaptureModeThreadLocal": 1})
    state = threading.local()

    def api(fn: Callable[..., Any], needs_driver: bool = True) -> Callable[..., Any]:
        def call(*args: Any) -> tuple:
            if needs_driver and runtime_version // 1000 > driver.driver_version // 1000:
                return (err.cudaErrorInsufficientDriver,)
            try:
                out = fn(*args)
            except FakeCudaError as exc:
                state.last = str(exc)
                return (err.cudaErrorInvalidResourceHandle,)
            return (err.cudaSuccess, *(out if isinstance(out, tuple) else (() if out is None else (out,))))

        return call

    def ctx() -> Ctx:
        return driver.runtime_ctx()

    def set_device(dev: int) -> None:
        driver.count("cudaSetDevice")
        if dev != 0:
            raise FakeCudaError(f"invalid device {dev}")
        if not driver.runtime_holds_primary:
            driver.retain_primary()
            driver.runtime_holds_primary = True
        driver.set_current(driver.primary)

    def free(ptr: Any) -> None:
        if int(ptr) == 0:
            ctx()  # cudaFree(0): initialises the context
            return
        ctx()
        driver.destroy(ptr, "mem", "cudaFree")

    def malloc_host(nbytes: int) -> int:
        buf = np.zeros(nbytes, np.uint8)
        hid = driver.new("host", ctx(), buf)
        addr = buf.ctypes.data
        driver.handles[hid].payload = (addr, buf)
        return addr

    def free_host(addr: int) -> None:
        ctx()
        hid = next((k for k, h in driver.handles.items() if h.kind == "host" and h.payload[0] == addr), None)
        if hid is None:
            raise FakeCudaError(f"cudaFreeHost: {addr:#x} is not pinned memory")
        driver.destroy(hid, "host", "cudaFreeHost")

    def memcpy(dst: Any, src: Any, nbytes: int, kind: Any, stream: Any) -> None:
        ctx()
        if kind == rt.cudaMemcpyKind.cudaMemcpyHostToDevice:
            mem = driver.memory(dst, "cudaMemcpyAsync")
            work = lambda: ctypes.memmove(mem.ctypes.data, int(src), nbytes)  # noqa: E731
        elif kind == rt.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            mem = driver.memory(src, "cudaMemcpyAsync")
            work = lambda: ctypes.memmove(int(dst), mem.ctypes.data, nbytes)  # noqa: E731
        else:
            a, b = driver.memory(dst, "cudaMemcpyAsync"), driver.memory(src, "cudaMemcpyAsync")
            work = lambda: a.__setitem__(slice(0, nbytes), b[:nbytes])  # noqa: E731
        driver.enqueue(stream, work, "cudaMemcpyAsync")

    def record(event: Any, stream: Any) -> None:
        ctx()
        h = driver.get(event, "event", "cudaEventRecord")
        if driver.get(stream, "stream", "cudaEventRecord").capture is not None:
            raise FakeCudaError("cudaEventRecord on a capturing stream (not captured by this code)")
        h.t = time.perf_counter()
        driver.recorded(event)

    def elapsed(start: Any, end: Any) -> float:
        ctx()
        return (driver.get(end, "event", "cudaEventElapsedTime").t
                - driver.get(start, "event", "cudaEventElapsedTime").t) * 1e3

    def begin_capture(stream: Any, mode: Any) -> None:
        ctx()
        driver.timeline.append("begin_capture")
        driver.get(stream, "stream", "cudaStreamBeginCapture").capture = []

    def end_capture(stream: Any) -> _Ptr:
        h = driver.get(stream, "stream", "cudaStreamEndCapture", ctx())
        work, h.capture = h.capture or [], None
        return _Ptr(driver.new("graph", h.ctx, work))

    def instantiate(graph: Any, flags: int) -> _Ptr:
        work = driver.get(graph, "graph", "cudaGraphInstantiate", ctx()).payload
        return _Ptr(driver.new("graph_exec", driver.current(), list(work)))  # type: ignore[arg-type]

    def launch(graph_exec: Any, stream: Any) -> None:
        ctx()
        driver.timeline.append("launch")
        for work in driver.get(graph_exec, "graph_exec", "cudaGraphLaunch").payload:
            driver.enqueue(stream, work, "cudaGraphLaunch")

    def props(dev: int) -> Any:
        ctx()
        return types.SimpleNamespace(name=driver.name.encode() + b"\x00" * 8, major=driver.capability[0],
                                     minor=driver.capability[1], multiProcessorCount=driver.sm_count)

    calls: dict[str, Callable[..., Any]] = {
        "cudaSetDevice": set_device,
        "cudaFree": free,
        "cudaMalloc": lambda n: _Ptr(driver.new("mem", ctx(), np.zeros(int(n), np.uint8))),
        "cudaMallocHost": malloc_host,
        "cudaFreeHost": free_host,
        "cudaStreamCreate": lambda: _Ptr(driver.new("stream", ctx())),
        "cudaStreamDestroy": lambda s: driver.destroy(s, "stream", "cudaStreamDestroy") if ctx() else None,
        "cudaStreamSynchronize": lambda s: driver.get(s, "stream", "cudaStreamSynchronize", ctx()) and None,
        "cudaMemcpyAsync": memcpy,
        "cudaEventCreate": lambda: _Ptr(driver.new("event", ctx())),
        "cudaEventDestroy": lambda e: driver.destroy(e, "event", "cudaEventDestroy") if ctx() else None,
        "cudaEventRecord": record,
        "cudaEventSynchronize": lambda e: driver.get(e, "event", "cudaEventSynchronize", ctx()) and None,
        "cudaEventElapsedTime": elapsed,
        "cudaStreamBeginCapture": begin_capture,
        "cudaStreamEndCapture": end_capture,
        "cudaGraphInstantiate": instantiate,
        "cudaGraphDestroy": lambda g: driver.destroy(g, "graph", "cudaGraphDestroy") if ctx() else None,
        "cudaGraphExecDestroy": lambda g: driver.destroy(g, "graph_exec", "cudaGraphExecDestroy") if ctx() else None,
        "cudaGraphLaunch": launch,
        "cudaGetDeviceProperties": props,
        "cudaDriverGetVersion": lambda: driver.driver_version,
        "cudaRuntimeGetVersion": lambda: runtime_version,
    }
    for fn_name, fn in calls.items():  # the two version queries work whatever the driver
        setattr(rt, fn_name, api(fn, fn_name not in ("cudaDriverGetVersion", "cudaRuntimeGetVersion")))
    rt.cudaGetErrorString = lambda e: (err.cudaSuccess, getattr(state, "last", err(e).name).encode())
    return rt


@dataclass
class Installed:
    """What :func:`install` put in ``sys.modules``."""

    driver: Driver
    pycuda: types.ModuleType | None = None
    cudart: types.ModuleType | None = None
    modules: dict[str, Any] = field(default_factory=dict)


def install(monkeypatch: Any, driver: Driver, backends: tuple[str, ...] = ("pycuda", "cuda-python"),
            cuda_python: str = "12.6") -> Installed:
    """Put the stand-ins into ``sys.modules`` (and hide real ones): pycuda and/or cuda-python of a release.

    ``cuda_python``: "12.2" has only ``cuda.cudart``; "12.6" has both layouts; "13.0" only ``cuda.bindings.runtime``,
    linking the CUDA 13 runtime.
    """
    out = Installed(driver)
    names = ["pycuda", "pycuda.driver", "cuda", "cuda.cudart", "cuda.bindings", "cuda.bindings.runtime"]
    mods: dict[str, Any] = dict.fromkeys(names)
    if "pycuda" in backends:
        out.pycuda = make_pycuda(driver)
        mods["pycuda"] = types.ModuleType("pycuda")
        mods["pycuda"].driver = out.pycuda
        mods["pycuda.driver"] = out.pycuda
    if "cuda-python" in backends:
        major = int(cuda_python.split(".")[0])
        minor = int(cuda_python.split(".")[1])
        runtime = major * 1000 + minor * 10
        mods["cuda"] = types.ModuleType("cuda")
        if major >= 13 or (major, minor) >= (12, 6):
            out.cudart = make_cudart(driver, runtime, "cuda.bindings.runtime")
            mods["cuda.bindings"] = types.ModuleType("cuda.bindings")
            mods["cuda.bindings"].__version__ = cuda_python
            mods["cuda.bindings"].runtime = out.cudart
            mods["cuda.bindings.runtime"] = out.cudart
        if major < 13:
            old = out.cudart or make_cudart(driver, runtime, "cuda.cudart")
            out.cudart = out.cudart or old
            mods["cuda.cudart"] = old
            mods["cuda"].cudart = old
        mods["cuda"].__version__ = cuda_python
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    out.modules = mods
    return out
