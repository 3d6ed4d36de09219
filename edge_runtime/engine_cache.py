"""On-device TensorRT engine cache, keyed by everything a serialized engine is only valid for.

An engine only works with the TensorRT version and GPU it was built with, so the runtime builds it on first
start on the device and caches it under a file name derived from the key (:class:`EngineKey`: model hash,
TensorRT version, GPU name, compute capability, SM count, CUDA driver version, precision, profile, workspace,
builder version -- every Orin module may report the same GPU name). A later start with the same key loads it; a
changed key (new model, JetPack upgrade, other module, other batch range) maps to another file and is built; a
cached engine whose bytes no longer match its manifest, or that TensorRT refuses to deserialize, is rebuilt --
never a crash. Builder and loader are injected, so this logic is tested without TensorRT.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosaic_edge.contract import sha256_file
from mosaic_edge.errors import UserError

log = logging.getLogger(__name__)


class EngineLoadError(Exception):
    """A serialized engine could not be deserialized (corrupt, truncated, or built by another
    TensorRT/GPU)."""


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine is only valid for.

    Attributes:
        model_sha256: SHA-256 of the ONNX artefact.
        trt_version: TensorRT version.
        gpu_name / compute_capability / sm_count / driver_version: The device (``DeviceInfo`` of the CUDA adapter).
        precision: Engine precision, from the artefact's manifest entry.
        profile: Input name -> [min, opt, max] shapes.
        workspace_mb: Builder workspace limit (tactics depend on it).
        builder_version: :data:`mosaic_edge.export.trt.BUILDER_VERSION`.
        calib_sha256: SHA-256 of the legacy calibration cache, "" for other builds.
    """

    model_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    profile: dict[str, list[list[int]]] = field(hash=False)
    compute_capability: str
    sm_count: int
    driver_version: int
    workspace_mb: int
    builder_version: str
    calib_sha256: str = ""

    def fields(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model_sha256,
            "trt_version": self.trt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "sm_count": self.sm_count,
            "driver_version": self.driver_version,
            "precision": self.precision,
            "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
            "workspace_mb": self.workspace_mb,
            "builder_version": self.builder_version,
            "calib_sha256": self.calib_sha256,
        }

    def digest(self) -> str:
        """16 hex digits identifying the key (part of the cached file name)."""
        import hashlib

        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:16]

    def file_stem(self) -> str:
        return f"{self.model_sha256[:12]}-{self.precision}-{self.digest()}"


# (onnx_path, engine_out_path, key) -> manifest dict with at least the key fields and "engine_sha256"
Builder = Callable[[Path, Path, EngineKey], Mapping[str, Any]]
# engine_path -> loaded engine object; raises EngineLoadError when TensorRT refuses it
Loader = Callable[[Path], Any]


@dataclass
class CacheResult:
    """What :meth:`EngineCache.load_or_build` did."""

    engine: Any
    path: Path
    built: bool
    reason: (
        str  # "hit", "missing", "key mismatch", "hash mismatch", "unreadable manifest", "load failed: ..."
    )


class EngineCache:
    """Directory of ``<stem>.engine`` + ``<stem>.engine.json`` pairs.

    Args:
        root: Cache directory (created), e.g. ``/var/lib/mosaic-edge/engines`` on a Jetson.
        builder: Builds an engine for a key (default: :func:`mosaic_edge.export.trt.build_engine`).
        loader: Deserializes an engine file (the TensorRT runner's).
    """

    def __init__(self, root: str | Path, builder: Builder, loader: Loader):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.builder = builder
        self.loader = loader

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        engine = self.root / f"{key.file_stem()}.engine"
        return engine, engine.with_name(engine.name + ".json")

    def check(self, key: EngineKey) -> str:
        """Why the cached engine for ``key`` cannot be used as is ("hit" when it can)."""
        engine, manifest = self.paths(key)
        if not engine.is_file() or not manifest.is_file():
            return "missing"
        try:
            data = json.loads(manifest.read_text())
            fields = {k: data[k] for k in key.fields()}
            want_sha = str(data["engine_sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return "unreadable manifest"
        if json.dumps(fields, sort_keys=True) != json.dumps(key.fields(), sort_keys=True):
            return "key mismatch"
        if sha256_file(engine) != want_sha:
            return "hash mismatch"
        return "hit"

    def _build(self, onnx_path: Path, key: EngineKey) -> Path:
        engine, manifest = self.paths(key)
        for p in (engine, manifest):
            p.unlink(missing_ok=True)
        info = dict(self.builder(onnx_path, engine, key))
        if not engine.is_file():
            raise UserError(f"engine builder reported success but wrote no {engine}")
        info.update(key.fields())
        info["engine_sha256"] = sha256_file(engine)
        tmp = manifest.with_name(manifest.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        tmp.replace(manifest)  # the manifest appears last: an interrupted build is "missing" next time
        return engine

    def load_or_build(self, onnx_path: str | Path, key: EngineKey) -> CacheResult:
        """Load the cached engine for ``key``, building (or rebuilding) it when needed.

        Raises:
            UserError: the freshly built engine cannot be loaded either.
        """
        onnx_path = Path(onnx_path)
        engine_path, _ = self.paths(key)
        reason = self.check(key)
        if reason == "hit":
            try:
                return CacheResult(self.loader(engine_path), engine_path, False, reason)
            except EngineLoadError as exc:
                reason = f"load failed: {exc}"
        if reason != "missing":
            log.warning("engine cache: rebuilding %s (%s)", engine_path.name, reason)
        else:
            log.info("engine cache: building %s for %s", engine_path.name, key.gpu_name)
        self._build(onnx_path, key)
        try:
            return CacheResult(self.loader(engine_path), engine_path, True, reason)
        except EngineLoadError as exc:
            raise UserError(f"TensorRT cannot load the engine it just built from {onnx_path}: {exc}") from exc

    def entries(self) -> list[dict[str, Any]]:
        """Manifests of all cached engines (for ``doctor`` / logs)."""
        out = []
        for m in sorted(self.root.glob("*.engine.json")):
            try:
                out.append(json.loads(m.read_text()) | {"file": m.name.removesuffix(".json")})
            except (OSError, ValueError):
                continue
        return out
