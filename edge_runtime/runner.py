"""Runners: one lifecycle for every inference backend (STYLE.md #7).

``with open_runner("export/") as r: out = r.infer({"sar": ..., "optical": ...})``. The base class validates
each batch against the contract (names, the contract's input dtypes, ``[N, C, P, P]``; what the values hold --
standardised, or raw physical units for artefacts that standardise in the graph -- is the contract's
``input_form``, which callers prepare for) and checks that the backend returned every contract output with
``N`` rows; subclasses implement :meth:`Runner._activate`, :meth:`Runner._deactivate` and :meth:`Runner._infer`.

Batches can be assembled in place: :meth:`Runner.input_buffers` hands out arrays owned by the runner (plain
host arrays by default; a backend may return its own staging memory, e.g. pinned buffers) that the caller fills
and passes, sliced to the batch, to :meth:`Runner.infer`.

Artefact choice: given an export directory (``manifest.json`` beside the ONNX files), the ONNX Runtime runner
takes the artefact meant for its target — on CPU the ``target: "cpu"`` INT8 artefact
(``model.int8-cpu.onnx``), never the TensorRT-style Q/DQ one, which is slow there. ``kind="trt"`` delegates to
:func:`mosaic_edge.edge_runtime.trt_runner.open_trt_runner`, imported only when asked for.

This module never imports torch (tested in a subprocess).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract, sha256_file
from mosaic_edge.environment import usable_cores
from mosaic_edge.errors import ContractMismatchError, UserError
from mosaic_edge.manifest import Manifest
from mosaic_edge.optional import available, require


class Runner:
    """Base of every runner: context-manager lifecycle plus contract checks around :meth:`_infer`.

    Attributes:
        contract: What the model consumes and produces.
        kind: Backend name ("ort", "trt", ...), recorded in every output record.
        precision: "fp32", "fp16" or "int8".
        model_hash: SHA-256 of the artefact that runs (goes into every output record).
        max_batch: Largest batch the backend accepts (None: unbounded).
        model_path: The artefact file that runs, when there is one (profiles name it).
    """

    kind = "base"
    model_path: Path | None = None

    def __init__(self, contract: Contract, precision: str = "fp32", model_hash: str = "",
                 max_batch: int | None = None):
        self.contract = contract
        self.precision = precision
        self.model_hash = model_hash or contract.model_hash
        self.max_batch = max_batch
        self._active = False
        self._buffers: dict[str, np.ndarray] = {}

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Load the model (idempotent)."""
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        """Release the model (idempotent)."""
        if self._active:
            self._active = False
            self._deactivate()

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        """Release backend resources; the default does nothing."""

    # ---- inference -----------------------------------------------------------------------------------------
    def infer(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch.

        Args:
            batch: ``{"sar": float32 [N,2,P,P], "optical": float32 [N,12,P,P]}``.

        Returns:
            Contract output name -> array with ``N`` rows (``logits`` etc. are raw logits, not probabilities).

        Raises:
            ContractMismatchError: the batch or the backend's outputs do not match the contract.
            RuntimeError: the runner is not active (use it as a context manager).
        """
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} is not active; use it as a context manager")
        n = self.contract.validate_batch(batch)
        if self.max_batch is not None and n > self.max_batch:
            raise ContractMismatchError(f"batch of {n} exceeds this runner's max batch {self.max_batch}")
        out = self._infer({name: np.ascontiguousarray(batch[name]) for name in self.contract.input_names})
        missing = [name for name in self.contract.output_names if name not in out]
        if missing:
            raise ContractMismatchError(f"{self.kind} runner did not return outputs {missing}")
        bad = [name for name in self.contract.output_names if np.shape(out[name])[:1] != (n,)]
        if bad:
            raise ContractMismatchError(f"{self.kind} runner returned outputs {bad} without {n} rows")
        return {name: np.asarray(out[name], dtype=np.float32) for name in self.contract.output_names}

    def _infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def input_buffers(self, rows: int) -> dict[str, np.ndarray]:
        """Arrays of at least ``rows`` rows per contract input, in its dtype, to assemble a batch in.

        Pass ``{name: buffers[name][:n]}`` to :meth:`infer`. The arrays belong to the runner and are reused:
        fill them, call :meth:`infer`, then fill them again -- from the thread that calls :meth:`infer`, never
        while a call is running. The default allocates host arrays once (growing them when ``rows`` grows);
        a backend with its own staging memory (pinned host buffers of the engine's inputs) may return views of
        it instead, so the batch lands where the copy to the device starts.
        """
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if not self._buffers or len(next(iter(self._buffers.values()))) < rows:
            shapes = {name: tuple(int(d) for d in shape[1:]) for name, shape in self.contract.input_shapes().items()}
            self._buffers = {name: np.empty((rows, *dims), dtype=self.contract.input_dtype(name))
                             for name, dims in shapes.items()}
        return self._buffers

    def describe(self) -> dict[str, Any]:
        """Primitive summary for logs and output records."""
        return {"kind": self.kind, "precision": self.precision, "model_hash": self.model_hash,
                "max_batch": self.max_batch, "input_form": self.contract.input_form}


_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint16": "tensor(uint16)"}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on CPU or CUDA.

    Args:
        model_path: The ONNX file to run.
        contract: Expected contract; defaults to the one in the ONNX metadata. When both exist they must
            agree.
        device: "cpu" or "cuda" (CUDA EP, falling back to CPU only if ``allow_cpu_fallback``).
        threads: Intra-op threads (None: the cores this process may run on, :func:`usable_cores`).
        spin: Let ONNX Runtime's threads spin-wait between calls (faster for back-to-back calls on an idle
            machine; in the daemon they would burn the cores the reader and writer need, so off by default).
        precision: Recorded in outputs; the artefact itself fixes the arithmetic.
        model_hash: SHA-256 of ``model_path`` when known (computed otherwise).
    """

    kind = "ort"

    def __init__(self, model_path: str | Path, contract: Contract | None = None, device: str = "cpu",
                 threads: int | None = None, precision: str = "fp32", model_hash: str = "",
                 allow_cpu_fallback: bool = False, spin: bool = False):
        self._ort = require("onnxruntime")
        self.model_path: Path = Path(model_path)
        if not self.model_path.is_file():
            raise UserError(f"model file not found: {self.model_path}")
        if device not in ("cpu", "cuda"):
            raise UserError(f"device must be 'cpu' or 'cuda', got {device!r}")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in self._ort.get_available_providers():
                raise UserError("device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                                "(install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider"] + (providers if allow_cpu_fallback else [])
        self.device = device
        self.providers = providers
        if threads is not None and threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        self.threads = threads or usable_cores()
        self.spin = spin
        self._session: Any = None
        meta_contract = self._read_metadata_contract()
        if contract is None and meta_contract is None:
            raise ContractMismatchError(f"{self.model_path}: no contract given and none in its ONNX metadata")
        if contract is not None and meta_contract is not None:
            contract.check_compatible(meta_contract, what=str(self.model_path))
        super().__init__(contract or meta_contract, precision,  # type: ignore[arg-type]
                         model_hash or sha256_file(self.model_path))

    def _options(self) -> Any:
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        spin = "1" if self.spin else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        so.log_severity_level = 3
        return so

    def _read_metadata_contract(self) -> Contract | None:
        try:
            sess = self._ort.InferenceSession(str(self.model_path), sess_options=self._options(),
                                              providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for a bad file
            raise UserError(f"{self.model_path}: onnxruntime cannot load it: {exc}") from exc
        self._session = sess if self.providers == ["CPUExecutionProvider"] else None
        return Contract.from_metadata(sess.get_modelmeta().custom_metadata_map, str(self.model_path))

    def _activate(self) -> None:
        if self._session is None:
            self._session = self._ort.InferenceSession(str(self.model_path), sess_options=self._options(),
                                                       providers=self.providers)
        names_in = [i.name for i in self._session.get_inputs()]
        names_out = [o.name for o in self._session.get_outputs()]
        want = {n: _ORT_TYPES.get(self.contract.input_dtype(n)) for n in self.contract.input_names}
        bad = {i.name: i.type for i in self._session.get_inputs() if i.name in want and i.type != want[i.name]}
        if bad:
            raise ContractMismatchError(f"{self.model_path}: input types {bad}, the contract says {want}")
        outputs_ok = set(self.contract.output_names) <= set(names_out)
        if sorted(names_in) != sorted(self.contract.input_names) or not outputs_ok:
            raise ContractMismatchError(
                f"{self.model_path}: ONNX inputs {names_in} / outputs {names_out} do not match the "
                "contract's "
                f"{list(self.contract.input_names)} / {list(self.contract.output_names)}"
            )

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.contract.output_names)
        values = self._session.run(names, batch)
        return dict(zip(names, values, strict=True))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "artefact": self.model_path.name, "providers": self.providers,
                "threads": self.threads, "spin": self.spin}


# ---- artefact selection ------------------------------------------------------------------------------------
def _resolve(model: Path, target: str, precision: str) -> tuple[Path, Contract | None, str]:
    """(artefact path, manifest contract or None, verified sha256 or "")."""
    if model.is_file():
        return model, None, ""
    if not model.is_dir():
        raise UserError(f"model not found: {model}")
    manifest = Manifest.load(model)
    path = manifest.artefact_for(target, precision)  # never a TensorRT-only INT8 artefact on CPU/CUDA EP
    manifest.verify(path)  # refuses a corrupted or replaced artefact
    return path, manifest.contract, manifest.artefacts[path.name].sha256


def _cuda_visible() -> bool:
    # Cheap probe without torch: the NVIDIA driver exposes this on Linux desktops and Jetsons alike.
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-ctrl-gpu")


def open_runner(model: str | Path, kind: str = "auto", precision: str | None = None, device: str = "auto",
                threads: int | None = None, contract: Contract | None = None, spin: bool = False,
                **trt_options: Any) -> Runner:
    """Build (not yet activate) the runner for an export directory or one ONNX/engine file.

    Args:
        model: Export directory with ``manifest.json``, or an ``.onnx`` file.
        kind: "auto" (TensorRT when it and a GPU are present, else ONNX Runtime), "ort" or "trt".
        precision: "fp32", "fp16" or "int8"; None picks fp32 for ONNX Runtime and lets TensorRT choose.
        device: ONNX Runtime device, "auto" (CUDA EP when available), "cpu" or "cuda".
        threads: ONNX Runtime intra-op threads (None: :func:`usable_cores`).
        contract: Expected contract; checked against the artefact's (input form included).
        spin: Let ONNX Runtime's threads spin between calls (see :class:`OnnxRuntimeRunner`).
        **trt_options: Passed to the TensorRT runner factory (``engine_dir``, ``max_batch``, ...); ignored
            when ``kind="auto"`` falls back to ONNX Runtime.

    Returns:
        An inactive runner; use it as a context manager.
    """
    model = Path(model)
    if kind not in ("auto", "ort", "trt"):
        raise UserError(f"runner kind must be auto, ort or trt, got {kind!r}")
    explicit = kind
    if kind == "auto":
        kind = "trt" if available("tensorrt") and _cuda_visible() else "ort"
    if kind == "trt":
        from mosaic_edge.edge_runtime import trt_runner  # only when asked: needs TensorRT

        return trt_runner.open_trt_runner(model, precision=precision, contract=contract, **trt_options)
    if trt_options and explicit == "ort":
        raise UserError(f"options {sorted(trt_options)} only apply to the TensorRT runner")
    if device == "auto":
        ort = require("onnxruntime")
        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
        device = "cuda" if has_cuda_ep and _cuda_visible() else "cpu"
    precision = precision or "fp32"
    path, manifest_contract, digest = _resolve(model, device, precision)
    if contract is not None and manifest_contract is not None:
        contract.check_compatible(manifest_contract, what=str(model))
    return OnnxRuntimeRunner(path, contract or manifest_contract, device=device, threads=threads,
                             precision=precision, model_hash=digest, spin=spin)


# ---- the INT8 safety net's fallback runner ------------------------------------------------------------------
def export_manifest(model: Path) -> Manifest | None:
    """The manifest of the export ``model`` belongs to: an export directory, or an ONNX file listed in the
    manifest beside it; None for a file outside any export."""
    if model.is_dir():
        return Manifest.load(model)
    listed = model.parent / "manifest.json"
    if model.is_file() and listed.is_file():
        manifest = Manifest.load(model.parent)
        return manifest if model.name in manifest.artefacts else None
    return None


def open_fallback_runner(manifest: Manifest, primary: Runner, threads: int | None = None,
                         **trt_options: Any) -> tuple[Runner | None, str]:
    """The higher-precision runner re-running ``primary``'s borderline INT8 windows (inactive), or None and why.

    The artefact is :meth:`Manifest.fallback_for` the primary's target -- fp16 built as an engine for TensorRT
    (fp32 when the export has no fp16), fp32 for ONNX Runtime -- on the same backend and device: a TensorRT
    runner owns its own engine, execution contexts and buffers in the device's primary context; an ONNX Runtime
    session its own thread pool (``threads``, default the primary's), which sleeps while the primary runs (both
    are called from one thread, one after the other).
    """
    if primary.kind == "trt":
        target = "tensorrt"
    elif isinstance(primary, OnnxRuntimeRunner):
        target = primary.device
    else:
        return None, f"no fallback for a {primary.kind!r} runner"
    path = manifest.fallback_for(target)
    if path is None:
        return None, f"the export has no fp16 or fp32 artefact for target {target!r} to re-run INT8 windows with"
    art = manifest.artefacts[path.name]
    fallback: Runner
    if primary.kind == "trt":
        from mosaic_edge.edge_runtime import trt_runner  # only when asked: needs TensorRT

        assert manifest.root is not None
        fallback = trt_runner.open_trt_runner(manifest.root, precision=art.precision, contract=primary.contract,
                                              **trt_options)
    else:
        assert isinstance(primary, OnnxRuntimeRunner)
        manifest.verify(path)
        fallback = OnnxRuntimeRunner(path, manifest.contract, device=primary.device,
                                     threads=threads or primary.threads, precision=art.precision,
                                     model_hash=art.sha256, spin=primary.spin)
    primary.contract.check_compatible(fallback.contract, what=f"fallback artefact {path.name}")
    return fallback, ""


def run_batched(runner: Runner, sar: np.ndarray, optical: np.ndarray, batch: int = 16
                ) -> dict[str, np.ndarray]:
    """Infer ``[M, ...]`` arrays in chunks of ``batch`` (respecting ``runner.max_batch``) and concatenate."""
    if runner.max_batch is not None:
        batch = min(batch, runner.max_batch)
    parts: list[dict[str, np.ndarray]] = []
    for i in range(0, len(sar), batch):
        parts.append(runner.infer({"sar": sar[i:i + batch], "optical": optical[i:i + batch]}))
    names: Sequence[str] = runner.contract.output_names
    return {n: np.concatenate([p[n] for p in parts]) for n in names}
