"""``manifest.json``: what an export directory holds, which target each model is for, every file's SHA-256.

Core module (JSON + the contract; no torch, onnx or onnxruntime), because the runtime on the device picks and
verifies its artefact with it. Layout (schema 2)::

    {"schema": 2, "mosaic_edge_version": "...", "created": "2026-...Z", "contract": {...Contract dict...},
     "artefacts": {"model.onnx": {"sha256": "...", "precision": "fp32", "target": "any", "opset": 17,
                                  "inputs": {"sar": ["N", 2, 120, 120], ...},
                                  "input_dtypes": {"sar": "float32", ...}, "outputs": ["logits", ...],
                                  "notes": {...}},
                   "model.int8.onnx": {..., "calibrated_ranges": {"<tensor>": [lo, hi], ...},
                                       "fallback": {"margin_logit": 1.7, "margin_space": "logit", ...}}, ...},
     "files": {"calib.npz": {"sha256": "...", "kind": "calibration-set"}, ...},
     "calibration": {"envelope": {...Envelope dict...}, "sources": [{"source": ..., "drawn": ...}], ...}}

``artefacts`` lists only models; ``files`` lists the other outputs (calibration set, TensorRT cache, report)
so a copy to the device can be verified as a whole. The INT8 safety net (DESIGN.md) reads three things: the
calibration envelope (:attr:`Manifest.envelope`, per-band input quantiles in raw units and the drift rule),
each INT8 artefact's borderline-fallback policy (:meth:`Manifest.fallback_policy`) and the artefact that
re-runs its windows (:meth:`Manifest.fallback_for`). Schema 1 manifests (no safety net) still load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mosaic_edge.contract import Contract, sha256_file
from mosaic_edge.envelope import Envelope
from mosaic_edge.errors import UserError
from mosaic_edge.fallback import FallbackPolicy
from mosaic_edge.version import __version__

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 2
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
# "any": plain ONNX any backend can run; "tensorrt": Q/DQ INT8 with symmetric activations as TensorRT
# requires (runs in ONNX Runtime CPU too, but slower than fp32); "cpu": INT8 with asymmetric uint8
# activations, fast in ORT CPU.
TARGETS: tuple[str, ...] = ("any", "tensorrt", "cpu")
# Which artefact targets serve a runtime target, best first. A TensorRT-only INT8 model is never picked for
# CPU or the CUDA execution provider (it would be slower than fp32 there).
_SERVES: dict[str, tuple[str, ...]] = {
    "any": ("any",),
    "cpu": ("cpu", "any"),
    "cuda": ("any", "cpu"),
    "tensorrt": ("tensorrt", "any"),
}


class ManifestError(UserError):
    """A manifest is missing, unreadable, lacks an artefact, or a file does not match its recorded SHA-256."""


@dataclass(frozen=True)
class Artefact:
    """One model file of an export directory.

    Attributes:
        name: File name relative to the manifest's directory.
        sha256: Hex digest of the file.
        precision: "fp32", "fp16" or "int8" (weights/compute; I/O is always float32).
        target: "any", "tensorrt" or "cpu" (see :data:`TARGETS`).
        opset: ONNX default-domain opset, or None for non-ONNX files.
        inputs: Input name -> shape (``"N"`` marks the dynamic batch).
        input_dtypes: Input name -> numpy dtype name (empty in manifests written before it was recorded); what
            the inputs hold is the contract's ``input_form``.
        outputs: Output names in graph order.
        notes: Free-form primitives (calibration method, quantizer, parity numbers).
        calibrated_ranges: INT8 only: quantized tensor -> (lowest, highest) value its Q/DQ pair represents.
        fallback: INT8 only: when the runtime re-runs a window at higher precision.
    """

    name: str
    sha256: str
    precision: str
    target: str
    opset: int | None = None
    inputs: Mapping[str, list[Any]] = field(default_factory=dict)
    input_dtypes: Mapping[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    notes: Mapping[str, Any] = field(default_factory=dict)
    calibrated_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    fallback: FallbackPolicy | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"artefact {self.name}: precision {self.precision!r} not in {PRECISIONS}")
        if self.target not in TARGETS:
            raise ValueError(f"artefact {self.name}: target {self.target!r} not in {TARGETS}")

    def to_dict(self) -> dict[str, Any]:
        out = {"sha256": self.sha256, "precision": self.precision, "target": self.target,
               "opset": self.opset,
               "inputs": {k: list(v) for k, v in self.inputs.items()}, "input_dtypes": dict(self.input_dtypes),
               "outputs": list(self.outputs), "notes": dict(self.notes)}
        if self.calibrated_ranges:
            out["calibrated_ranges"] = {k: [float(lo), float(hi)] for k, (lo, hi) in self.calibrated_ranges.items()}
        if self.fallback is not None:
            out["fallback"] = self.fallback.to_dict()
        return out

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Artefact:
        fallback = data.get("fallback")
        return cls(name=name, sha256=str(data["sha256"]), precision=str(data["precision"]),
                   target=str(data.get("target", "any")), opset=data.get("opset"),
                   inputs=dict(data.get("inputs", {})), input_dtypes=dict(data.get("input_dtypes", {})),
                   outputs=tuple(data.get("outputs", ())), notes=dict(data.get("notes", {})),
                   calibrated_ranges={k: (float(v[0]), float(v[1]))
                                      for k, v in dict(data.get("calibrated_ranges", {})).items()},
                   fallback=FallbackPolicy.from_dict(fallback) if fallback is not None else None)


@dataclass(frozen=True)
class Manifest:
    """The manifest of one export directory; build with :meth:`create`, extend with :meth:`with_artefact`.

    Attributes:
        contract: The model's contract (the same JSON as in every ONNX file's metadata).
        artefacts: File name -> :class:`Artefact` (models only).
        files: File name -> ``{"sha256", "kind"}`` for the non-model outputs.
        created: UTC ISO-8601 time of the export.
        mosaic_edge_version: Version that wrote it.
        envelope: Calibration envelope of the INT8 artefacts (None: no INT8, or a schema 1 manifest).
        calibration: Where the calibration set came from (primitives: sources, patches per source, method).
        root: Directory the file names are relative to (not serialised).
    """

    contract: Contract
    artefacts: Mapping[str, Artefact] = field(default_factory=dict)
    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    created: str = ""
    mosaic_edge_version: str = __version__
    envelope: Envelope | None = None
    calibration: Mapping[str, Any] = field(default_factory=dict)
    root: Path | None = None

    @classmethod
    def create(cls, contract: Contract, root: str | Path) -> Manifest:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(contract=contract, created=now, root=Path(root))

    # ---- building ------------------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        if self.root is None:
            raise ManifestError("manifest has no directory: use Manifest.load(dir) or .create(contract, dir)")
        return self.root / name

    def with_artefact(self, name: str, precision: str, target: str, **info: Any) -> Manifest:
        """A copy with model ``name`` (already written in :attr:`root`) hashed and recorded."""
        digest = sha256_file(self._path(name))
        art = Artefact(name=name, sha256=digest, precision=precision, target=target, **info)
        return replace(self, artefacts={**self.artefacts, name: art})

    def with_file(self, name: str, kind: str) -> Manifest:
        """A copy with the non-model file ``name`` hashed and recorded."""
        entry = {"sha256": sha256_file(self._path(name)), "kind": kind}
        return replace(self, files={**self.files, name: entry})

    def with_calibration(self, envelope: Envelope | None, info: Mapping[str, Any]) -> Manifest:
        """A copy carrying the calibration envelope and where the calibration set came from."""
        return replace(self, envelope=envelope, calibration=dict(info))

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": MANIFEST_SCHEMA, "mosaic_edge_version": self.mosaic_edge_version,
                "created": self.created,
                "contract": self.contract.to_dict(),
                "artefacts": {n: a.to_dict() for n, a in sorted(self.artefacts.items())},
                "files": {n: dict(f) for n, f in sorted(self.files.items())},
                "calibration": {**dict(self.calibration),
                                "envelope": self.envelope.to_dict() if self.envelope else None}}

    def save(self, root: str | Path | None = None) -> Path:
        """Write ``manifest.json`` atomically into ``root`` (default :attr:`root`); return its path."""
        path = Path(root) / MANIFEST_NAME if root is not None else self._path(MANIFEST_NAME)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)  # a reader never sees half a manifest
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read the manifest of an export directory (or the ``manifest.json`` file itself)."""
        path = Path(path)
        file = path / MANIFEST_NAME if path.is_dir() else path
        if not file.is_file():
            raise ManifestError(f"{path}: no {MANIFEST_NAME} (is this an export directory?)")
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{file}: unreadable manifest: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("artefacts"), dict):
            raise ManifestError(f"{file}: not a mosaic-edge manifest (no 'artefacts' object)")
        if int(data.get("schema", 0)) > MANIFEST_SCHEMA:
            raise ManifestError(f"{file}: manifest schema {data['schema']} is newer than {MANIFEST_SCHEMA}")
        try:
            contract = Contract.from_dict(data["contract"])
            artefacts = {n: Artefact.from_dict(n, a) for n, a in data["artefacts"].items()}
            calibration = dict(data.get("calibration") or {})  # schema 1: none
            env = calibration.pop("envelope", None)
            envelope = Envelope.from_dict(env) if env else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{file}: malformed manifest: {exc}") from exc
        return cls(contract=contract, artefacts=artefacts, files=dict(data.get("files", {})),
                   created=str(data.get("created", "")),
                   mosaic_edge_version=str(data.get("mosaic_edge_version", "")), envelope=envelope,
                   calibration=calibration, root=file.parent)

    # ---- use -----------------------------------------------------------------------------------------------
    def artefact_for(self, target: str, precision: str) -> Path:
        """Path of the model to run on ``target`` ("cpu", "cuda", "tensorrt", "any") at ``precision``.

        A target-specific artefact wins over a ``target: "any"`` one (see :data:`_SERVES`).

        Raises:
            ManifestError: naming what the manifest offers when nothing fits.
        """
        if precision not in PRECISIONS:
            raise ManifestError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if target not in _SERVES:
            raise ManifestError(f"target must be one of {tuple(_SERVES)}, got {target!r}")
        for want in _SERVES[target]:
            for name, art in sorted(self.artefacts.items()):
                if art.precision == precision and art.target == want:
                    return self._path(name)
        offered = sorted(f"{n} ({a.precision}, {a.target})" for n, a in self.artefacts.items())
        raise ManifestError(f"no {precision} artefact for target {target!r}; the manifest offers {offered}")

    def fallback_policy(self, artefact: str | Path) -> FallbackPolicy | None:
        """The borderline-fallback policy of INT8 ``artefact`` (a name or path), None when it has none."""
        art = self.artefacts.get(Path(artefact).name)
        if art is None:
            raise ManifestError(f"{Path(artefact).name} is not listed in the manifest")
        return art.fallback

    def fallback_for(self, target: str) -> Path | None:
        """The artefact re-running an INT8 artefact's windows on ``target``: fp16 for TensorRT when present,
        else fp32; None when neither is listed."""
        for precision in (("fp16", "fp32") if target == "tensorrt" else ("fp32",)):
            try:
                return self.artefact_for(target, precision)
            except ManifestError:
                continue
        return None

    def verify(self, path: str | Path | None = None) -> list[Path]:
        """Check SHA-256 of one listed file (``path``) or of every listed file; return the paths checked.

        Raises:
            ManifestError: naming the first file that is missing, unlisted or whose digest differs.
        """
        listed = {n: a.sha256 for n, a in self.artefacts.items()}
        listed.update({n: f["sha256"] for n, f in self.files.items()})
        if path is not None:
            name = Path(path).name
            if name not in listed:
                raise ManifestError(f"{name} is not listed in the manifest")
            listed = {name: listed[name]}
        checked = []
        for name, want in sorted(listed.items()):
            file = self._path(name)
            if not file.is_file():
                raise ManifestError(f"{file}: listed in the manifest but missing")
            have = sha256_file(file)
            if have != want:
                raise ManifestError(f"{file}: sha256 {have[:12]}... does not match the manifest's "
                                    f"{want[:12]}... (corrupted or replaced; re-export or re-copy it)")
            checked.append(file)
        return checked
