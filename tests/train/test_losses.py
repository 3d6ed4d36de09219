"""MoSAiC loss terms vs slow NumPy references written from the docstring formulas, plus known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mosaic_edge.train.loss_infonce import InterModalInfoNCE, symmetric_infonce
from mosaic_edge.train.loss_mlsupcon import MultiLabelSupConLoss, jaccard_matrix, multilabel_supcon
from mosaic_edge.train.loss_ntxent import NTXentLoss, nt_xent
from mosaic_edge.train.objective import LossWeights, mosaic_loss


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    z = np.concatenate([z1, z2])
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        den = sum(math.exp(z[i] @ z[k] / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[p] / tau) / den)
    return total / n2


def ref_infonce(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    n = len(a)
    s = a @ b.T / tau
    ab = sum(-math.log(math.exp(s[i, i]) / sum(math.exp(s[i, j]) for j in range(n))) for i in range(n)) / n
    ba = sum(-math.log(math.exp(s[j, j]) / sum(math.exp(s[i, j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (ab + ba)


def ref_supcon(z: np.ndarray, y: np.ndarray, tau: float) -> float:
    k = len(z)
    losses = []
    for i in range(k):
        den = sum(math.exp(z[i] @ z[m] / tau) for m in range(k) if m != i)
        num, wsum = 0.0, 0.0
        for j in range(k):
            if j == i:
                continue
            inter = np.sum((y[i] > 0) & (y[j] > 0))
            union = np.sum((y[i] > 0) | (y[j] > 0))
            w = inter / union if union else 0.0
            num += w * math.log(math.exp(z[i] @ z[j] / tau) / den)
            wsum += w
        if wsum > 0:
            losses.append(-num / wsum)
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_nt_xent_matches_numpy(tau: float) -> None:
    rng = np.random.default_rng(0)
    z1, z2 = _unit(rng, 6, 5), _unit(rng, 6, 5)
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), tau).item()
    assert got == pytest.approx(ref_nt_xent(z1, z2, tau), rel=1e-5)


def test_nt_xent_known_answers() -> None:
    n, tau = 5, 0.2
    same = torch.ones(n, 3) / math.sqrt(3)
    assert nt_xent(same, same, tau).item() == pytest.approx(math.log(2 * n - 1), rel=1e-5)
    eye = torch.eye(n)
    assert nt_xent(eye, eye, tau).item() == pytest.approx(
        math.log(1 + (2 * n - 2) * math.exp(-1 / tau)), rel=1e-5
    )


@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_infonce_matches_numpy(tau: float) -> None:
    rng = np.random.default_rng(1)
    a, b = _unit(rng, 7, 4), _unit(rng, 7, 4)
    got = symmetric_infonce(torch.tensor(a), torch.tensor(b), tau).item()
    assert got == pytest.approx(ref_infonce(a, b, tau), rel=1e-5)
    # asymmetric inputs: swapping the modalities gives the same symmetric loss
    assert symmetric_infonce(torch.tensor(b), torch.tensor(a), tau).item() == pytest.approx(got, rel=1e-6)


def test_infonce_known_answers() -> None:
    n, tau = 6, 0.5
    same = torch.ones(n, 2) / math.sqrt(2)
    assert symmetric_infonce(same, same, tau).item() == pytest.approx(math.log(n), rel=1e-5)
    eye = torch.eye(n)
    want = math.log(1 + (n - 1) * math.exp(-1 / tau))
    assert symmetric_infonce(eye, eye, tau).item() == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supcon_matches_numpy(tau: float) -> None:
    rng = np.random.default_rng(2)
    z = _unit(rng, 10, 6)
    y = (rng.random((10, 5)) < 0.35).astype(np.float32)
    y[3] = 0  # an anchor with no labels (no positives) is skipped
    got = multilabel_supcon(torch.tensor(z), torch.tensor(y), tau).item()
    assert got == pytest.approx(ref_supcon(z, y, tau), rel=1e-5)


def test_supcon_known_answers() -> None:
    tau, k = 0.2, 6
    same = torch.ones(k, 3) / math.sqrt(3)
    y = torch.ones(k, 4)
    assert multilabel_supcon(same, y, tau).item() == pytest.approx(math.log(k - 1), rel=1e-5)
    # 3 patches x V=2 views: one-hot distinct labels, views identical, patches orthogonal
    v, m = 2, 3
    z = torch.eye(m).repeat(v, 1)
    y = torch.eye(m).repeat(v, 1)
    want = math.log(v - 1 + (v * m - v) * math.exp(-1 / tau))
    assert multilabel_supcon(z, y, tau).item() == pytest.approx(want, rel=1e-4)
    # no positives anywhere -> 0, still differentiable
    zz = torch.randn(4, 3, requires_grad=True)
    out = multilabel_supcon(F.normalize(zz, dim=1), torch.zeros(4, 2), tau)
    out.backward()
    assert out.item() == 0.0 and zz.grad is not None


def test_jaccard_matrix() -> None:
    y = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32)
    j = jaccard_matrix(y)
    assert j[0, 1].item() == pytest.approx(0.5) and j[0, 0].item() == 1.0 and j[2, 2].item() == 0.0


@pytest.mark.parametrize("cls", [NTXentLoss, InterModalInfoNCE, MultiLabelSupConLoss])
def test_temperature_validated(cls: type) -> None:
    with pytest.raises(ValueError):
        cls(temperature=0.0)
    with pytest.raises(ValueError):
        LossWeights(temperature=-1.0)
    with pytest.raises(ValueError):
        LossWeights(l_sup=-0.5)


def test_mosaic_loss_combines_terms() -> None:
    rng = np.random.default_rng(3)
    n, c = 8, 4
    views = [
        {
            "emb_sar": torch.tensor(_unit(rng, n, 5)),
            "emb_optical": torch.tensor(_unit(rng, n, 5)),
            "logits": torch.zeros(n, c),
            "logits_sar": torch.zeros(n, c),
            "logits_optical": torch.zeros(n, c),
        }
        for _ in range(2)
    ]
    labels = torch.tensor((rng.random((n, c)) < 0.5).astype(np.float32))
    labelled = torch.tensor([True, False] * (n // 2))
    w = LossWeights(l_intra=0.5, l_inter=2.0, l_sup=0.25, temperature=0.3)
    total, terms = mosaic_loss(views[0], views[1], labels, labelled, w)
    v1, v2 = [{k: t.numpy() for k, t in v.items()} for v in views]
    lab = labelled.numpy()
    zsup = np.concatenate(
        [v1["emb_sar"][lab], v1["emb_optical"][lab], v2["emb_sar"][lab], v2["emb_optical"][lab]]
    )
    want = (
        0.5
        * (
            ref_nt_xent(v1["emb_sar"], v2["emb_sar"], 0.3)
            + ref_nt_xent(v1["emb_optical"], v2["emb_optical"], 0.3)
        )
        + 2.0
        * 0.5
        * (
            ref_infonce(v1["emb_sar"], v1["emb_optical"], 0.3)
            + ref_infonce(v2["emb_sar"], v2["emb_optical"], 0.3)
        )
        + 0.25 * ref_supcon(zsup, np.tile(labels.numpy()[lab], (4, 1)), 0.3)
    )
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert set(terms) == {"s1", "s2", "inter", "sup", "total"}
