"""Parity of an exported model against torch (or against the fp32 ONNX), with a tolerance per precision.

Two numbers per comparison: the max absolute difference of the logits (fused and per-modality) and the
fraction of label decisions (``sigmoid(logit) >= threshold`` per class and sample) that differ. The tolerances
are named constants so the test suite checks the same bounds the export enforces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.errors import UserError
from mosaic_edge.optional import require

LOGIT_OUTPUTS: tuple[str, ...] = ("logits", "logits_sar", "logits_optical")


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted deviation of an artefact from its reference.

    Attributes:
        max_abs_logit: Bound on max |logit difference| over all logit outputs.
        max_flip_fraction: Bound on the fraction of (sample, class) decisions that differ.
        max_mean_abs_logit: Bound on the mean |logit difference| of the worst logit output (INT8: a clipped
            range shows here while the max alone is dominated by one outlier).
    """

    max_abs_logit: float
    max_flip_fraction: float
    max_mean_abs_logit: float = float("inf")


# fp32 ONNX Runtime vs torch: only summation order differs (measured <= 1e-6 on the tiny models; 1e-3 leaves
# room for deep encoders with BatchNorm folded into Conv).
FP32_TOLERANCE = Tolerance(max_abs_logit=1e-3, max_flip_fraction=0.001)
# fp16 weights/activations, ~3 significant digits per op: measured max |dlogit| 1e-3 on the 24 px test model
# and 6e-3 on the 48 px demo checkpoint; 5e-2 leaves room for deeper encoders.
FP16_TOLERANCE = Tolerance(max_abs_logit=5e-2, max_flip_fraction=0.01)
# INT8 Q/DQ: tiny test model, minmax calibration on synthetic patches: mean |dlogit| 0.10 on synthetic and
# 0.28 on the real benv2 sample (outside the calibration distribution), max 1.4, <= 0.1% decisions flipped; a
# logit range clipped by entropy calibration gave mean 0.9-1.2. The mAP gate of
# :mod:`mosaic_edge.export.report` is the binding INT8 check; this catches a broken graph or clipped range.
INT8_TOLERANCE = Tolerance(max_abs_logit=2.0, max_flip_fraction=0.02, max_mean_abs_logit=0.4)
TOLERANCES: dict[str, Tolerance] = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "int8": INT8_TOLERANCE}


@dataclass(frozen=True)
class Samples:
    """Preprocessed model inputs with their labels (what parity and the accuracy report run on)."""

    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ParityResult:
    """One artefact compared with its reference on one set of samples."""

    artefact: str
    reference: str
    samples: str
    precision: str
    n: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    flip_fraction: float
    max_abs_diff: dict[str, float]
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return (self.max_abs_logit_diff <= self.tolerance.max_abs_logit
                and self.mean_abs_logit_diff <= self.tolerance.max_mean_abs_logit
                and self.flip_fraction <= self.tolerance.max_flip_fraction)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        return (f"{self.artefact} vs {self.reference} on {self.samples} (n={self.n}): max |dlogit| "
                f"{self.max_abs_logit_diff:.3g} (tol {self.tolerance.max_abs_logit:g}), mean "
                f"{self.mean_abs_logit_diff:.3g} (tol {self.tolerance.max_mean_abs_logit:g}), decisions "
                f"differing {self.flip_fraction:.2%} (tol {self.tolerance.max_flip_fraction:.2%})")


def collect_samples(name: str, sources: Iterable[Any], contract: Contract,
                    limit: int | None = None) -> Samples:
    """Preprocess patches of one or more ``PatchSource`` s (the runtime's preprocessing) into one batch.

    Args:
        name: Label of the set in reports ("synthetic-test", "benv2-sample").
        sources: PatchSources whose classes match the contract.
        contract: Normalisation statistics and band order.
        limit: Keep at most this many samples (first ones, deterministic).
    """
    from mosaic_edge.data.base import PatchDataset

    sar: list[np.ndarray] = []
    optical: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    for source in sources:
        for sample in PatchDataset(source, contract):
            if limit is not None and len(ids) >= limit:
                break
            sar.append(sample["sar"])
            optical.append(sample["optical"])
            labels.append(sample["labels"])
            ids.append(sample["id"])
    if not ids:
        raise UserError(f"{name}: no samples to evaluate on")
    inputs = {"sar": np.stack(sar).astype(np.float32), "optical": np.stack(optical).astype(np.float32)}
    return Samples(name, inputs, np.stack(labels).astype(np.float32), tuple(ids))


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session (full graph optimisation; ``threads`` intra-op threads, default ORT's)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # Q/DQ models make ORT warn about unused initializers; not actionable
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(path: str | Path | Any, inputs: Mapping[str, np.ndarray],
             batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run an ONNX file (or an existing session) on ``inputs`` in batches; outputs keyed by name."""
    sess = ort_session(path) if isinstance(path, (str, Path)) else path
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(inputs.values())))
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n, batch_size):
        feed = {k: np.ascontiguousarray(v[start:start + batch_size]) for k, v in inputs.items()}
        for k, v in zip(names, sess.run(names, feed), strict=True):
            chunks[k].append(v)
    return {k: np.concatenate(v) for k, v in chunks.items()}


def run_torch(model: Any, inputs: Mapping[str, np.ndarray], batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run the torch model (eval, no grad, CPU) on ``inputs`` in batches; outputs keyed by name."""
    torch = require("torch")
    model = model.eval()
    n = len(next(iter(inputs.values())))
    chunks: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, n, batch_size):
            out = model(*(torch.from_numpy(np.ascontiguousarray(inputs[k][start:start + batch_size]))
                          for k in ("sar", "optical")))
            for k, v in out.items():
                chunks.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], contract: Contract,
            precision: str, artefact: str = "candidate", reference_name: str = "torch",
            samples: str = "") -> ParityResult:
    """Compare two output dicts; decisions are compared on the fused ``logits``."""
    if precision not in TOLERANCES:
        raise UserError(f"precision must be one of {tuple(TOLERANCES)}, got {precision!r}")
    missing = [k for k in contract.output_names if k not in candidate or k not in reference]
    if missing:
        raise UserError(f"{artefact}: outputs {missing} missing")
    absdiff = {k: np.abs(candidate[k].astype(np.float64) - reference[k]) for k in contract.output_names}
    diffs = {k: float(d.max()) for k, d in absdiff.items()}
    flips = contract.decide(candidate["logits"]) != contract.decide(reference["logits"])
    return ParityResult(
        artefact=artefact, reference=reference_name, samples=samples, precision=precision,
        n=len(reference["logits"]), max_abs_logit_diff=max(diffs[k] for k in LOGIT_OUTPUTS),
        mean_abs_logit_diff=max(float(absdiff[k].mean()) for k in LOGIT_OUTPUTS),
        flip_fraction=float(flips.mean()), max_abs_diff=diffs, tolerance=TOLERANCES[precision])


def check_parity(reference: Mapping[str, np.ndarray], onnx_path: str | Path, samples: Samples,
                 contract: Contract, precision: str, reference_name: str = "torch") -> ParityResult:
    """Run ``onnx_path`` on ``samples``, compare with ``reference`` outputs (never raises; see ``passed``)."""
    out = run_onnx(onnx_path, samples.inputs)
    return compare(reference, out, contract, precision, Path(onnx_path).name, reference_name, samples.name)
