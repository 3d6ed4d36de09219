"""Borderline fallback of INT8 answers: which windows a higher-precision artefact re-runs (numpy only).

A window answered by an INT8 artefact is re-run by the fp16 (TensorRT) or fp32 (ONNX Runtime) artefact when

- it is *drifted*: outside the calibration envelope (:mod:`mosaic_edge.envelope`), or
- it is *borderline*: for some class ``c`` its INT8 logit ``z_c`` lies within the margin of that class's
  decision threshold ``t_c``, in LOGIT space: ``|z_c - logit(t_c)| <= margin``.

Why logits: INT8 rounding perturbs the logits about additively (the heads are linear in the quantized
features), whatever value a logit has, so one logit margin is one error bound for every class. A probability
margin ``d`` means a logit margin of about ``d / (t (1 - t))``: 4 d at a threshold of 0.5 but 101 d at 0.01,
and the contract's tuned thresholds span 0.01..0.99, so any single probability margin is far too wide for some
classes or far too narrow for others.

Export picks the margin on validation data (:func:`choose_margin`): the smallest one whose simulated decisions
(re-run windows take the reference's decisions, INT8's elsewhere) agree with fp32 on at least the target share
of (window, class) decisions. The agreement can only grow with the margin (the re-run sets are nested), so
the smallest sufficient margin is the one that re-runs fewest windows. :func:`needs_fallback` is what the
runtime calls per batch: a handful of vectorised operations on ``[n, C]`` logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract, decide
from mosaic_edge.errors import UserError

# The goal: at least 99.5 % of (window, class) decisions as fp32 makes them.
DEFAULT_TARGET_AGREEMENT = 0.995
# Re-run fractions at which report.md tabulates the trade-off (the chosen margin is added as its own row).
TABLE_RERUN_FRACTIONS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FallbackPolicy:
    """When the runtime re-runs an INT8 window with the higher-precision artefact.

    Attributes:
        margin_logit: Re-run when some class's INT8 logit is within this distance of its threshold's logit.
        rerun_drifted: Also re-run windows flagged as drifted by the calibration envelope.
        target_agreement: Agreement with fp32 the margin was chosen for (recorded, not used at runtime).
    """

    margin_logit: float
    rerun_drifted: bool = True
    target_agreement: float = DEFAULT_TARGET_AGREEMENT

    def __post_init__(self) -> None:
        if not np.isfinite(self.margin_logit) or self.margin_logit < 0:
            raise ValueError(f"fallback margin must be a finite logit distance >= 0, got {self.margin_logit}")
        if not 0.0 < self.target_agreement <= 1.0:
            raise ValueError(f"target agreement must be in (0, 1], got {self.target_agreement}")

    def to_dict(self) -> dict[str, Any]:
        return {"margin_logit": self.margin_logit, "margin_space": "logit", "rerun_drifted": self.rerun_drifted,
                "target_agreement": self.target_agreement}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FallbackPolicy:
        if data.get("margin_space", "logit") != "logit":
            raise ValueError(f"fallback margin space {data['margin_space']!r} is not 'logit'")
        return cls(float(data["margin_logit"]), bool(data.get("rerun_drifted", True)),
                   float(data.get("target_agreement", DEFAULT_TARGET_AGREEMENT)))


def _thresholds(contract_or_thresholds: Contract | Sequence[float] | np.ndarray) -> np.ndarray:
    t = contract_or_thresholds.thresholds if isinstance(contract_or_thresholds, Contract) else contract_or_thresholds
    return np.asarray(t, dtype=np.float64)


def threshold_logits(contract_or_thresholds: Contract | Sequence[float] | np.ndarray) -> np.ndarray:
    """float64 [C]: ``logit(t_c) = log(t_c / (1 - t_c))``, where the decision of class ``c`` flips."""
    t = _thresholds(contract_or_thresholds)
    return np.log(t) - np.log1p(-t)


def border_distance(logits: np.ndarray, contract_or_thresholds: Contract | Sequence[float] | np.ndarray
                    ) -> np.ndarray:
    """float64 [n]: per window, the smallest ``|z_c - logit(t_c)|`` over its classes."""
    z = np.asarray(logits)
    if z.ndim != 2:
        raise UserError(f"logits must be [n, C], got shape {z.shape}")
    tau = threshold_logits(contract_or_thresholds)
    if z.shape[1] != tau.size:
        raise UserError(f"logits have {z.shape[1]} classes, the thresholds {tau.size}")
    return np.abs(z - tau).min(axis=1)


def needs_fallback(int8_logits: np.ndarray, drift_flags: np.ndarray | None,
                   contract: Contract | Sequence[float] | np.ndarray, policy: FallbackPolicy) -> np.ndarray:
    """bool [n]: which windows of an INT8 batch the higher-precision artefact must re-run.

    Args:
        int8_logits: [n, C] fused logits of the INT8 runner.
        drift_flags: bool [n] from :meth:`~mosaic_edge.envelope.Envelope.drifted`, or None (no envelope).
        contract: The model's contract (its thresholds), or the thresholds themselves.
        policy: The manifest's policy of the INT8 artefact.
    """
    rerun = border_distance(int8_logits, contract) <= policy.margin_logit
    if policy.rerun_drifted and drift_flags is not None:
        flags = np.asarray(drift_flags, dtype=bool)
        if flags.shape != rerun.shape:
            raise UserError(f"drift flags of shape {flags.shape} for {len(rerun)} windows")
        rerun |= flags
    return rerun


@dataclass(frozen=True)
class TradeoffRow:
    """Simulated outcome of one margin: agreement with fp32 and the share of windows re-run."""

    margin_logit: float
    rerun_fraction: float
    agreement: float

    def to_dict(self) -> dict[str, float]:
        return {"margin_logit": self.margin_logit, "rerun_fraction": self.rerun_fraction,
                "agreement": self.agreement}


@dataclass(frozen=True)
class MarginChoice:
    """What :func:`choose_margin` found: the chosen margin's row, the table and the whole curve."""

    chosen: TradeoffRow
    table: tuple[TradeoffRow, ...]
    curve: tuple[np.ndarray, np.ndarray]  # (rerun fraction, agreement) at every distinct margin, for the plot
    n: int
    drifted_fraction: float
    int8_agreement: float


def simulate(fp32_logits: np.ndarray, int8_logits: np.ndarray, drifted: np.ndarray | None,
             contract: Contract | Sequence[float] | np.ndarray, margin: float,
             rerun_drifted: bool = True) -> TradeoffRow:
    """Agreement with fp32 and re-run share when windows re-run at ``margin`` take fp32's decisions."""
    policy = FallbackPolicy(margin, rerun_drifted)
    rerun = needs_fallback(int8_logits, drifted, contract, policy)
    t = _thresholds(contract)
    wrong = (decide(int8_logits, t) != decide(fp32_logits, t)) & ~rerun[:, None]
    return TradeoffRow(float(margin), float(rerun.mean()), 1.0 - float(wrong.mean()))


def choose_margin(fp32_logits: np.ndarray, int8_logits: np.ndarray, drifted: np.ndarray | None,
                  contract: Contract | Sequence[float] | np.ndarray,
                  target: float = DEFAULT_TARGET_AGREEMENT, rerun_drifted: bool = True) -> MarginChoice:
    """The smallest logit margin reaching ``target`` agreement with fp32 (see the module doc).

    Args:
        fp32_logits / int8_logits: [n, C] fused logits of the same windows.
        drifted: bool [n] drift flags (None: no envelope).
        contract: Contract or thresholds.
        target: Share of (window, class) decisions that must agree with fp32.
    """
    z32, z8 = np.asarray(fp32_logits, np.float64), np.asarray(int8_logits, np.float64)
    if z32.shape != z8.shape or z32.ndim != 2 or len(z32) == 0:
        raise UserError(f"fp32 and INT8 logits must be the same non-empty [n, C], got {z32.shape}, {z8.shape}")
    if not 0.0 < target <= 1.0:
        raise UserError(f"target agreement must be in (0, 1], got {target}")
    t = _thresholds(contract)
    n, c = z32.shape
    wrong = (decide(z8, t) != decide(z32, t)).sum(axis=1)  # disagreements per window
    drift = (np.zeros(n, bool) if drifted is None or not rerun_drifted
             else np.asarray(drifted, dtype=bool))
    dist = border_distance(z8, t)
    # A drifted window is re-run at any margin; the others in order of their distance.
    order = np.argsort(np.where(drift, -1.0, dist), kind="stable")
    d_sorted = np.where(drift, -1.0, dist)[order]
    fixed = np.cumsum(wrong[order])  # disagreements removed when the first k windows are re-run
    remaining = wrong.sum() - np.r_[0, fixed]
    # Candidate k (windows re-run): drift alone, then every distinct distance (ties re-run together).
    n_drift = int(drift.sum())
    ends = np.r_[n_drift, np.flatnonzero(np.diff(d_sorted) != 0) + 1, n]
    ends = np.unique(ends[ends >= n_drift])
    agreement = 1.0 - remaining[ends] / float(n * c)
    margins = np.where(ends > n_drift, d_sorted[np.maximum(ends - 1, 0)], 0.0)
    # margin 0 re-runs windows exactly on a threshold too; count them with the drift-only row
    k = int(np.argmax(agreement >= target - 1e-12))
    chosen = simulate(z32, z8, drift, t, float(margins[k]))
    table = sorted({_row_at(z32, z8, drift, t, dist, f) for f in TABLE_RERUN_FRACTIONS} | {chosen},
                   key=lambda r: (r.rerun_fraction, r.margin_logit))
    return MarginChoice(chosen, tuple(table), (ends / float(n), agreement), n, float(drift.mean()),
                        1.0 - float(wrong.sum()) / float(n * c))


def _row_at(z32: np.ndarray, z8: np.ndarray, drift: np.ndarray, t: np.ndarray, dist: np.ndarray,
            fraction: float) -> TradeoffRow:
    """The row of the smallest margin re-running at least ``fraction`` of the windows."""
    free = np.sort(dist[~drift])
    need = int(np.ceil(fraction * len(dist))) - int(drift.sum())
    margin = 0.0 if need <= 0 or len(free) == 0 else float(free[min(need, len(free)) - 1])
    return simulate(z32, z8, drift, t, margin)
