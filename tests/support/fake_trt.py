"""A stand-in ``tensorrt`` module and CUDA adapter that record calls, for tests on machines without TensorRT.

Only the API surface our builder and runner use is implemented, with the names of TensorRT's Python API, so a
misspelt or removed call fails here. ``make_trt("11.0.0")`` drops the weak-typing APIs TensorRT 11 removed.
Imported as ``tests.support.fake_trt`` by the builder and runner tests.
"""

from __future__ import annotations

import enum
import time
import types
from pathlib import Path
from typing import Any

import numpy as np


class _Enum(enum.IntEnum):
    pass


def make_trt(
    version: str = "10.3.0",
    inputs: dict[str, tuple[int, ...]] | None = None,
    outputs: dict[str, int] | None = None,
) -> types.ModuleType:
    """Fake module; parse of a file starting with b"bad" fails with two node errors."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # type: ignore[attr-defined]
    major = int(version.split(".")[0])
    inputs = inputs or {"sar": (-1, 2, 8, 8), "optical": (-1, 12, 8, 8)}
    outputs = outputs or {
        "logits": 19,
        "logits_sar": 19,
        "logits_optical": 19,
        "emb_sar": 4,
        "emb_optical": 4,
    }

    class Logger:
        WARNING, INFO = 2, 3

        def __init__(self, level: int = 2):
            self.level = level

    trt.Logger = Logger
    trt.NetworkDefinitionCreationFlag = _Enum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    )
    trt.MemoryPoolType = _Enum("MemoryPoolType", {"WORKSPACE": 0})
    flags = {"FP16": 0, "INT8": 1, "REFIT": 2} if major < 11 else {"REFIT": 2}
    trt.BuilderFlag = _Enum("BuilderFlag", flags)
    trt.TensorIOMode = _Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self._inputs: list[Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, i: int) -> Tensor:
            return self._inputs[i]

    class ParserError:
        def __init__(self, node: int, name: str, op: str, desc: str):
            self._n, self._name, self._op, self._desc = node, name, op, desc

        def code(self) -> str:
            return "ErrorCode.UNSUPPORTED_NODE"

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._n

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger):
            self.network, self._errors = network, []

        def parse_from_file(self, path: str) -> bool:
            trt.calls.append(("parse_from_file", path))
            if Path(path).read_bytes().startswith(b"bad"):
                self._errors = [
                    ParserError(3, "/enc/Foo", "FooOp", "no importer for FooOp"),
                    ParserError(7, "/head/Bar", "BarOp", "unsupported attribute"),
                ]
                return False
            self.network._inputs = [Tensor(k, v) for k, v in inputs.items()]
            return True

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, i: int) -> ParserError:
            return self._errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+tuned"

    class Config:
        def __init__(self) -> None:
            self.flags: set = set()
            self.profiles: list[Profile] = []
            self.pool: dict = {}
            self.timing_cache: TimingCache | None = None
            self.calibration_profile = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pool[pool] = size

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.timing_cache

        def set_calibration_profile(self, p: Profile) -> bool:
            if major >= 11:
                raise AttributeError("removed in TensorRT 11")
            self.calibration_profile = p
            return True

    class Builder:
        fail = False

        def __init__(self, logger: Logger):
            trt.last_builder = self

        def create_network(self, flags: int = 0) -> Network:
            self.network = Network(flags)
            return self.network

        def create_builder_config(self) -> Config:
            self.config = Config()
            return self.config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            trt.calls.append(("build_serialized_network", network.flags))
            return (
                None
                if Builder.fail
                else b"ENGINE:" + repr(sorted(config.profiles[0].shapes.items())).encode()
            )

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    if major < 11:

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    # ---- runtime side: an "engine" whose context adds 1 to the mean of each input row
    # -------------------------
    class Context:
        def __init__(self, engine: Engine):
            self.engine, self.shapes, self.addr, self.enqueues = engine, {}, {}, 0

        def set_input_shape(self, name: str, shape: Any) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in inputs:
                return self.shapes[name]
            n = next(iter(self.shapes.values()))[0]
            return (n, outputs[name])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            self.enqueues += 1
            mem = trt.device_memory  # shared with the fake CUDA adapter
            n = self.shapes["sar"][0]
            sar = mem[self.addr["sar"]].view(np.float32)[: n * int(np.prod(inputs["sar"][1:]))].reshape(n, -1)
            for name, width in outputs.items():
                out = mem[self.addr[name]].view(np.float32)[: n * width].reshape(n, width)
                out[:] = sar.mean(axis=1, keepdims=True) + 1.0
            return True

    class Engine:
        def __init__(self, data: bytes):
            self.names = list(inputs) + list(outputs)

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name in inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "float32"

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            rest = inputs[name][1:]
            return [(1, *rest), (8, *rest), (16, *rest)]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Logger):
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine(data) if data.startswith(b"ENGINE:") else None

    trt.Runtime = Runtime
    trt.nptype = lambda dtype: np.float32
    trt.device_memory = {}
    return trt


class FakeCuda:
    """CUDA adapter over host memory: "device pointers" index ``trt.device_memory``."""

    backend = "fake"
    supports_graphs = True

    def __init__(self, trt: Any):
        self.mem = trt.device_memory
        self.launches = 0
        self.captures = 0
        self.freed = 0
        self.records = 0
        self.replay: Any = None

    def malloc(self, nbytes: int) -> int:
        ptr = 0x1000 * (len(self.mem) + 1)
        self.mem[ptr] = np.zeros(nbytes, dtype=np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        self.freed += 1

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.zeros(shape, dtype)

    def free_pinned(self, arr: np.ndarray) -> None:
        self.freed += 1

    def stream(self) -> int:
        return 7

    def handle(self, stream: int) -> int:
        return stream

    def ptr(self, dev: int) -> int:
        return dev

    def h2d_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.mem[dst][: src.nbytes] = np.ascontiguousarray(src).view(np.uint8).reshape(-1)

    def d2h_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        dst.reshape(-1).view(np.uint8)[:] = self.mem[src][: dst.nbytes]

    def synchronize(self, stream: int) -> None:
        pass

    def event(self) -> list[float]:
        return [0.0]  # a mutable cell: record() stores when the "stream" reached it

    def record(self, event: list[float], stream: int) -> None:
        self.records += 1
        event[0] = time.perf_counter()

    def elapsed_ms(self, start: list[float], end: list[float]) -> float:
        return (end[0] - start[0]) * 1e3

    def begin_capture(self, stream: int) -> None:
        self.captures += 1

    def end_capture(self, stream: int) -> str:
        return f"graph{self.captures}"

    def launch(self, graph: str, stream: int) -> None:
        self.launches += 1
        if self.replay is not None:  # a real graph replays the captured kernels; the fake re-runs them
            self.replay()

    def device_name(self) -> str:
        return "Fake Orin"

    def close(self) -> None:
        pass
