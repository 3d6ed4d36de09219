"""Multi-label supervised contrast with Jaccard-weighted positives, over both modalities' embeddings.

Supervised contrastive learning (Khosla et al. 2020, arXiv 2004.11362) treats same-class samples as positives;
with multi-label targets we weight each pair by the overlap of their label sets, the Jaccard index of the
multi-hot vectors (as in multi-label SupCon variants, e.g. Zhang & Wu 2022 / MulSupCon 2024)::

    w_ij = |y_i AND y_j| / |y_i OR y_j|        (0 when both label sets are empty)

Inputs are the M labelled patches embedded by V views (S1 and S2 embeddings, possibly of two augmentations),
stacked as ``z`` [V*M, D] with labels ``y`` [V*M, C] repeated accordingly. With ``s_ik = z_i . z_k / tau``::

    log p_ij = s_ij - log sum_{k != i} exp(s_ik)
    L_i      = - sum_{j != i} w_ij log p_ij / sum_{j != i} w_ij
    L        = mean of L_i over anchors with sum_{j != i} w_ij > 0

The S1 and S2 embeddings of one patch have w = 1, so the cross-modal pair is always a positive. Known answers:
all K = VM rows with the same labels and identical embeddings -> ``log(K - 1)``; distinct one-hot labels, the V
views of a patch identical and different patches orthogonal -> ``log(V - 1 + (K - V) exp(-1/tau))``. A batch
without a valid anchor gives 0 (still attached to the graph, so DDP sees every parameter used).

The loss is bounded below by the entropy of each anchor's normalised weights ``w_ij / sum_j w_ij`` (reached when
``p_ij`` is proportional to ``w_ij``), not by 0: with many partially overlapping label sets in a batch that floor
is high (``benchmarks/RESULTS.md``, "SupCon term during pre-training").
"""

from __future__ import annotations

import torch
from torch import nn


def jaccard_matrix(y: torch.Tensor) -> torch.Tensor:
    """Pairwise Jaccard index [M, M] of multi-hot rows ``y`` [M, C] (0 where the union is empty)."""
    y = (y > 0.5).float()
    inter = y @ y.T
    size = y.sum(dim=1)
    union = size[:, None] + size[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def multilabel_supcon(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Jaccard-weighted multi-label SupCon loss (scalar) of embeddings ``z`` [K, D] with labels ``y`` [K, C]."""
    if z.ndim != 2 or y.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"need z [K, D] and y [K, C], got {tuple(z.shape)} and {tuple(y.shape)}")
    k = z.shape[0]
    if k < 2:
        return z.sum() * 0.0
    z = z.float()
    eye = torch.eye(k, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_p = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    w = jaccard_matrix(y).masked_fill(eye, 0.0)
    wsum = w.sum(dim=1)
    valid = wsum > 0
    if not bool(valid.any()):
        return z.sum() * 0.0
    per_anchor = -(w * log_p.masked_fill(eye, 0.0)).sum(dim=1)[valid] / wsum[valid]
    return per_anchor.mean()


class MultiLabelSupConLoss(nn.Module):
    """Module form of :func:`multilabel_supcon`; ``temperature`` must be > 0."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return multilabel_supcon(z, y, self.temperature)
