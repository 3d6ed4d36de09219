"""Multi-label evaluation metrics (numpy only; used by training, export parity reports and benchmarks).

- :func:`average_precision`: area under the precision-recall step curve, ``AP = sum_n (R_n - R_{n-1}) P_n``
  over the distinct score thresholds in decreasing order (tied scores form one threshold) — the definition
  used by scikit-learn's ``average_precision_score`` and by the BigEarthNet literature's mAP.
- :func:`mean_average_precision`: macro (mean of per-class AP over classes with at least one positive) or
  micro (AP of all (sample, class) pairs pooled).
- :func:`f1_scores`: per-class, macro and micro F1 at per-class thresholds.
- :func:`silhouette_score`: mean silhouette ``(b - a) / max(a, b)`` of embeddings under cosine distance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _binary_ap(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    tp = np.cumsum(y)
    # Last index of each group of tied scores: one threshold per distinct score.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = tp[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float | np.ndarray:
    """Average precision of binary labels ``y_true`` ranked by ``scores``.

    Args:
        y_true: [N] or [N, C] of 0/1.
        scores: Same shape; higher means more likely positive (logits or probabilities).

    Returns:
        A float for 1-D input, a float64 [C] array for 2-D input; NaN for a class without positives.
    """
    y, s = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"y_true shape {y.shape} and scores shape {s.shape} differ")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    y = (y > 0.5).astype(np.float64)
    if y.ndim == 1:
        return _binary_ap(y, s)
    if y.ndim != 2:
        raise ValueError(f"expected [N] or [N, C], got shape {y.shape}")
    return np.array([_binary_ap(y[:, c], s[:, c]) for c in range(y.shape[1])])


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray, average: str = "macro") -> float:
    """Macro or micro mAP of [N, C] multi-label predictions (macro skips classes without positives)."""
    y, s = np.asarray(y_true), np.asarray(scores)
    if average == "macro":
        ap = average_precision(y, s)
        ap = np.asarray(ap)[~np.isnan(ap)]
        return float(ap.mean()) if ap.size else float("nan")
    if average == "micro":
        return float(average_precision(y.ravel(), s.ravel()))
    raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")


def f1_scores(
    y_true: np.ndarray, probs: np.ndarray, thresholds: float | Sequence[float] | np.ndarray = 0.5
) -> dict[str, float | np.ndarray]:
    """F1 of [N, C] predictions ``probs >= threshold`` (scalar or per-class thresholds).

    Returns:
        ``{"per_class": [C] (NaN where a class has no positives and no predictions), "macro": mean over
        classes with a defined F1, "micro": pooled F1}``.
    """
    y = np.asarray(y_true) > 0.5
    pred = np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)
    if y.shape != pred.shape:
        raise ValueError(f"y_true shape {y.shape} and probs shape {pred.shape} differ")
    tp = (y & pred).sum(0).astype(np.float64)
    fp = (~y & pred).sum(0).astype(np.float64)
    fn = (y & ~pred).sum(0).astype(np.float64)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denom > 0, 2 * tp / denom, np.nan)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    defined = per_class[~np.isnan(per_class)]
    return {
        "per_class": per_class,
        "macro": float(defined.mean()) if defined.size else float("nan"),
        "micro": float(2 * tp.sum() / micro_denom) if micro_denom > 0 else float("nan"),
    }


def silhouette_score(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient under cosine distance ``1 - cos(u, v)``.

    Samples in singleton clusters score 0 (Rousseeuw 1987, as scikit-learn). Needs 2 <= #clusters < N.
    Memory is O(N^2); subsample large sets.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"expected embeddings [N, D] and labels [N], got {x.shape} and {labels.shape}")
    uniq, lab = np.unique(labels, return_inverse=True)
    n, k = x.shape[0], len(uniq)
    if not 2 <= k < n:
        raise ValueError(f"silhouette needs 2 <= number of clusters ({k}) < number of samples ({n})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.where(norms > 0, norms, 1.0)
    dist = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    onehot = np.eye(k)[lab]  # [N, K]
    sums = dist @ onehot  # distance of each sample to all members of each cluster
    sizes = onehot.sum(0)
    own = sizes[lab]
    a = sums[np.arange(n), lab] / np.maximum(own - 1, 1)
    others = sums / sizes
    others[np.arange(n), lab] = np.inf
    b = others.min(1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())
