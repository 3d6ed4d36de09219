"""TensorRT runner: name-based I/O, pinned host buffers sized once for the profile's max batch, one stream.

TensorRT calls (TensorRT 10.x/11.x Python API; the binding-index API is gone since 10.0):
``trt.Runtime(logger).deserialize_cuda_engine(bytes)`` (None when the bytes are not a loadable engine),
``engine.num_io_tensors`` / ``get_tensor_name(i)`` / ``get_tensor_mode(name)`` / ``get_tensor_dtype(name)`` /
``get_tensor_profile_shape(name, 0)``, ``engine.create_execution_context()``, ``context.set_input_shape``,
``context.get_tensor_shape``, ``context.set_tensor_address``, ``context.execute_async_v3(stream_handle)``.

Optional CUDA-graph capture per batch size (cuda-python adapter): after a shape change TensorRT needs one
plain enqueue before capture, so the first call of each size runs normally, then captures; later calls launch
the graph. Four CUDA events on the stream split each call into host->device copy, device execution and
device->host copy; their times land in ``last_timings`` (``h2d_ms``, ``device_ms``, ``d2h_ms``), which
:mod:`~mosaic_edge.edge_runtime.profiling` reports per stage. Never imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract, sha256_file
from mosaic_edge.edge_runtime.cuda_adapter import CudaAdapter, open_cuda_adapter
from mosaic_edge.edge_runtime.engine_cache import CacheResult, EngineCache, EngineKey, EngineLoadError
from mosaic_edge.edge_runtime.runner import Runner, _resolve
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
        raise EngineLoadError(
            f"{path.name}: TensorRT could not deserialize it (corrupt or other TensorRT/GPU)"
        )
    return engine


class TensorRTRunner(Runner):
    """Run a deserialized TensorRT engine.

    Args:
        engine: A deserialized ``ICudaEngine`` (see :func:`open_trt_runner`) or a path to an engine file.
        contract: What the model consumes and produces.
        precision / model_hash: Recorded in every output record.
        cuda_graphs: Capture one CUDA graph per batch size (needs the cuda-python adapter).
        cuda_backend: "auto", "cuda-python" or "pycuda".
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
    ):
        self._trt = require("tensorrt", extra="trt")
        self._cuda: CudaAdapter = open_cuda_adapter(cuda_backend)
        if cuda_graphs and not self._cuda.supports_graphs:
            raise UserError(f"CUDA graphs need the cuda-python adapter, not {self._cuda.backend}")
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._engine = (
            load_engine(self._trt, Path(engine), self._logger) if isinstance(engine, (str, Path)) else engine
        )
        self.cuda_graphs = cuda_graphs
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_in = {n: self._engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_in[n]]
        self.outputs = [n for n in names if not is_in[n]]
        missing = sorted(set(contract.input_names) - set(self.inputs)) + sorted(
            set(contract.output_names) - set(self.outputs)
        )
        if missing:
            raise ContractMismatchError(f"engine lacks tensors {missing} named by the contract")
        self.profile = {
            n: tuple(tuple(s) for s in self._engine.get_tensor_profile_shape(n, 0)) for n in self.inputs
        }
        max_batch = min(int(p[2][0]) for p in self.profile.values())
        super().__init__(contract, precision, model_hash, max_batch=max_batch)
        self._context: Any = None
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, Any] = {}
        self._stream: Any = None
        self._graphs: dict[int, Any] = {}
        self._shape_of: dict[int, dict[str, tuple[int, ...]]] = {}
        self._events: list[Any] = []
        self.model_path: Path | None = Path(engine) if isinstance(engine, (str, Path)) else None
        self.last_timings: dict[str, float] | None = None  # CUDA-event times of the last infer, in ms

    def _activate(self) -> None:
        trt, cuda = self._trt, self._cuda
        self._context = self._engine.create_execution_context()
        self._stream = cuda.stream()
        self._events = [cuda.event() for _ in range(4)]  # start | after h2d | after execution | after d2h
        for name in self.inputs:  # max shapes once, so output buffers can be sized for the largest batch
            self._context.set_input_shape(name, self.profile[name][2])
        for name in self.inputs + self.outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pinned_empty(shape, dtype)
            self._dev[name] = cuda.malloc(self._host[name].nbytes)
            # Addresses never change: set once, valid for every batch size <= max.
            self._context.set_tensor_address(name, cuda.ptr(self._dev[name]))

    def _deactivate(self) -> None:
        cuda = self._cuda
        if self._stream is not None:
            cuda.synchronize(self._stream)
        for arr in self._host.values():
            cuda.free_pinned(arr)
        for ptr in self._dev.values():
            cuda.free(ptr)
        self._host, self._dev, self._graphs, self._context = {}, {}, {}, None
        self._events = []

    def _set_shapes(self, n: int) -> None:
        for name in self.inputs:
            self._context.set_input_shape(name, (n, *self.profile[name][2][1:]))

    def _enqueue(self, n: int) -> None:
        handle = self._cuda.handle(self._stream)
        if not self.cuda_graphs:
            if not self._context.execute_async_v3(handle):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for batch {n}")
            return
        if n in self._graphs:
            self._cuda.launch(self._graphs[n], self._stream)
            return
        if not self._context.execute_async_v3(
            handle
        ):  # the plain enqueue TensorRT needs after a shape change
            raise RuntimeError(f"TensorRT execute_async_v3 failed for batch {n}")
        self._cuda.begin_capture(self._stream)
        ok = self._context.execute_async_v3(handle)
        graph = self._cuda.end_capture(self._stream)
        if not ok:
            raise RuntimeError(f"TensorRT execute_async_v3 failed while capturing a CUDA graph for batch {n}")
        self._graphs[n] = graph

    def _infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        n = int(next(iter(batch.values())).shape[0])
        self._set_shapes(n)
        ev = self._events
        cuda.record(ev[0], self._stream)
        for name in self.inputs:
            host = self._host[name]
            rows = host[:n]
            rows[...] = batch[name].astype(host.dtype, copy=False)
            cuda.h2d_async(self._dev[name], rows, self._stream)
        cuda.record(ev[1], self._stream)
        self._enqueue(n)
        cuda.record(ev[2], self._stream)  # after end_capture: events are never recorded into a graph
        out_rows = {}
        for name in self.outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            rows = self._host[name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            cuda.d2h_async(rows, self._dev[name], self._stream)
            out_rows[name] = rows
        cuda.record(ev[3], self._stream)
        cuda.synchronize(self._stream)
        self.last_timings = {"h2d_ms": cuda.elapsed_ms(ev[0], ev[1]),
                             "device_ms": cuda.elapsed_ms(ev[1], ev[2]),
                             "d2h_ms": cuda.elapsed_ms(ev[2], ev[3])}
        return {name: np.array(rows, dtype=np.float32) for name, rows in out_rows.items()}

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "cuda": self._cuda.backend,
            "cuda_graphs": self.cuda_graphs,
            "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
        }


def default_engine_dir() -> Path:
    """Where engines are cached: ``$MOSAIC_EDGE_ENGINE_DIR`` or ``~/.cache/mosaic-edge/engines``."""
    import os

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

    The engine cache key is (ONNX sha256, TensorRT version, GPU name, precision, profile); see
    :mod:`mosaic_edge.edge_runtime.engine_cache`.
    """
    from mosaic_edge.export.trt import BatchRange, build_engine, profile_shapes, trt_version_of

    trt = require("tensorrt", extra="trt")
    precision = precision or "int8"
    path, manifest_contract, digest = _resolve(Path(model), "tensorrt", precision)
    if contract is not None and manifest_contract is not None:
        contract.check_compatible(manifest_contract, what=str(model))
    contract = contract or manifest_contract
    if contract is None:
        raise ContractMismatchError(f"{model}: no contract (give an export directory with manifest.json)")
    cuda = open_cuda_adapter(cuda_backend)
    gpu = cuda.device_name()
    cuda.close()
    batch = BatchRange(min_batch, opt_batch, max_batch)
    shapes = profile_shapes({k: (-1, *v[1:]) for k, v in contract.input_shapes().items()}, batch)
    key = EngineKey(
        digest or sha256_file(path),
        str(trt_version_of(trt)),
        gpu,
        precision,
        {k: [list(s) for s in v] for k, v in shapes.items()},
    )
    logger = trt.Logger(trt.Logger.WARNING)

    def _build(onnx: Path, out: Path, k: EngineKey) -> dict[str, Any]:
        m = build_engine(
            onnx,
            out,
            precision=k.precision,
            min_batch=batch.min,
            opt_batch=batch.opt,
            max_batch=batch.max,
            workspace_mb=workspace_mb,
            timing_cache=Path(engine_dir or default_engine_dir()) / "timing.cache",
            gpu_name=k.gpu_name,
        )
        return {"build_seconds": m.build_seconds, "strongly_typed": m.strongly_typed}

    cache = EngineCache(engine_dir or default_engine_dir(), _build, lambda p: load_engine(trt, p, logger))
    res: CacheResult = cache.load_or_build(path, key)
    log.info("engine %s (%s)", res.path, "built" if res.built else "cached")
    runner = TensorRTRunner(res.engine, contract, precision, key.model_sha256, cuda_graphs, cuda_backend)
    runner.model_path = path  # the ONNX artefact the engine was built from (its name keys the export report)
    return runner
