"""TensorRT engine builder for TensorRT 8.6 (JetPack 6.0), 10.x (JetPack 6.1/6.2: 10.3) and 11.x.

Every call follows TensorRT's Python bindings (``python/src/infer/pyCore.cpp`` of each release):

* ``builder.create_network(flags)``. The bits come from ``NetworkDefinitionCreationFlag``, whose values differ
  per release (STRONGLY_TYPED is 2 in 9.x, 1 in 10.x, 0 in 11.x): TensorRT < 10 needs ``EXPLICIT_BATCH`` (the
  ONNX parser refuses implicit-batch networks; 10.x deprecates and ignores it, 11.x removed the name);
  ``STRONGLY_TYPED`` (9.x and 10.x) when the ONNX's own types decide precision; TensorRT 11 types every network
  strongly (the flag is deprecated there, so none is passed).
* ``trt.OnnxParser(network, logger).parse_from_file(path)``; on failure every ``parser.get_error(i)`` is reported
  with its node index / name / operator (name and operator only exist from 10.0) and description.
* One optimization profile: ``profile.set_shape(name, min, opt, max)`` per input, the same batch range for all.
* ``config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)`` (a Jetson shares DRAM with the CPU).
* The timing cache and the legacy calibration cache: :mod:`mosaic_edge.export.trt_caches`.
* ``builder.build_serialized_network(network, config)`` (None on failure).

Precision (:func:`plan_build`): a strongly typed build never sets precision flags (TensorRT rejects them there).
Weak typing -- ``BuilderFlag.FP16`` / ``INT8`` -- is used where it is the only way: every build on TensorRT 8.6
(no STRONGLY_TYPED before 9; the explicit-quantization Q/DQ model builds with INT8 + FP16 and no calibrator), an
fp16 engine from an fp32 ONNX, and the legacy implicit-INT8 path (fp32 ONNX + ``calib.cache`` replayed by an
``IInt8EntropyCalibrator2``). TensorRT 11 removed both weak typing and calibrators.

Which artefact and which precision: :func:`resolve_artefact` takes them from the export manifest's entry, never
from a file name.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from mosaic_edge.contract import Contract, sha256_file
from mosaic_edge.errors import UserError
from mosaic_edge.export import trt_caches
from mosaic_edge.manifest import PRECISIONS, Manifest
from mosaic_edge.optional import require

log = logging.getLogger(__name__)

# Bump when the builder's choices change (flags, profile, Q/DQ handling): cached engines of older builders rebuild.
BUILDER_VERSION = "2"
OLDEST_TRT = Version("8.6")  # JetPack 6.0
STRONG_TYPING_FROM = Version("9.0")  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
IMPLICIT_BATCH_GONE_IN = Version("10.0")  # before: the ONNX parser needs EXPLICIT_BATCH
WEAK_TYPING_REMOVED_IN = Version("11.0")  # BuilderFlag.FP16/INT8 and IInt8Calibrator removed
# The highest ONNX opset TensorRT 8.6's parser supports (onnx-tensorrt 8.6 README). Its Q/DQ importer reads scales
# as float32, so it cannot run the opset-19 artefact with fp16 scales.
TRT8_MAX_OPSET = 17
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
    """min/opt/max shape per input: the batch axis (dim 0, -1 when dynamic) takes the range; others stay fixed.

    Raises:
        UserError: a non-batch axis is dynamic, or a fixed batch axis disagrees with the range.
    """
    out: Profile = {}
    for name, shape in input_shapes.items():
        dims = tuple(int(d) for d in shape)
        if not dims:
            raise UserError(f"input {name!r} is a scalar; expected [N, C, H, W]")
        if any(d < 0 for d in dims[1:]):
            raise UserError(f"input {name!r} has dynamic non-batch dims {dims}; export with a fixed patch size")
        if dims[0] >= 0 and not batch.min == batch.max == dims[0]:
            raise UserError(f"input {name!r} has a fixed batch of {dims[0]}; re-export with a dynamic batch axis")
        rest = dims[1:]
        out[name] = ((batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
    return out


def trt_version_of(trt: Any) -> Version:
    return Version(str(trt.__version__).split("+")[0])


@dataclass(frozen=True)
class BuildPlan:
    """How TensorRT builds one engine (see the module docstring).

    Attributes:
        explicit_batch: Set ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (TensorRT < 10).
        strong_flag: Set ``STRONGLY_TYPED`` (9.x, 10.x).
        strongly_typed: The network is strongly typed (the flag, or TensorRT 11 where every network is).
        flags: ``BuilderFlag`` names to set (weak typing only).
        calibrator: Replay the legacy calibration cache through an ``IInt8EntropyCalibrator2``.
    """

    explicit_batch: bool
    strong_flag: bool
    strongly_typed: bool
    flags: tuple[str, ...]
    calibrator: bool


def check_trt_version(trt_version: Version) -> None:
    """Refuse a TensorRT older than 8.6 in one line naming the version found."""
    if trt_version < OLDEST_TRT:
        raise UserError(f"TensorRT {trt_version} is too old: mosaic-edge needs TensorRT >= {OLDEST_TRT} "
                        "(JetPack 6.0 or newer)")


def plan_build(trt_version: Version, precision: str, onnx_precision: str, calib_cache: bool) -> BuildPlan:
    """The flags of a ``precision`` engine from an ``onnx_precision`` ONNX on this TensorRT, or a clear refusal."""
    check_trt_version(trt_version)
    for what, p in (("precision", precision), ("ONNX precision", onnx_precision)):
        if p not in PRECISIONS:
            raise UserError(f"{what} must be one of {PRECISIONS}, got {p!r}")
    if calib_cache and (precision != "int8" or onnx_precision != "fp32"):
        raise UserError("--calib-cache builds an int8 engine from the fp32 model.onnx (legacy implicit INT8)")
    if calib_cache and trt_version >= WEAK_TYPING_REMOVED_IN:
        raise UserError(f"TensorRT {trt_version} removed implicit INT8, so the legacy calibration cache is not "
                        "possible; build from model.int8.onnx (explicit Q/DQ)")
    if precision == "int8" and onnx_precision != "int8" and not calib_cache:
        raise UserError("an int8 engine needs the Q/DQ model (model.int8.onnx) or, on TensorRT < 11, the fp32 "
                        "model.onnx with --calib-cache calib.cache")
    if onnx_precision == "int8" and precision != "int8":
        raise UserError(f"a Q/DQ (int8) ONNX builds an int8 engine, not {precision}")
    if precision == "fp32" and onnx_precision != "fp32":
        raise UserError(f"an fp32 engine needs the fp32 ONNX, not the {onnx_precision} one")
    explicit_batch = trt_version < IMPLICIT_BATCH_GONE_IN
    if calib_cache:
        return BuildPlan(explicit_batch, False, False, ("INT8", "FP16"), True)
    if trt_version < STRONG_TYPING_FROM:  # 8.6: precision flags are the only way
        flags = {"int8": ("INT8", "FP16"), "fp16": ("FP16",), "fp32": ()}[precision]
        return BuildPlan(explicit_batch, False, False, flags, False)
    if precision == onnx_precision:
        return BuildPlan(explicit_batch, trt_version < WEAK_TYPING_REMOVED_IN, True, (), False)
    # fp16 engine from the fp32 ONNX
    if trt_version >= WEAK_TYPING_REMOVED_IN:
        raise UserError(f"TensorRT {trt_version} removed weak typing, so an fp16 build of an fp32 ONNX is not "
                        "possible; build from model.fp16.onnx")
    return BuildPlan(explicit_batch, False, False, ("FP16",), False)


def network_flags(trt: Any, plan: BuildPlan) -> int:
    """The ``create_network`` bit mask of ``plan``, read from this TensorRT's enum."""
    flags = 0
    if plan.explicit_batch:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strong_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


@dataclass(frozen=True)
class EngineManifest:
    """What an engine was built from and for (written as ``<engine>.json``).

    Attributes:
        model_sha256: SHA-256 of the ONNX the engine was built from.
        trt_version: TensorRT version string.
        gpu_name / compute_capability / sm_count / driver_version: The device (CUDA driver version as an integer,
            12020 = 12.2); "unknown" / "" / 0 / 0 when no CUDA bindings could tell.
        precision: The engine's precision, "fp32", "fp16" or "int8".
        onnx_precision: Precision of the ONNX artefact (from its manifest entry).
        profile: Input name -> [min, opt, max] shapes.
        strongly_typed: Whether the network was strongly typed (the ONNX types decided precision).
        workspace_mb / builder_version: Builder settings the engine depends on.
        engine_sha256 / created / build_seconds: The result.
    """

    model_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    profile: dict[str, list[list[int]]]
    onnx_precision: str = ""
    compute_capability: str = ""
    sm_count: int = 0
    driver_version: int = 0
    workspace_mb: int = 0
    builder_version: str = BUILDER_VERSION
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


def parser_errors(parser: Any) -> list[str]:
    """One line per ONNX parser error: node index, name and operator (when reported), description."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node()
        name = err.node_name() if hasattr(err, "node_name") else ""  # node_name/node_operator: TensorRT >= 10
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        where = f"node {node}" + (f" '{name}'" if name else "") + (f" ({op})" if op else "") if node >= 0 else "graph"
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
    precision: str,
    onnx_precision: str | None = None,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_mb: int = 1024,
    timing_cache: str | Path | None = None,
    calib_cache: str | Path | None = None,
    device: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> EngineManifest:
    """Build and serialize a TensorRT engine; write ``<out>.json`` (the :class:`EngineManifest`) beside it.

    Run it with the device's CUDA context current (the runtime API otherwise makes the primary context current).

    Args:
        onnx_path: The ONNX artefact (see :func:`resolve_artefact`).
        out_path: Engine file to write.
        precision: Engine precision.
        onnx_precision: Precision of the ONNX itself (its manifest entry); defaults to ``precision``, or fp32 with
            ``calib_cache``.
        min_batch / opt_batch / max_batch: The optimization profile's batch range (all inputs).
        workspace_mb: Builder workspace limit.
        timing_cache: File to read (if present and usable) and update with the timing cache.
        calib_cache: TensorRT < 11 only: legacy implicit INT8 from a ``calib.cache`` (fp32 ONNX).
        device: ``name``, ``compute_capability``, ``sm_count``, ``driver_version`` of the GPU (recorded).
        verbose: TensorRT logger at INFO instead of WARNING.
    """
    trt = require("tensorrt", extra="trt")
    version = trt_version_of(trt)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    cache_path = Path(calib_cache) if calib_cache is not None else None
    onnx_precision = onnx_precision or ("fp32" if cache_path is not None else precision)
    plan = plan_build(version, precision, onnx_precision, cache_path is not None)
    if not onnx_path.is_file():
        raise UserError(f"ONNX not found: {onnx_path}")
    batch = BatchRange(min_batch, opt_batch, max_batch)
    dev = dict(device or {})
    t0 = time.perf_counter()

    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"TensorRT {version} cannot parse {onnx_path}:\n  " + "\n  ".join(parser_errors(parser)))

    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    shapes = profile_shapes(inputs, batch)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if cache_path is not None:
        cache_bytes = trt_caches.calibration_cache_for(cache_path, version, trt_caches.network_tensor_names(network))
        config.int8_calibrator = _legacy_calibrator(trt, cache_bytes)
        config.set_calibration_profile(profile)
    tc_path = Path(timing_cache) if timing_cache is not None else None
    if tc_path is not None:
        trt_caches.set_timing_cache(config, tc_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {version} failed to build {onnx_path} ({precision}); rerun with --verbose")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out_path)
    if tc_path is not None:
        trt_caches.save_timing_cache(config, tc_path)

    manifest = EngineManifest(
        model_sha256=sha256_file(onnx_path),
        trt_version=str(version),
        gpu_name=str(dev.get("name", "unknown")),
        precision=precision,
        onnx_precision=onnx_precision,
        profile={k: [list(s) for s in v] for k, v in shapes.items()},
        compute_capability=str(dev.get("compute_capability", "")),
        sm_count=int(dev.get("sm_count", 0)),
        driver_version=int(dev.get("driver_version", 0)),
        workspace_mb=int(workspace_mb),
        strongly_typed=plan.strongly_typed,
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


# ---- which artefact, at which precision ----------------------------------------------------------------------
@dataclass(frozen=True)
class TrtArtefact:
    """The ONNX a TensorRT engine is built from, as the export manifest describes it.

    Attributes:
        path: The ONNX file.
        precision: Precision of the engine (what every result record says).
        onnx_precision: Precision of the ONNX (its manifest entry).
        sha256: The manifest's (verified) SHA-256 of ``path``; "" without a manifest.
        contract: The manifest's contract, None without a manifest.
        calib_cache: The legacy calibration cache to build with, or None.
        opset: ONNX opset of the artefact per its manifest entry (None without one).
    """

    path: Path
    precision: str
    onnx_precision: str
    sha256: str = ""
    contract: Contract | None = None
    calib_cache: Path | None = None
    opset: int | None = None


def _best(manifest: Manifest) -> str:
    for precision in ("int8", "fp16", "fp32"):
        if any(a.precision == precision and a.target in ("tensorrt", "any") for a in manifest.artefacts.values()):
            return precision
    raise UserError(f"{manifest.root}: the manifest lists no artefact TensorRT can build")


def resolve_artefact(model: str | Path, precision: str | None = None, calib_cache: str | Path | None = None,
                     trt_version: Version | None = None) -> TrtArtefact:
    """What to build: from an export directory, an ONNX listed in one, or (with ``precision``) a bare ONNX.

    The artefact's precision is its manifest entry's, never a file name's. With an export directory and no
    ``precision`` the best one listed is taken (int8, then fp16, then fp32). On TensorRT 8.6, which cannot read
    the opset-19 Q/DQ artefact, an int8 engine is built the legacy way from ``model.onnx`` + the manifest's
    ``calib.cache``.

    Raises:
        UserError: nothing fits, a bare ONNX without ``precision``, or the CPU INT8 artefact.
    """
    model = Path(model)
    cache = Path(calib_cache) if calib_cache is not None else None
    if model.is_file():
        listed = model.parent / "manifest.json"
        manifest = Manifest.load(model.parent) if listed.is_file() else None
        art = manifest.artefacts.get(model.name) if manifest is not None else None
        if art is None:
            if precision is None:
                raise UserError(f"{model} is not listed in an export manifest: give --precision (fp32|fp16|int8)")
            onnx_precision = "fp32" if cache is not None else precision
            return TrtArtefact(model, precision, onnx_precision, calib_cache=cache)
        if art.target == "cpu":
            raise UserError(f"{model.name} is the CPU INT8 artefact (target 'cpu'); build from the TensorRT one")
        assert manifest is not None
        manifest.verify(model)
        return TrtArtefact(model, precision or ("int8" if cache is not None else art.precision), art.precision,
                           art.sha256, manifest.contract, cache, art.opset)
    if not model.is_dir():
        raise UserError(f"model not found: {model}")
    manifest = Manifest.load(model)
    precision = precision or _best(manifest)
    if cache is None and precision == "int8" and trt_version is not None and trt_version < STRONG_TYPING_FROM:
        path = manifest.artefact_for("tensorrt", "int8")
        opset = manifest.artefacts[path.name].opset
        if opset is not None and opset > TRT8_MAX_OPSET:
            cache = _legacy_cache(manifest, trt_version, opset)
    if cache is not None:
        path = manifest.artefact_for("tensorrt", "fp32")
    else:
        path = manifest.artefact_for("tensorrt", precision)
    manifest.verify(path)
    if cache is not None and cache.parent == manifest.root:
        manifest.verify(cache)
    art = manifest.artefacts[path.name]
    return TrtArtefact(path, precision, art.precision, art.sha256, manifest.contract, cache, art.opset)


def _legacy_cache(manifest: Manifest, trt_version: Version, opset: int) -> Path:
    caches = [n for n, f in manifest.files.items() if f.get("kind") == "tensorrt-calib-cache"]
    if not caches:
        raise UserError(f"TensorRT {trt_version} reads ONNX up to opset {TRT8_MAX_OPSET}; the INT8 artefact is opset "
                        f"{opset} (fp16 Q/DQ scales) and the export has no calib.cache: use TensorRT >= 10 "
                        "(JetPack 6.1) or --precision fp16")
    assert manifest.root is not None
    log.warning("TensorRT %s cannot read the opset-%d Q/DQ artefact; building int8 from model.onnx + %s (implicit "
                "INT8)", trt_version, opset, caches[0])
    return manifest.root / caches[0]
