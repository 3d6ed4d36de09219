"""TensorRT runner: name-based I/O, pinned host buffers sized once for the profile's max batch, one stream.

TensorRT calls (8.6, 10.x, 11.x Python API; the binding-index API is gone since 10.0):
``trt.Runtime(logger).deserialize_cuda_engine(bytes)`` (None when the bytes are not a loadable engine),
``engine.num_io_tensors`` / ``get_tensor_name(i)`` / ``get_tensor_mode(name)`` / ``get_tensor_dtype(name)`` /
``get_tensor_profile_shape(name, 0)``, ``engine.create_execution_context()``, ``context.set_input_shape`` and
``context.set_tensor_address`` (both return False on failure: raised here with the tensor's name),
``context.get_tensor_shape``, ``context.execute_async_v3(stream_handle)``.

CUDA: ONE context for everything -- the device's primary context, through one
:class:`~mosaic_edge.edge_runtime.cuda_adapter.CudaAdapter` the runner owns: :func:`open_trt_runner` queries the
GPU, builds and deserializes the engine in it, the runner allocates, executes and frees in it, and every public
entry point (``activate``, ``infer``, ``deactivate`` / ``close``) makes it current on the calling thread, so the
daemon may run inference on another thread than the one that built the runner. ``deactivate`` destroys the
execution contexts, CUDA graphs, events, stream and buffers, drops the engine and closes the adapter; a later
``activate`` reopens the adapter and reloads the engine file.

I/O types are the engine's: each host input is cast into a pinned buffer of the engine's dtype in one pass
(``np.copyto``), outputs come back as float32 whatever the engine's output dtype.

Timings (``last_timings``, ms, from four CUDA events on the stream): ``h2d_ms`` the host->device copies (the
start event is recorded after host staging), ``device_ms`` GPU execution only, ``d2h_ms`` the copies back; with
CUDA graphs the first call of a batch size runs plainly, then captures and instantiates its graph outside the
timed span (``graph_capture_ms``, host time). One execution context per captured batch size: a graph replays the
state its context had at capture. Never imports torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.edge_runtime.cuda_adapter import CudaAdapter, open_cuda_adapter
from mosaic_edge.edge_runtime.engine_cache import CacheResult, EngineCache, EngineKey, EngineLoadError
from mosaic_edge.edge_runtime.runner import Runner
from mosaic_edge.errors import ContractMismatchError, UserError
from mosaic_edge.optional import require

log = logging.getLogger(__name__)


def load_engine(trt: Any, path: Path, logger: Any) -> Any:
    """Deserialize an engine file; :class:`EngineLoadError` instead of None or a TensorRT exception."""
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
    except Exception as exc:  # noqa: BLE001 - TensorRT raises its own types on some versions
        raise EngineLoadError(f"{path.name}: {exc}") from exc
    if engine is None:
        raise EngineLoadError(f"{path.name}: TensorRT could not deserialize it (corrupt or other TensorRT/GPU)")
    return engine


class TensorRTRunner(Runner):
    """Run a deserialized TensorRT engine.

    Args:
        engine: A deserialized ``ICudaEngine`` (made in ``cuda``'s context) or a path to an engine file.
        contract: What the model consumes and produces.
        precision / model_hash: Recorded in every output record.
        cuda_graphs: Capture one CUDA graph per batch size (needs the cuda-python adapter).
        cuda_backend: "auto", "cuda-python" or "pycuda" (when ``cuda`` is None, and to reopen after a deactivate).
        cuda: The adapter the engine was deserialized with; the runner owns it from here on (closes it).
        engine_path: The engine file, so the runner can be activated again after a deactivate.
    """

    kind = "trt"

    def __init__(
        self,
        engine: Any,
        contract: Contract,
        precision: str = "fp16",
        model_hash: str = "",
        cuda_graphs: bool = False,
        cuda_backend: str = "auto",
        cuda: CudaAdapter | None = None,
        engine_path: str | Path | None = None,
    ):
        self._trt = require("tensorrt", extra="trt")
        self._cuda: CudaAdapter = cuda if cuda is not None else open_cuda_adapter(cuda_backend)
        self._lock = threading.RLock()
        self.cuda_backend = cuda_backend
        self.cuda_graphs = cuda_graphs
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        is_file = isinstance(engine, (str, Path))
        self.engine_path: Path | None = Path(engine) if is_file else (Path(engine_path) if engine_path else None)
        self._engine: Any = None
        try:
            if cuda_graphs and not self._cuda.supports_graphs:
                raise UserError(f"CUDA graphs need the cuda-python adapter, not {self._cuda.backend}")
            with self._cuda.current():
                try:
                    self._engine = load_engine(self._trt, Path(engine), self._logger) if is_file else engine
                    self._read_io(contract)
                except BaseException:
                    self._engine = engine = None  # released while its context is current
                    raise
        except BaseException:
            self._cuda.close()
            raise
        max_batch = min(int(p[2][0]) for p in self.profile.values())
        super().__init__(contract, precision, model_hash, max_batch=max_batch)
        self._contexts: dict[int, Any] = {}  # batch size -> execution context (key 0: the reshaped one)
        self._shape_now: dict[int, int] = {}  # execution-context key -> batch its input shapes are set for
        self._graphs: dict[int, Any] = {}
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, Any] = {}
        self._stream: Any = None
        self._events: list[Any] = []
        self.model_path: Path | None = self.engine_path if is_file else None
        self.last_timings: dict[str, float] | None = None  # CUDA-event times of the last infer, in ms

    def _read_io(self, contract: Contract) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_in = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_in[n]]
        self.outputs = [n for n in names if not is_in[n]]
        missing = sorted(set(contract.input_names) - set(self.inputs)) + sorted(
            set(contract.output_names) - set(self.outputs))
        if missing:
            raise ContractMismatchError(f"engine lacks tensors {missing} named by the contract")
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.profile = {n: tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, 0))
                        for n in self.inputs}

    # ---- lifecycle (every entry point: under the lock, in the context, on the calling thread) --------------
    def _activate(self) -> None:
        with self._lock:
            if self._cuda.closed:
                self._reopen()
            with self._cuda.current():
                try:
                    self._allocate()
                except BaseException:
                    self._release()  # what was allocated before the failure (e.g. a refused address)
                    raise

    def _reopen(self) -> None:
        if self.engine_path is None:
            raise RuntimeError("this TensorRT runner was deactivated and has no engine file to reload; open a new one")
        self._cuda = open_cuda_adapter(self.cuda_backend)
        try:
            with self._cuda.current():
                self._engine = load_engine(self._trt, self.engine_path, self._logger)
        except BaseException:
            self._cuda.close()
            raise

    def _allocate(self) -> None:
        cuda = self._cuda
        self._stream = cuda.stream()
        self._events = [cuda.event() for _ in range(4)]  # start | after h2d | after execution | after d2h
        # Buffers for the largest batch: output sizes come from a context set to the max shapes.
        nmax = self.max_batch or 1
        ctx = self._new_context()
        self._set_batch(ctx, 0, nmax)
        for name in self.inputs + self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            self._host[name] = cuda.pinned_empty(shape, self.dtypes[name])
            self._dev[name] = cuda.malloc(self._host[name].nbytes)
        if self.cuda_graphs:  # one context per captured batch size instead (made on first sight of the size)
            self._shape_now.clear()
        else:  # addresses never change: bound once, valid for every batch size <= max
            self._bind(ctx)
            self._contexts[0] = ctx

    def deactivate(self) -> None:
        """Release buffers, stream, events, graphs, execution contexts and the engine, and close the CUDA adapter.

        Idempotent, and also for a runner that was never activated (``close`` is the same call).
        """
        with self._lock:
            super().deactivate()  # the buffers etc., when active
            if not self._cuda.closed:
                with self._cuda.current():  # TensorRT objects go while their context is current
                    self._contexts.clear()
                    self._engine = None
                self._cuda.close()

    close = deactivate

    def _deactivate(self) -> None:
        with self._cuda.current():
            self._release()

    def _release(self) -> None:
        cuda = self._cuda
        if self._stream is not None:
            cuda.synchronize(self._stream)
        for graph in self._graphs.values():
            cuda.destroy_graph(graph)
        self._graphs.clear()
        for event in self._events:
            cuda.destroy_event(event)
        self._events = []
        if self._stream is not None:
            cuda.destroy_stream(self._stream)
        self._stream = None
        for arr in self._host.values():
            cuda.free_pinned(arr)
        for ptr in self._dev.values():
            cuda.free(ptr)
        self._host, self._dev = {}, {}
        self._contexts.clear()  # execution contexts (before the engine goes, in deactivate)
        self._shape_now.clear()

    def input_buffers(self, rows: int) -> dict[str, np.ndarray]:
        """Views of the pinned staging buffers when they can take the batch as it is (active, ``rows`` within
        the profile, the engine's dtype = the contract's): a batch assembled there is copied to the device
        without another host copy. Otherwise host arrays (the base class)."""
        if (self._host and 1 <= rows <= (self.max_batch or 0)
                and all(self.dtypes[n] == np.dtype(self.contract.input_dtype(n)) for n in self.inputs)):
            return {name: self._host[name] for name in self.inputs}
        return super().input_buffers(rows)

    # ---- execution -----------------------------------------------------------------------------------------
    def _new_context(self) -> Any:
        ctx = self._engine.create_execution_context()
        if ctx is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        return ctx

    def _bind(self, ctx: Any) -> None:
        for name in self.inputs + self.outputs:
            if not ctx.set_tensor_address(name, self._cuda.ptr(self._dev[name])):
                raise RuntimeError(f"TensorRT rejected the device address of tensor {name!r}")

    def _set_batch(self, ctx: Any, key: int, n: int) -> None:
        if self._shape_now.get(key) == n:
            return
        for name in self.inputs:
            shape = (n, *self.profile[name][2][1:])
            if not ctx.set_input_shape(name, shape):
                lo, hi = self.profile[name][0], self.profile[name][2]
                raise RuntimeError(f"TensorRT rejected input shape {shape} for tensor {name!r} (profile {lo} .. {hi})")
        self._shape_now[key] = n

    def _context_for(self, n: int) -> Any:
        """The execution context for batch ``n``, its input shapes set: one per batch size with CUDA graphs (a
        captured graph replays the state of its context), else one reshaped when the batch size changes."""
        key = n if self.cuda_graphs else 0
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._new_context()
            self._bind(ctx)
            self._contexts[key] = ctx
        self._set_batch(ctx, key, n)
        return ctx

    def _execute(self, ctx: Any, n: int) -> None:
        if not ctx.execute_async_v3(self._cuda.handle(self._stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for batch {n}")

    def _capture(self, ctx: Any, n: int) -> float:
        """Capture and instantiate batch ``n``'s graph (after its plain run); returns host ms."""
        t0 = time.perf_counter()
        self._cuda.begin_capture(self._stream)
        try:
            ok = ctx.execute_async_v3(self._cuda.handle(self._stream))
        finally:
            graph = self._cuda.end_capture(self._stream)
        if not ok:
            self._cuda.destroy_graph(graph)
            raise RuntimeError(f"TensorRT execute_async_v3 failed while capturing a CUDA graph for batch {n}")
        self._graphs[n] = graph
        return (time.perf_counter() - t0) * 1e3

    def _infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock, self._cuda.current():
            cuda, stream, ev = self._cuda, self._stream, self._events
            n = int(next(iter(batch.values())).shape[0])
            ctx = self._context_for(n)
            for name in self.inputs:  # host staging: one pass, into the engine's dtype
                staged = self._host[name][:n]
                if not (batch[name].ctypes.data == staged.ctypes.data and batch[name].dtype == staged.dtype
                        and batch[name].strides == staged.strides):  # not assembled in place (input_buffers)
                    np.copyto(staged, batch[name], casting="unsafe")
            cuda.record(ev[0], stream)
            for name in self.inputs:
                cuda.h2d_async(self._dev[name], self._host[name][:n], stream)
            cuda.record(ev[1], stream)
            replay = self.cuda_graphs and n in self._graphs
            if replay:
                cuda.launch(self._graphs[n], stream)
            else:
                self._execute(ctx, n)
            cuda.record(ev[2], stream)
            out_rows = {}
            for name in self.outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
                rows = self._host[name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
                cuda.d2h_async(rows, self._dev[name], stream)
                out_rows[name] = rows
            cuda.record(ev[3], stream)
            cuda.synchronize(stream)
            timings = {"h2d_ms": cuda.elapsed_ms(ev[0], ev[1]), "device_ms": cuda.elapsed_ms(ev[1], ev[2]),
                       "d2h_ms": cuda.elapsed_ms(ev[2], ev[3])}
            if self.cuda_graphs and not replay:
                timings["graph_capture_ms"] = self._capture(ctx, n)
            self.last_timings = timings
            return {name: rows.astype(np.float32) for name, rows in out_rows.items()}  # a copy: buffers are reused

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "cuda": self._cuda.backend,
            "cuda_graphs": self.cuda_graphs,
            "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
            "io_dtypes": {k: v.name for k, v in self.dtypes.items()},
        }


def default_engine_dir() -> Path:
    """Where engines are cached: ``$MOSAIC_EDGE_ENGINE_DIR`` or ``~/.cache/mosaic-edge/engines``."""
    env = os.environ.get("MOSAIC_EDGE_ENGINE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mosaic-edge" / "engines"


def open_trt_runner(
    model: str | Path,
    precision: str | None = None,
    contract: Contract | None = None,
    engine_dir: str | Path | None = None,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_mb: int = 1024,
    cuda_graphs: bool = False,
    cuda_backend: str = "auto",
) -> TensorRTRunner:
    """Runner for an export directory or ONNX file: engine from the cache, built on this device if needed.

    The artefact and its precision come from the export manifest (:func:`mosaic_edge.export.trt.resolve_artefact`);
    the engine cache key is described in :mod:`mosaic_edge.edge_runtime.engine_cache`. The GPU query, the build
    and the deserialization run in the one CUDA context the returned runner then owns.
    """
    from mosaic_edge.contract import sha256_file
    from mosaic_edge.export.trt import (
        BUILDER_VERSION,
        BatchRange,
        build_engine,
        check_trt_version,
        profile_shapes,
        resolve_artefact,
        trt_version_of,
    )

    trt = require("tensorrt", extra="trt")
    version = trt_version_of(trt)
    check_trt_version(version)  # before a cached engine of an unsupported TensorRT could be loaded
    art = resolve_artefact(model, precision, trt_version=version)
    if contract is not None and art.contract is not None:
        contract.check_compatible(art.contract, what=str(model))
    contract = contract or art.contract
    if contract is None:
        raise ContractMismatchError(f"{model}: no contract (give an export directory with manifest.json)")
    batch = BatchRange(min_batch, opt_batch, max_batch)
    shapes = profile_shapes({k: (-1, *v[1:]) for k, v in contract.input_shapes().items()}, batch)
    root = Path(engine_dir) if engine_dir is not None else default_engine_dir()
    logger = trt.Logger(trt.Logger.WARNING)
    cuda = open_cuda_adapter(cuda_backend)
    try:
        if cuda_graphs and not cuda.supports_graphs:  # before minutes of engine building, not after
            raise UserError(f"CUDA graphs need the cuda-python adapter, not {cuda.backend}")
        with cuda.current():
            dev = cuda.device_info()
            key = EngineKey(
                model_sha256=art.sha256 or sha256_file(art.path), trt_version=str(version), gpu_name=dev.name,
                precision=art.precision, profile={k: [list(s) for s in v] for k, v in shapes.items()},
                compute_capability=dev.compute_capability, sm_count=dev.sm_count,
                driver_version=dev.driver_version, workspace_mb=int(workspace_mb), builder_version=BUILDER_VERSION,
                calib_sha256=sha256_file(art.calib_cache) if art.calib_cache is not None else "")

            def _build(onnx: Path, out: Path, k: EngineKey) -> dict[str, Any]:
                m = build_engine(onnx, out, precision=k.precision, onnx_precision=art.onnx_precision,
                                 min_batch=batch.min, opt_batch=batch.opt, max_batch=batch.max,
                                 workspace_mb=workspace_mb, timing_cache=root / "timing.cache",
                                 calib_cache=art.calib_cache, device=dev.to_dict())
                return {"build_seconds": m.build_seconds, "strongly_typed": m.strongly_typed,
                        "onnx_precision": m.onnx_precision}

            cache = EngineCache(root, _build, lambda p: load_engine(trt, p, logger))
            res: CacheResult = cache.load_or_build(art.path, key)
            log.info("engine %s (%s)", res.path, "built" if res.built else "cached")
    except BaseException:
        cuda.close()
        raise
    runner = TensorRTRunner(res.engine, contract, art.precision, key.model_sha256, cuda_graphs, cuda_backend,
                            cuda=cuda, engine_path=res.path)
    runner.model_path = art.path  # the ONNX artefact the engine was built from (its name keys the export report)
    return runner
