"""mosaic_edge.metrics against slow references written from the definitions, scipy and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mosaic_edge.metrics import average_precision, f1_scores, mean_average_precision, silhouette_score


def _ap_reference(y, s):
    """AP = sum_t (R_t - R_{t-1}) P_t over distinct thresholds t, descending; loops, no vectorisation."""
    y, s = list(y), list(s)
    n_pos = sum(y)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        chosen = [yi for yi, si in zip(y, s, strict=False) if si >= t]
        tp = sum(chosen)
        recall = tp / n_pos
        ap += (recall - prev_recall) * tp / len(chosen)
        prev_recall = recall
    return ap


def test_known_example():
    # The classic example of scikit-learn's documentation: 0.8333.
    assert average_precision(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.3).astype(int)
    y[0] = 1
    s = rng.integers(0, 8, 60).astype(float)  # many ties
    assert average_precision(y, s) == pytest.approx(_ap_reference(y, s), abs=1e-12)


def test_closed_forms():
    n, n_pos = 20, 4
    y = np.r_[np.zeros(n - n_pos), np.ones(n_pos)]
    assert average_precision(y, np.arange(n)) == pytest.approx(1.0)  # perfect ranking
    worst = np.mean([k / (n - n_pos + k) for k in range(1, n_pos + 1)])
    assert average_precision(y, -np.arange(n)) == pytest.approx(worst)  # positives ranked last
    assert average_precision(y, np.zeros(n)) == pytest.approx(n_pos / n)  # all tied: prevalence
    assert np.isnan(average_precision(np.zeros(5), np.arange(5)))


def test_macro_and_micro_map():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 4)) < 0.4).astype(float)
    y[:, 3] = 0  # a class without positives is skipped by macro
    s = y + rng.normal(0, 0.8, y.shape)
    per_class = average_precision(y, s)
    assert per_class.shape == (4,) and np.isnan(per_class[3])
    assert mean_average_precision(y, s) == pytest.approx(
        np.mean([_ap_reference(y[:, c], s[:, c]) for c in range(3)])
    )
    assert mean_average_precision(y, s, "micro") == pytest.approx(_ap_reference(y.ravel(), s.ravel()))
    with pytest.raises(ValueError):
        mean_average_precision(y, s[:, :3])


def test_f1_at_thresholds():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.3], [0.1, 0.1]])
    out = f1_scores(y, p, 0.5)
    # class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: tp=1 fp=0 fn=1 -> 2/3; micro: tp=2 fp=1 fn=2 -> 4/7.
    np.testing.assert_allclose(out["per_class"], [0.5, 2 / 3])
    assert out["macro"] == pytest.approx((0.5 + 2 / 3) / 2) and out["micro"] == pytest.approx(4 / 7)
    per_class = f1_scores(y, p, [0.3, 0.25])
    np.testing.assert_allclose(per_class["per_class"], [0.8, 1.0])


def _silhouette_reference(x, labels):
    d = cdist(x, x, metric="cosine")
    out = []
    for i in range(len(x)):
        same = [j for j in range(len(x)) if labels[j] == labels[i] and j != i]
        if not same:
            out.append(0.0)
            continue
        a = np.mean(d[i, same])
        b = min(np.mean(d[i, labels == c]) for c in set(labels) if c != labels[i])
        out.append((b - a) / max(a, b))
    return float(np.mean(out))


def test_silhouette_matches_scipy_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5))
    labels = rng.integers(0, 3, 30)
    labels[-1] = 7  # a singleton cluster scores 0
    assert silhouette_score(x, labels) == pytest.approx(_silhouette_reference(x, labels), abs=1e-10)


def test_silhouette_known_answers():
    x = np.array([[1, 0], [2, 0], [0, 1], [0, 3]], float)
    assert silhouette_score(x, np.array([0, 0, 1, 1])) == pytest.approx(1.0)  # tight, orthogonal clusters
    with pytest.raises(ValueError):
        silhouette_score(x, np.zeros(4))
