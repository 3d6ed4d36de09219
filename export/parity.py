"""Parity of an exported model against torch (or against the fp32 ONNX), with a tolerance per precision.

Judged on what the user gets, on the fused and per-modality logits:

- **logits, relative to their magnitude**: a logit passes when ``|candidate - reference| <= atol + rtol * s``,
  ``s`` the largest ``|reference logit|`` of that sample and output. Reduced-precision rounding scales with the
  activations feeding the head, which the sample's largest logit reflects; an element-wise relative bound would
  fail a near-zero logit of a sample whose other logits are in the hundreds, an absolute one any model with
  large logits although no decision changes.
- **probabilities**: max ``|sigmoid(candidate) - sigmoid(reference)|`` of the fused logits.
- **decisions**: the fraction of (sample, class) decisions (``sigmoid(logit) >= threshold``) that differ.

The tolerances are named constants (the measurements behind them: ``benchmarks/RESULTS.md``, "Parity
tolerances") so the test suite checks the bounds the export enforces. A failure names the worst input (patch
id) and class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract, sigmoid
from mosaic_edge.envelope import Envelope
from mosaic_edge.errors import UserError
from mosaic_edge.optional import require

LOGIT_OUTPUTS: tuple[str, ...] = ("logits", "logits_sar", "logits_optical")


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted deviation of an artefact from its reference.

    Attributes:
        logit_atol / logit_rtol: A logit passes when ``|d| <= logit_atol + logit_rtol * s`` (``s``: the
            sample's largest |reference logit| in that output).
        max_prob_diff: Bound on max |probability difference| of the fused logits.
        max_flip_fraction: Bound on the fraction of (sample, class) decisions that differ.
    """

    logit_atol: float
    logit_rtol: float
    max_prob_diff: float
    max_flip_fraction: float


# Measurements behind every number: benchmarks/RESULTS.md, "Parity tolerances".
# fp32 ONNX Runtime vs torch: only summation order and BatchNorm folding differ.
FP32_TOLERANCE = Tolerance(logit_atol=1e-3, logit_rtol=1e-4, max_prob_diff=1e-4, max_flip_fraction=0.001)
# fp16 weights and activations (fp32 I/O).
FP16_TOLERANCE = Tolerance(logit_atol=5e-2, logit_rtol=1e-2, max_prob_diff=0.05, max_flip_fraction=0.01)
# INT8 Q/DQ: informative (recorded, never enforced); the binding INT8 checks are the accuracy gate
# (:mod:`mosaic_edge.export.report`) and the fallback margin (:mod:`mosaic_edge.fallback`).
INT8_TOLERANCE = Tolerance(logit_atol=0.5, logit_rtol=0.1, max_prob_diff=0.5, max_flip_fraction=0.02)
TOLERANCES: dict[str, Tolerance] = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "int8": INT8_TOLERANCE}


@dataclass(frozen=True)
class Samples:
    """Preprocessed model inputs with their labels (what parity and the accuracy report run on).

    Attributes:
        drifted: bool [n] drift flag of each sample's raw values against the calibration envelope
            (:meth:`~mosaic_edge.envelope.Envelope.check`), or None when no envelope was given.
        origin: Per sample, the source it came from (e.g. ``benv2-mini/validation``).
    """

    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    ids: tuple[str, ...]
    drifted: np.ndarray | None = None
    origin: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | slice, name: str | None = None) -> Samples:
        """The samples at ``index`` (an index array or a slice)."""
        idx = np.arange(len(self))[index]
        return Samples(name or self.name, {k: v[idx] for k, v in self.inputs.items()}, self.labels[idx],
                       tuple(self.ids[i] for i in idx), None if self.drifted is None else self.drifted[idx],
                       tuple(self.origin[i] for i in idx) if self.origin else ())

    def composition(self) -> dict[str, int]:
        """Source -> number of samples, in order of first appearance."""
        out: dict[str, int] = {}
        for o in self.origin:
            out[o] = out.get(o, 0) + 1
        return out


def concat_samples(name: str, parts: Sequence[Samples]) -> Samples:
    """One :class:`Samples` of ``parts`` in order (drift flags kept only when every part has them)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise UserError(f"{name}: no samples to evaluate on")
    drift = (np.concatenate([p.drifted for p in parts if p.drifted is not None])
             if all(p.drifted is not None for p in parts) else None)
    return Samples(name, {k: np.concatenate([p.inputs[k] for p in parts]) for k in parts[0].inputs},
                   np.concatenate([p.labels for p in parts]), tuple(i for p in parts for i in p.ids), drift,
                   tuple(o for p in parts for o in (p.origin or (p.name,) * len(p))))


@dataclass(frozen=True)
class Worst:
    """Where an artefact is furthest from its reference: output, input (patch id) and class."""

    output: str
    patch: str
    cls: str
    reference: float
    candidate: float
    allowed: float

    def describe(self, what: str) -> str:
        return (f"{what} {self.output!r} of patch {self.patch}, class {self.cls!r}: {self.candidate:.6g} vs "
                f"{self.reference:.6g} (|d| {abs(self.candidate - self.reference):.3g}, allowed {self.allowed:.3g})")


@dataclass(frozen=True)
class ParityResult:
    """One artefact compared with its reference on one set of samples.

    Attributes:
        logit_excess: Max over logits of ``|d| / (atol + rtol * s)``; <= 1 passes.
        worst_logit / worst_prob: Where the logit excess and the probability difference peak.
    """

    artefact: str
    reference: str
    samples: str
    precision: str
    n: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    logit_excess: float
    max_prob_diff: float
    flip_fraction: float
    max_abs_diff: dict[str, float]
    worst_logit: Worst
    worst_prob: Worst
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return (self.logit_excess <= 1.0 and self.max_prob_diff <= self.tolerance.max_prob_diff
                and self.flip_fraction <= self.tolerance.max_flip_fraction)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        tol = self.tolerance
        return (f"{self.artefact} vs {self.reference} on {self.samples} (n={self.n}): "
                f"{self.worst_logit.describe('worst logit')} "
                f"[{self.logit_excess:.2f}x the tolerance {tol.logit_atol:g} + {tol.logit_rtol:g} x |logit|]; "
                f"max |dprob| {self.max_prob_diff:.3g} (tol {tol.max_prob_diff:g}) at patch {self.worst_prob.patch}, "
                f"class {self.worst_prob.cls!r}; decisions differing {self.flip_fraction:.2%} "
                f"(tol {tol.max_flip_fraction:.2%})")


def collect_samples(name: str, sources: Iterable[Any], contract: Contract, limit: int | None = None,
                    seed: int = 0, envelope: Envelope | None = None, origin: str | None = None) -> Samples:
    """Preprocess patches of one or more ``PatchSource`` s (the runtime's preprocessing) into one batch.

    Args:
        name: Label of the set in reports ("synthetic-test", "benv2-sample").
        sources: PatchSources whose classes match the contract.
        contract: Normalisation statistics and band order.
        limit: Keep at most this many samples: a seeded uniform draw across all sources (read in order).
        seed: Seed of that draw.
        envelope: Also record each sample's drift flag against this envelope.
        origin: Source label of every sample (default ``name``).
    """
    from mosaic_edge.data.preprocess import preprocess, stack_bands

    sources = list(sources)
    pairs = [(s, i) for s, src in enumerate(sources) for i in range(len(src))]
    if limit is not None and len(pairs) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False))
        pairs = [pairs[k] for k in keep]
    if not pairs:
        raise UserError(f"{name}: no samples to evaluate on")
    size = (contract.patch_size, contract.patch_size)
    n = len(pairs)
    inputs = {"sar": np.empty((n, len(contract.sar_bands), *size), np.float32),
              "optical": np.empty((n, len(contract.optical_bands), *size), np.float32)}
    labels = np.zeros((n, contract.num_classes), np.float32)
    drift = np.zeros(n, bool) if envelope is not None else None
    ids = []
    for k, (s, i) in enumerate(pairs):
        raw = sources[s].read(i)
        sar = stack_bands(raw.sar, contract.sar_bands, size, raw.id)  # what PatchDataset feeds preprocess
        opt = stack_bands(raw.optical, contract.optical_bands, size, raw.id)
        pre = preprocess(sar, opt, contract)
        inputs["sar"][k], inputs["optical"][k] = pre.sar, pre.optical
        if raw.labels is not None:
            labels[k] = raw.labels
        if drift is not None and envelope is not None:
            drift[k] = envelope.check(sar[None], opt[None]).drifted[0]
        ids.append(raw.id)
    return Samples(name, inputs, labels, tuple(ids), drift, (origin or name,) * n)


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


def _worst(ref: np.ndarray, cand: np.ndarray, score: np.ndarray, output: str, allowed: np.ndarray,
           ids: Sequence[str], classes: Sequence[str]) -> Worst:
    i, c = (int(x) for x in np.unravel_index(int(np.argmax(score)), score.shape))
    return Worst(output, str(ids[i]), str(classes[c]), float(ref[i, c]), float(cand[i, c]), float(allowed[i, c]))


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], contract: Contract,
            precision: str, artefact: str = "candidate", reference_name: str = "torch",
            samples: str = "", ids: Sequence[str] | None = None) -> ParityResult:
    """Compare two output dicts (see the module doc); ``ids`` name the samples in the failure message."""
    if precision not in TOLERANCES:
        raise UserError(f"precision must be one of {tuple(TOLERANCES)}, got {precision!r}")
    missing = [k for k in contract.output_names if k not in candidate or k not in reference]
    if missing:
        raise UserError(f"{artefact}: outputs {missing} missing")
    tol = TOLERANCES[precision]
    n = len(reference["logits"])
    ids = [str(i) for i in ids] if ids is not None else [f"#{i}" for i in range(n)]
    absdiff = {k: np.abs(candidate[k].astype(np.float64) - reference[k]) for k in contract.output_names}
    worst_logit, excess = None, -1.0
    for k in LOGIT_OUTPUTS:
        ref = reference[k].astype(np.float64)
        allowed = tol.logit_atol + tol.logit_rtol * np.abs(ref).max(axis=1, keepdims=True) * np.ones_like(ref)
        ratio = absdiff[k] / allowed
        if float(ratio.max()) > excess:
            excess = float(ratio.max())
            worst_logit = _worst(ref, candidate[k], ratio, k, allowed, ids, contract.classes)
    assert worst_logit is not None
    pdiff = np.abs(sigmoid(candidate["logits"]) - sigmoid(reference["logits"]))
    worst_prob = _worst(sigmoid(reference["logits"]), sigmoid(candidate["logits"]), pdiff, "probability",
                        np.full(pdiff.shape, tol.max_prob_diff), ids, contract.classes)
    flips = contract.decide(candidate["logits"]) != contract.decide(reference["logits"])
    return ParityResult(
        artefact=artefact, reference=reference_name, samples=samples, precision=precision, n=n,
        max_abs_logit_diff=max(float(absdiff[k].max()) for k in LOGIT_OUTPUTS),
        mean_abs_logit_diff=max(float(absdiff[k].mean()) for k in LOGIT_OUTPUTS),
        logit_excess=excess, max_prob_diff=float(pdiff.max()), flip_fraction=float(flips.mean()),
        max_abs_diff={k: float(d.max()) for k, d in absdiff.items()}, worst_logit=worst_logit,
        worst_prob=worst_prob, tolerance=tol)


def check_parity(reference: Mapping[str, np.ndarray], onnx_path: str | Path, samples: Samples,
                 contract: Contract, precision: str, reference_name: str = "torch", session: Any = None
                 ) -> ParityResult:
    """Run ``onnx_path`` (or its open ``session``) on ``samples``, compare with ``reference`` outputs (never
    raises; see ``passed``)."""
    out = run_onnx(session if session is not None else onnx_path, samples.inputs)
    return compare(reference, out, contract, precision, Path(onnx_path).name, reference_name, samples.name,
                   samples.ids)
