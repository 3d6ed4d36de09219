"""TensorRT engine builder (TensorRT 10.x and 11.x Python API), kept thin: parse, profile, configure, build.

Every call follows TensorRT's Python API reference and the 10.x -> 11.x migration guide:

* ``builder.create_network(1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))``: the ONNX's own types
  decide precision (Q/DQ int8, fp16 weights). TensorRT 11 types every network strongly, ignores the flag.
* ``trt.OnnxParser(network, logger).parse_from_file(path)``; on failure every ``parser.get_error(i)`` is
  reported with its node index / name / operator and description.
* One optimization profile: ``profile.set_shape(name, min, opt, max)`` per input, same batch range for all.
* ``config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)`` (a Jetson shares DRAM with the CPU).
* Timing cache: ``config.create_timing_cache(bytes)`` +
  ``config.set_timing_cache(cache, ignore_mismatch=False)``, written back from
  ``config.get_timing_cache().serialize()``.
* ``builder.build_serialized_network(network, config)`` (None on failure).
* Weak typing only where TensorRT still has it (< 11, packaging.version gate): ``BuilderFlag.FP16`` for an
  fp16 build of an fp32 ONNX, and the legacy implicit-INT8 path ``BuilderFlag.INT8`` + an
  ``IInt8EntropyCalibrator2`` that only replays ``calib.cache``. TensorRT 11 removed both (use
  model.fp16.onnx / model.int8.onnx).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from mosaic_edge.contract import sha256_file
from mosaic_edge.errors import UserError
from mosaic_edge.optional import require

PRECISIONS = ("fp32", "fp16", "int8")
# TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8) and IInt8Calibrator.
WEAK_TYPING_REMOVED_IN = Version("11.0")
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


class EngineBuildError(UserError):
    """TensorRT could not parse or build the model; the message says where."""


@dataclass(frozen=True)
class BatchRange:
    """min/opt/max batch of the single optimization profile."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise UserError(f"need 1 <= min <= opt <= max batch, got {self.min}/{self.opt}/{self.max}")


def profile_shapes(input_shapes: Mapping[str, Sequence[int]], batch: BatchRange) -> Profile:
    """min/opt/max shape per input: the batch axis (dim 0, -1 when dynamic) takes the range.

    Other axes stay fixed.

    Raises:
        UserError: a non-batch axis is dynamic, or a fixed batch axis disagrees with the range.
    """
    out: Profile = {}
    for name, shape in input_shapes.items():
        dims = tuple(int(d) for d in shape)
        if not dims:
            raise UserError(f"input {name!r} is a scalar; expected [N, C, H, W]")
        if any(d < 0 for d in dims[1:]):
            raise UserError(
                f"input {name!r} has dynamic non-batch dims {dims}; export with a fixed patch size"
            )
        if dims[0] >= 0 and not batch.min == batch.max == dims[0]:
            raise UserError(
                f"input {name!r} has a fixed batch of {dims[0]}; re-export with a dynamic batch axis"
            )
        rest = dims[1:]
        out[name] = ((batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
    return out


def trt_version_of(trt: Any) -> Version:
    return Version(str(trt.__version__).split("+")[0])


def uses_weak_typing(precision: str, onnx_precision: str, calib_cache: Path | None) -> bool:
    """True for the two builds that need builder precision flags instead of a strongly typed network."""
    return calib_cache is not None or (precision == "fp16" and onnx_precision == "fp32")


def check_build_supported(
    trt_version: Version, precision: str, onnx_precision: str, calib_cache: Path | None
) -> None:
    """Refuse builds this TensorRT cannot do, saying what to use instead."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if calib_cache is not None and precision != "int8":
        raise UserError("--calib-cache only applies to an int8 build")
    if precision == "int8" and onnx_precision != "int8" and calib_cache is None:
        raise UserError(
            "an int8 engine needs the Q/DQ model (model.int8.onnx) or, on TensorRT < 11, --calib-cache"
        )
    if uses_weak_typing(precision, onnx_precision, calib_cache) and trt_version >= WEAK_TYPING_REMOVED_IN:
        what = "the legacy calibration cache" if calib_cache is not None else "an fp16 build of an fp32 ONNX"
        use = "model.int8.onnx (explicit Q/DQ)" if calib_cache is not None else "model.fp16.onnx"
        raise UserError(
            f"TensorRT {trt_version} removed weak typing, so {what} is not possible; build from {use}"
        )


@dataclass(frozen=True)
class EngineManifest:
    """What an engine was built from and for; the engine cache key is derived from it.

    Attributes:
        model_sha256: SHA-256 of the ONNX the engine was built from.
        trt_version: TensorRT version string.
        gpu_name: CUDA device name (e.g. "Orin") or "unknown".
        precision: "fp32", "fp16" or "int8".
        profile: Input name -> [min, opt, max] shapes.
        strongly_typed: Whether the network was strongly typed.
        engine_sha256: SHA-256 of the serialized engine.
        created: UTC timestamp.
        build_seconds: Wall time of the build.
    """

    model_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    profile: dict[str, list[list[int]]]
    strongly_typed: bool = True
    engine_sha256: str = ""
    created: str = ""
    build_seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineManifest:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def key_digest(fields: Mapping[str, Any]) -> str:
    """Short stable digest of key fields (file names of cached engines)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def parser_errors(parser: Any) -> list[str]:
    """One line per ONNX parser error: node index, name and operator (when reported), description."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node()
        name = err.node_name() if hasattr(err, "node_name") else ""  # node_name/node_operator: TensorRT >= 10
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        where = (
            f"node {node}" + (f" '{name}'" if name else "") + (f" ({op})" if op else "")
            if node >= 0
            else "graph"
        )
        lines.append(f"{where}: {err.desc()} [{err.code()}]")
    return lines


def _legacy_calibrator(trt: Any, cache_bytes: bytes) -> Any:
    """An IInt8EntropyCalibrator2 that never calibrates: it only hands TensorRT the existing cache."""

    class _CacheOnly(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no data: TensorRT must take every scale from the cache

        def read_calibration_cache(self) -> bytes:
            return cache_bytes

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return _CacheOnly()


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    calib_cache: str | Path | None = None,
    onnx_precision: str | None = None,
    gpu_name: str = "unknown",
    verbose: bool = False,
) -> EngineManifest:
    """Build and serialize a TensorRT engine; write ``<out>.json`` (the manifest) beside it.

    Args:
        onnx_path: model.onnx / model.fp16.onnx / model.int8.onnx.
        out_path: Engine file to write.
        precision: Engine precision.
        min_batch / opt_batch / max_batch: The optimization profile's batch range (all inputs).
        workspace_mb: Builder workspace limit.
        timing_cache: File to read (if present) and update with the timing cache.
        calib_cache: TensorRT < 11 only: legacy implicit INT8 from a ``calib.cache`` (fp32 ONNX).
        onnx_precision: Precision of the ONNX itself; defaults to ``precision`` (fp32 when ``calib_cache``).
        gpu_name: Recorded in the manifest (the engine cache passes the device's name).
        verbose: TensorRT logger at INFO instead of WARNING.
    """
    trt = require("tensorrt", extra="trt")
    version = trt_version_of(trt)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    cache_path = Path(calib_cache) if calib_cache is not None else None
    onnx_precision = onnx_precision or ("fp32" if cache_path is not None else precision)
    check_build_supported(version, precision, onnx_precision, cache_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX not found: {onnx_path}")
    batch = BatchRange(min_batch, opt_batch, max_batch)
    t0 = time.perf_counter()

    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak = uses_weak_typing(precision, onnx_precision, cache_path)
    flags = 0 if weak else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(
            f"TensorRT {version} cannot parse {onnx_path}:\n  " + "\n  ".join(parser_errors(parser))
        )

    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    shapes = profile_shapes(inputs, batch)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if weak and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 legacy: let non-int8 layers fall back to fp16, not fp32
    if cache_path is not None:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _legacy_calibrator(trt, cache_path.read_bytes())
        config.set_calibration_profile(profile)

    tc_path = Path(timing_cache) if timing_cache is not None else None
    tc = config.create_timing_cache(
        tc_path.read_bytes() if tc_path is not None and tc_path.is_file() else b""
    )
    config.set_timing_cache(tc, False)  # ignore_mismatch=False: a foreign cache is an error

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {version} failed to build {onnx_path} ({precision}); rerun with --verbose"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out_path)
    if tc_path is not None:
        tc_path.parent.mkdir(parents=True, exist_ok=True)
        tc_path.write_bytes(bytes(config.get_timing_cache().serialize()))

    manifest = EngineManifest(
        model_sha256=sha256_file(onnx_path),
        trt_version=str(version),
        gpu_name=gpu_name,
        precision=precision,
        profile={k: [list(s) for s in v] for k, v in shapes.items()},
        strongly_typed=not weak,
        engine_sha256=sha256_file(out_path),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        build_seconds=round(time.perf_counter() - t0, 3),
    )
    manifest_path(out_path).write_text(manifest.to_json() + "\n")
    return manifest


def manifest_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def guess_precision(onnx_path: str | Path, calib_cache: str | Path | None = None) -> str:
    """Engine precision implied by an export artefact's name (``model.int8.onnx`` -> int8, ...)."""
    if calib_cache is not None:
        return "int8"
    name = Path(onnx_path).name
    if ".int8" in name:
        if "int8-cpu" in name:
            raise UserError(f"{name} is the CPU INT8 variant (asymmetric uint8); build from model.int8.onnx")
        return "int8"
    return "fp16" if ".fp16" in name else "fp32"
