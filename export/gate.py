"""The INT8 accuracy gate: macro-mAP drop against fp32 with a paired bootstrap interval, and an honest verdict.

The gate set (validation + test of the export data, topped up with synthetic patches when small; see
:mod:`mosaic_edge.export.pipeline`) is a sample; its mAP drop is an estimate. So the gate reports the paired
bootstrap 95 % interval of the drop (patches resampled with replacement, the same resample for fp32 and INT8)
and decides:

- **failed** when even the interval's low end exceeds the bound (INT8 is worse, whatever the set size), or when
  the set is large enough to judge and the estimate exceeds the bound;
- **passed** when the set is large enough to judge and the interval's high end is within the bound;
- **inconclusive** otherwise: the export goes on, and the report and a warning say the gate could not tell.

"Large enough to judge": at least :data:`GATE_MIN_PATCHES` patches and :data:`GATE_MIN_CLASSES` classes with at
least :data:`GATE_MIN_POSITIVES` positives each. The macro mAP of the gate averages only such classes: the AP of a
class with one or two positives swings by tens of points when a single pair re-ranks.

AP is computed on logits, not probabilities: the ranking is the same, and sigmoid saturates to exactly 1.0 in
float64 above logit ~37, turning a model with large logits into a set of ties.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

# A few hundred patches: below this an mAP difference of a point is within resampling noise.
GATE_MIN_PATCHES = 300
# A class enters the gate's macro mAP with at least this many positives in the gate set...
GATE_MIN_POSITIVES = 10
# ... and the set can be judged only when at least this many classes do.
GATE_MIN_CLASSES = 5
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def weighted_ap(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one class under ``B`` resamplings given as per-sample multiplicities.

    Same definition as :func:`mosaic_edge.metrics.average_precision` (tied scores form one threshold); a
    resampled copy of a patch ties with its original, as it would in a resampled array.

    Args:
        labels: bool [n]. scores: float [n]. weights: [B, n] multiplicities (all ones: the plain AP).

    Returns:
        float64 [B], NaN where a resample holds no positive.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    y, s, w = labels[order].astype(np.float64), scores[order], weights[:, order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(w * y, axis=1)[:, last]
    cnt = np.cumsum(w, axis=1)[:, last]
    npos = tp[:, -1:]
    precision = np.divide(tp, cnt, out=np.zeros_like(tp), where=cnt > 0)
    recall = np.divide(tp, npos, out=np.zeros_like(tp), where=npos > 0)
    ap = np.sum(np.diff(recall, prepend=0.0, axis=1) * precision, axis=1)
    ap[npos[:, 0] == 0] = np.nan
    return ap


def _macro(labels: np.ndarray, logits: np.ndarray, classes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B] macro mAP over ``classes`` (NaN-skipping) under each resampling; all NaN without classes."""
    if len(classes) == 0:
        return np.full(len(weights), np.nan)
    aps = np.stack([weighted_ap(labels[:, c] > 0.5, logits[:, c], weights) for c in classes], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any positive: NaN, skipped
        return np.asarray(np.nanmean(aps, axis=1))


@dataclass(frozen=True)
class GateSet:
    """The gate set's labels, the classes its macro mAP averages, and its bootstrap resamplings."""

    labels: np.ndarray
    classes: np.ndarray
    weights: np.ndarray  # [B, n] multiplicities; row 0 is all ones (the set itself)

    @property
    def n(self) -> int:
        return int(len(self.labels))

    @property
    def judgeable(self) -> bool:
        return self.n >= GATE_MIN_PATCHES and len(self.classes) >= GATE_MIN_CLASSES

    def why_not_judgeable(self) -> str:
        return (f"the gate set has {self.n} patches (judged from {GATE_MIN_PATCHES}) and {len(self.classes)} "
                f"classes with >= {GATE_MIN_POSITIVES} positives (judged from {GATE_MIN_CLASSES})")


def gate_set(labels: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> GateSet:
    """Gate classes and seeded paired resamplings of a labelled set."""
    labels = np.asarray(labels)
    n = len(labels)
    classes = np.flatnonzero((labels > 0.5).sum(axis=0) >= GATE_MIN_POSITIVES)
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones((1, n), np.int32),
                         rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.int32)])
    return GateSet(labels, classes, weights)


def resampled_macro(gs: GateSet, logits: np.ndarray) -> np.ndarray:
    """[1 + B] macro mAP of ``logits`` over the gate classes: on the set itself, then on each resample."""
    return _macro(gs.labels, np.asarray(logits), gs.classes, gs.weights)


def judge(gs: GateSet, reference: np.ndarray, candidate_logits: np.ndarray, bound_pts: float) -> dict[str, Any]:
    """Verdict of one INT8 artefact against the fp32 reference (see the module doc).

    Args:
        gs: The gate set. reference: :func:`resampled_macro` of the fp32 logits.
        candidate_logits: [n, C] logits of the INT8 artefact. bound_pts: Largest accepted drop.

    Returns:
        ``{"verdict", "reason", "drop_pts", "ci95_pts", "gate_classes", "n"}`` (drops in percentage points,
        positive = INT8 worse).
    """
    row: dict[str, Any] = {"n": gs.n, "gate_classes": int(len(gs.classes))}
    if len(gs.classes) == 0:
        return {**row, "verdict": "inconclusive", "drop_pts": None, "ci95_pts": None,
                "reason": f"too small to judge: no class has >= {GATE_MIN_POSITIVES} positives in the gate set"}
    drops = 100.0 * (reference - resampled_macro(gs, candidate_logits))
    drop = float(drops[0])
    lo, hi = (float(x) for x in np.nanquantile(drops[1:], [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]))
    row.update(drop_pts=drop, ci95_pts=[lo, hi])
    if lo > bound_pts or (gs.judgeable and drop > bound_pts):
        verdict, reason = "failed", (f"macro mAP drop {drop:.2f} pts (95% CI {lo:.2f}..{hi:.2f}) exceeds "
                                     f"{bound_pts:g} pts")
    elif gs.judgeable and hi <= bound_pts:
        verdict, reason = "passed", f"95% CI of the drop {lo:.2f}..{hi:.2f} pts lies within {bound_pts:g} pts"
    elif gs.judgeable:
        verdict, reason = "inconclusive", (f"drop {drop:.2f} pts is within {bound_pts:g} pts but its 95% CI "
                                           f"reaches {hi:.2f}")
    else:
        verdict, reason = "inconclusive", f"too small to judge: {gs.why_not_judgeable()}"
    return {**row, "verdict": verdict, "reason": reason}
