"""A stand-in ``tensorrt`` module, per release (8.6, 10.3, 11.1), for tests on machines without TensorRT.

Only the API our builder and runner use exists, spelt and numbered as each release's Python bindings
(``python/src/infer/pyCore.cpp``, ``include/NvInfer.h``): a removed name is missing (no ``EXPLICIT_BATCH``,
``BuilderFlag.FP16/INT8``, ``IInt8EntropyCalibrator2`` or ``int8_calibrator`` in 11; no ``STRONGLY_TYPED``
before 9; no ``ParserError.node_name`` before 10), and it refuses what TensorRT refuses:

* the ONNX parser really parses (``onnx``): bytes that are no model, a model the ONNX checker rejects, an op
  without importer, a UINT16 tensor, or -- on 8.6, whose Q/DQ importer reads scales as float32 -- an fp16 scale
  each give parser errors with node index, name and operator; 8.6/9.x need ``EXPLICIT_BATCH``;
* ``profile.set_shape`` raises unless ``min <= opt <= max``; a dynamic input without profile fails the build;
* precision flags on a strongly typed network, a Q/DQ network without ``INT8`` on 8.6, implicit INT8 whose
  calibration cache header is not this version's: the build returns None;
* the timing cache: ``create_timing_cache`` returns None for bytes it cannot read, ``set_timing_cache`` returns
  False for a cache of another device, ``get_timing_cache`` returns None when none is set;
* engines: I/O names, shapes and dtypes are the ONNX's (fp16 I/O for an ONNX with fp16 I/O); an engine of another
  TensorRT or GPU does not deserialize; engine, execution contexts, streams and addresses must all belong to the
  CUDA context current when they are used (:mod:`tests.support.fake_cuda`); ``set_input_shape`` outside the
  profile and ``set_tensor_address`` of an unknown tensor return False; a CUDA graph replayed after its
  execution context's shapes changed raises (TensorRT: re-capture after a shape change).

The "model" the engine runs: every output row is filled with ``mean(first input row) + 1``.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.fake_cuda import Driver, FakeCudaError

VERSIONS = ("8.6.2", "10.3.0", "11.1.0")
MAGIC = b"FAKE-TRT-ENGINE\n"
TIMING_MAGIC = b"FAKE-TRT-TIMING\n"
SUPPORTED_OPS = {"Conv", "Relu", "Add", "Sub", "Mul", "Div", "Gemm", "MatMul", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "ReduceMean", "ReduceL2", "Constant", "Clip", "Shape", "Expand", "Concat",
                 "Flatten", "Reshape", "Tanh", "Sigmoid", "Cast", "QuantizeLinear", "DequantizeLinear",
                 "BatchNormalization", "Identity", "Sqrt", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Slice",
                 # the raw-input prologue (mosaic_edge.export.raw_inputs); onnx-tensorrt docs/operators.md lists
                 # each as supported (FP32/FP16) from TensorRT 8.4 on
                 "Abs", "ReduceMax", "Equal", "Where"}
PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4")


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _enums(version: str) -> dict[str, dict[str, int]]:
    major = _major(version)
    if major < 9:
        network = {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}
        builder = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "STRICT_TYPES": 4, "REFIT": 5,
                   "DISABLE_TIMING_CACHE": 6, "TF32": 7, "SPARSE_WEIGHTS": 8, "FP8": 17}
        dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6}
    elif major < 11:
        network = ({"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1, "STRONGLY_TYPED": 2} if major == 9
                   else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        builder = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
                   "TF32": 6, "SPARSE_WEIGHTS": 7, "FP8": 15, "BF16": 17, "INT4": 22}
        dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7,
                  "INT64": 8, "INT4": 9}
    else:
        network = {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
        builder = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                   "SPARSE_WEIGHTS": 7, "EDITABLE_TIMING_CACHE": 26}
        dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7,
                  "INT64": 8, "INT4": 9, "FP4": 10, "E8M0": 11}
    return {"NetworkDefinitionCreationFlag": network, "BuilderFlag": builder, "DataType": dtypes}


def version_int(version: str) -> int:
    """NV_TENSORRT_VERSION: 8.6.2 -> 8602, 10.3.0 -> 100300."""
    major, minor, patch = (int(x) for x in (version.split(".") + ["0", "0"])[:3])
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def make_trt(version: str = "10.3.0", driver: Driver | None = None, reject: str = "") -> types.ModuleType:
    """The fake module of TensorRT ``version`` on ``driver`` (a fresh fake GPU when None).

    ``reject``: "shape" or "address" makes every execution context refuse ``set_input_shape`` /
    ``set_tensor_address`` (return False), as TensorRT does for a shape outside the profile or an unknown name.
    """
    import onnx

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # type: ignore[attr-defined]
    trt.errors = []  # type: ignore[attr-defined]  # what TensorRT's logger would print at ERROR
    trt.driver = driver or Driver()  # type: ignore[attr-defined]
    drv: Driver = trt.driver  # type: ignore[attr-defined]
    major = _major(version)
    for enum_name, members in _enums(version).items():
        setattr(trt, enum_name, enum.IntEnum(enum_name, members))
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    DT = trt.DataType
    trt.float32, trt.float16, trt.int8, trt.int32, trt.uint8 = DT.FLOAT, DT.HALF, DT.INT8, DT.INT32, DT.UINT8
    np_of = {DT.FLOAT: np.float32, DT.HALF: np.float16, DT.INT8: np.int8, DT.INT32: np.int32, DT.UINT8: np.uint8,
             DT.BOOL: np.bool_}
    if major >= 10:
        np_of[DT.INT64] = np.int64

    def nptype(dtype: Any) -> Any:
        if dtype not in np_of:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return np_of[dtype]

    trt.nptype = nptype
    onnx_dtype = {onnx.TensorProto.FLOAT: DT.FLOAT, onnx.TensorProto.FLOAT16: DT.HALF, onnx.TensorProto.INT8: DT.INT8,
                  onnx.TensorProto.INT32: DT.INT32, onnx.TensorProto.UINT8: DT.UINT8, onnx.TensorProto.BOOL: DT.BOOL}
    if major >= 10:
        onnx_dtype[onnx.TensorProto.INT64] = DT.INT64
    strong_bit = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if major >= 9 else 0
    explicit_bit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 11 else 0
    all_bits = sum(1 << int(m) for m in trt.NetworkDefinitionCreationFlag)

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, min_severity: int = 2):
            self.min_severity = min_severity

    trt.Logger = Logger

    # ---- build side ----------------------------------------------------------------------------------------
    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Layer:
        def __init__(self, outputs: list[Tensor]):
            self._outputs = outputs

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, i: int) -> Tensor:
            return self._outputs[i]

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.layers: list[Layer] = []
            self.has_qdq = False

        @property
        def strongly_typed(self) -> bool:
            return major >= 11 or bool(self.flags & strong_bit)

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class ParserError:
        def __init__(self, node: int, name: str, op: str, desc: str):
            self._n, self._name, self._op, self._desc = node, name, op, desc

        def code(self) -> str:
            return "ErrorCode.UNSUPPORTED_NODE" if self._n >= 0 else "ErrorCode.MODEL_DESERIALIZE_FAILED"

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._n

    if major >= 10:
        ParserError.node_name = lambda self: self._name  # type: ignore[attr-defined]
        ParserError.node_operator = lambda self: self._op  # type: ignore[attr-defined]

    def _tensor(vi: Any) -> Tensor:
        elem = vi.type.tensor_type.elem_type
        if elem not in onnx_dtype:
            raise ValueError(f"tensor {vi.name!r} has type {onnx.TensorProto.DataType.Name(elem)}, which TensorRT "
                             f"{version} does not support")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
        return Tensor(vi.name, dims, onnx_dtype[elem])

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger):
            self.network, self._errors = network, []

        def parse_from_file(self, path: str) -> bool:
            trt.calls.append(("parse_from_file", path))
            self._errors = self._parse(Path(path).read_bytes())
            return not self._errors

        def _parse(self, data: bytes) -> list[ParserError]:
            net = self.network
            if major < 10 and not net.flags & explicit_bit:
                return [ParserError(-1, "", "", "This version of the ONNX parser only supports TensorRT "
                                    "INetworkDefinitions with an explicit batch dimension")]
            try:
                model = onnx.load_from_string(data)
                onnx.checker.check_model(model)
            except Exception as exc:  # noqa: BLE001 - DecodeError, ValidationError, ...
                return [ParserError(-1, "", "", f"Failed to parse ONNX model: {type(exc).__name__}: {exc}")]
            graph = model.graph
            inits = {t.name: t for t in graph.initializer}
            errors = []
            for i, node in enumerate(graph.node):
                if node.op_type not in SUPPORTED_OPS:
                    errors.append(ParserError(i, node.name, node.op_type,
                                              f"No importer registered for op: {node.op_type}"))
                elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    net.has_qdq = True
                    scale = inits.get(node.input[1])
                    if major < 9 and scale is not None and scale.data_type != onnx.TensorProto.FLOAT:
                        errors.append(ParserError(i, node.name, node.op_type,
                                                  "Scale coefficients must all be positive (scale read as float32)"))
            try:
                net.inputs = [_tensor(vi) for vi in graph.input if vi.name not in inits]
                net.outputs = [_tensor(vi) for vi in graph.output]
            except ValueError as exc:
                errors.append(ParserError(-1, "", "", str(exc)))
            net.layers = [Layer([Tensor(o, (), DT.FLOAT) for o in n.output]) for n in graph.node]
            return errors

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, i: int) -> ParserError:
            return self._errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            lo, opt, hi = tuple(lo), tuple(opt), tuple(hi)
            if not len(lo) == len(opt) == len(hi):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            if not all(a <= b for a, b in zip(lo, opt, strict=True)):
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            if not all(a <= b for a, b in zip(opt, hi, strict=True)):
                raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
            self.shapes[name] = (lo, opt, hi)

    class TimingCache:
        def __init__(self, device: str, entries: int):
            self.device, self.entries = device, entries

        def serialize(self) -> bytes:
            return TIMING_MAGIC + json.dumps({"trt": version, "device": self.device, "entries": self.entries}).encode()

    device_id = f"{drv.name} sm{drv.capability[0]}{drv.capability[1]}"
    config_attrs = {"flags", "profiles", "pool", "timing_cache", "calibration_profile", "_calibrator"}

    class Config:
        def __init__(self) -> None:
            self.flags: set = set()
            self.profiles: list[Profile] = []
            self.pool: dict = {}
            self.timing_cache: TimingCache | None = None
            self.calibration_profile: Profile | None = None
            self._calibrator: Any = None

        def __setattr__(self, name: str, value: Any) -> None:
            if name not in config_attrs and not (name == "int8_calibrator" and major < 11):
                raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")
            object.__setattr__(self, "_calibrator" if name == "int8_calibrator" else name, value)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pool[pool] = size

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def set_flag(self, flag: Any) -> None:
            if not isinstance(flag, trt.BuilderFlag):
                raise TypeError(f"set_flag(): incompatible argument {flag!r}")
            self.flags.add(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache | None:
            data = bytes(data)
            if not data:
                return TimingCache(device_id, 0)
            if not data.startswith(TIMING_MAGIC):
                trt.errors.append("createTimingCache: invalid or corrupted timing cache")
                return None
            try:
                info = json.loads(data[len(TIMING_MAGIC):])
            except ValueError:
                trt.errors.append("createTimingCache: truncated timing cache")
                return None
            if info.get("trt") != version:
                trt.errors.append("createTimingCache: timing cache of another TensorRT version")
                return None
            return TimingCache(info["device"], int(info["entries"]))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.device != device_id and not ignore_mismatch:
                trt.errors.append("setTimingCache: the cache was built on another device")
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.timing_cache

    if major < 11:
        Config.int8_calibrator = property(lambda self: self._calibrator)  # type: ignore[attr-defined]

        def set_calibration_profile(self: Config, p: Profile) -> bool:
            self.calibration_profile = p
            return True

        Config.set_calibration_profile = set_calibration_profile  # type: ignore[attr-defined]

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Builder:
        fail = False

        def __init__(self, logger: Logger):
            trt.last_builder = self

        def create_network(self, flags: int = 0) -> Network:
            if flags & ~all_bits:
                raise ValueError(f"create_network: flags {flags:#x} hold bits TensorRT {version} does not define")
            self.network = Network(flags)
            return self.network

        def create_builder_config(self) -> Config:
            self.config = Config()
            return self.config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def _refuse(self, network: Network, config: Config) -> str | None:
            names = {f.name for f in config.flags}
            if network.strongly_typed and names & set(PRECISION_FLAGS):
                return f"precision flags {sorted(names & set(PRECISION_FLAGS))} on a strongly typed network"
            if major < 9 and network.has_qdq and "INT8" not in names:
                return "the network has Q/DQ layers but INT8 is not enabled"
            if "INT8" in names and not network.has_qdq:
                cal = config._calibrator
                if cal is None:
                    return "INT8 without Q/DQ layers needs a calibrator"
                header = bytes(cal.read_calibration_cache() or b"").split(b"\n", 1)[0].decode()
                stale = header != f"TRT-{version_int(version)}-EntropyCalibration2"
                if stale and cal.get_batch([t.name for t in network.inputs]) is None:  # TensorRT calibrates anew
                    return f"calibration cache header {header!r} is not this version's; calibration got no data"
            for t in network.inputs:
                if -1 in t.shape and not any(t.name in p.shapes for p in config.profiles):
                    return f"dynamic input {t.name!r} has no optimization profile"
            return None

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            trt.calls.append(("build_serialized_network", network.flags))
            drv.runtime_ctx()
            why = "Builder.fail" if Builder.fail else self._refuse(network, config)
            if why is not None:
                trt.errors.append(f"build_serialized_network: {why}")
                return None
            if config.timing_cache is not None:
                config.timing_cache.entries += 1
            profile = config.profiles[0].shapes
            spec = {
                "trt": version, "device": device_id,
                "io": [{"name": t.name, "input": True, "dtype": int(t.dtype), "shape": list(t.shape),
                        "profile": [list(s) for s in profile.get(t.name, (t.shape,) * 3)]} for t in network.inputs]
                + [{"name": t.name, "input": False, "dtype": int(t.dtype), "shape": list(t.shape)}
                   for t in network.outputs],
                "flags": sorted(f.name for f in config.flags), "strongly_typed": network.strongly_typed,
            }
            return MAGIC + json.dumps(spec).encode()

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    # ---- runtime side --------------------------------------------------------------------------------------
    def _owned_by_current(obj: Any, what: str) -> None:
        cur = drv.runtime_ctx()  # TensorRT goes through cudart: with no current context, the primary one
        if cur is not obj.ctx:
            raise FakeCudaError(f"{what}: TensorRT object of the {obj.ctx} used while {cur or 'no context'} is current")

    def _deleted(obj: Any, what: str) -> None:
        cur = drv.current()
        if (cur if cur is not None else drv.primary) is not obj.ctx:
            drv.errors.append(f"TensorRT {what} destroyed while {cur or 'no context'} is current (made in {obj.ctx})")

    class ExecutionContext:
        def __init__(self, engine: Engine):
            self.engine, self.ctx = engine, engine.ctx
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addr: dict[str, int] = {}
            self.enqueues, self.generation = 0, 0
            drv.trt_objects.add(self)

        def set_input_shape(self, name: str, shape: Any) -> bool:
            io = self.engine.io.get(name)
            shape = tuple(int(d) for d in shape)
            if reject == "shape" or io is None or not io["input"]:
                return False
            lo, _, hi = io["profile"]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                trt.errors.append(f"set_input_shape: {shape} outside the profile of {name!r}")
                return False
            if self.shapes.get(name) != shape:
                self.shapes[name] = shape
                self.generation += 1
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            io = self.engine.io[name]
            if io["input"]:
                return self.shapes.get(name, tuple(io["shape"]))
            n = next(iter(self.shapes.values()), (-1,))[0]
            return (n, *io["shape"][1:])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            if reject == "address" or name not in self.engine.io:
                return False
            self.addr[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            _owned_by_current(self, "execute_async_v3")
            if drv.get(stream_handle, "stream", "execute_async_v3").ctx is not self.ctx:
                raise FakeCudaError("execute_async_v3: stream of another context")
            ins = [n for n, io in self.engine.io.items() if io["input"]]
            if set(ins) - set(self.shapes) or set(self.engine.io) - set(self.addr):
                trt.errors.append("execute_async_v3: input shapes or tensor addresses not set")
                return False
            mem = {n: drv.memory(self.addr[n], f"execute_async_v3 ({n})") for n in self.engine.io}
            self.enqueues += 1
            drv.timeline.append("execute")
            captured = self.generation
            first = ins[0]
            n = self.shapes[first][0]

            def run() -> None:
                if self.generation != captured:
                    raise FakeCudaError("a CUDA graph replayed on an execution context whose input shapes changed "
                                        "since capture (TensorRT: re-capture after a shape change)")
                x = mem[first].view(np_of[DT(self.engine.io[first]["dtype"])])
                rows = x[: n * int(np.prod(self.shapes[first][1:]))].reshape(n, -1).astype(np.float64)
                value = rows.mean(axis=1) + 1.0
                for name, io in self.engine.io.items():
                    if not io["input"]:
                        width = int(np.prod(io["shape"][1:]))
                        out = mem[name].view(np_of[DT(io["dtype"])])[: n * width].reshape(n, width)
                        out[:] = value[:, None]

            drv.enqueue(stream_handle, run, "execute_async_v3")
            return True

        def __del__(self) -> None:
            _deleted(self, "IExecutionContext")

    class Engine:
        def __init__(self, spec: dict[str, Any], ctx: Any):
            self.spec, self.ctx = spec, ctx
            self.io = {io["name"]: io for io in spec["io"]}
            self.names = list(self.io)
            drv.trt_objects.add(self)

        num_io_tensors = property(lambda self: len(self.names))

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if self.io[name]["input"] else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return DT(self.io[name]["dtype"])

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self.io[name]["shape"])

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.io[name]["profile"]]

        def create_execution_context(self) -> ExecutionContext:
            _owned_by_current(self, "create_execution_context")
            return ExecutionContext(self)

        def __del__(self) -> None:
            _deleted(self, "ICudaEngine")

    class Runtime:
        def __init__(self, logger: Logger):
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            ctx = drv.runtime_ctx()
            data = bytes(data)
            if not data.startswith(MAGIC):
                trt.errors.append("deserializeCudaEngine: not an engine")
                return None
            try:
                spec = json.loads(data[len(MAGIC):])
            except ValueError:
                trt.errors.append("deserializeCudaEngine: truncated engine")
                return None
            if spec["trt"] != version or spec["device"] != device_id:
                trt.errors.append("deserializeCudaEngine: engine of another TensorRT version or device")
                return None
            return Engine(spec, ctx)

    trt.Runtime = Runtime
    return trt


def write_onnx(path: Path, inputs: dict[str, tuple[Any, int]] | None = None,
               outputs: dict[str, tuple[Any, int]] | None = None, patch: int = 8, op: str = "Identity",
               qdq: str | None = None) -> Path:
    """A small valid ONNX with the given I/O (name -> (dims after batch, ONNX elem type)) for the fake parser.

    The fake engine computes its own numbers, so only names, shapes and types matter. ``op`` other than Identity
    (a custom-domain op) exercises the parser's importer check. ``qdq``: None, "float32" (opset 17) or "float16"
    (opset 19) puts one Q/DQ pair with a scale of that type on the first input, as the INT8 artefacts have.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32 = TensorProto.FLOAT
    inputs = inputs or {"sar": ((2, patch, patch), f32), "optical": ((12, patch, patch), f32)}
    outputs = outputs or {"logits": ((19,), f32), "logits_sar": ((19,), f32), "logits_optical": ((19,), f32),
                          "emb_sar": ((4,), f32), "emb_optical": ((4,), f32)}
    first = next(iter(inputs))
    nodes, inits = [], []
    src = first
    if qdq is not None:
        dtype = np.float16 if qdq == "float16" else np.float32
        inits += [numpy_helper.from_array(np.array(0.05, dtype), "scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "zero")]
        if qdq == "float16":
            nodes.append(helper.make_node("Cast", [first], ["x16"], to=TensorProto.FLOAT16, name="to_fp16"))
            src = "x16"
        nodes += [helper.make_node("QuantizeLinear", [src, "scale", "zero"], ["xq"], name="q"),
                  helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xdq"], name="dq")]
        src = "xdq"
    for i, (name, (dims, elem)) in enumerate(outputs.items()):
        inits.append(numpy_helper.from_array(np.array([-1, int(np.prod(dims))], np.int64), f"shape{i}"))
        nodes.append(helper.make_node("Slice", [src, f"start{i}", f"end{i}", f"axes{i}"], [f"part{i}"],
                                      name=f"slice{i}"))
        inits += [numpy_helper.from_array(np.array([0], np.int64), f"start{i}"),
                  numpy_helper.from_array(np.array([int(np.prod(dims))], np.int64), f"end{i}"),
                  numpy_helper.from_array(np.array([1], np.int64), f"axes{i}")]
        nodes.append(helper.make_node("Reshape", [f"part{i}", f"shape{i}"], [f"flat{i}"], name=f"reshape{i}"))
        nodes.append(helper.make_node("Cast", [f"flat{i}"], [f"cast{i}"], to=elem, name=f"cast{i}"))
        domain = "" if op == "Identity" else "ai.example"  # a custom op: valid ONNX, no TensorRT importer
        nodes.append(helper.make_node(op, [f"cast{i}"], [name], name=f"{op.lower()}{i}", domain=domain))
    graph = helper.make_graph(
        nodes, "fake",
        [helper.make_tensor_value_info(n, e, ["N", *d]) for n, (d, e) in inputs.items()],
        [helper.make_tensor_value_info(n, e, ["N", *d]) for n, (d, e) in outputs.items()], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19 if qdq == "float16" else 17),
                                                    helper.make_opsetid("ai.example", 1)])
    model.ir_version = 9 if qdq == "float16" else 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def serialize_engine(trt: Any, onnx_path: Path, batch: tuple[int, int, int] = (1, 8, 16), flags: int | None = None,
                     precision_flags: tuple[str, ...] = ()) -> bytes:
    """Engine bytes straight from the fake's own parser and builder (no mosaic-edge code), for runner tests."""
    major = _major(trt.__version__)
    if flags is None:
        flags = (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)) if major < 10 else 0
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt.Logger())
    assert parser.parse_from_file(str(onnx_path)), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        profile.set_shape(t.name, *[(b, *t.shape[1:]) for b in batch])
    config.add_optimization_profile(profile)
    for f in precision_flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
    data = builder.build_serialized_network(network, config)
    assert data is not None, trt.errors
    return bytes(data)
