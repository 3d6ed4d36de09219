"""Inter-modality contrast: symmetric InfoNCE between S1 and S2 embeddings (CLIP, Radford et al. 2021).

Given ``a`` [N, D] (SAR) and ``b`` [N, D] (optical) embeddings of the same N patches, row i of each being one
place, and ``s_ij = a_i . b_j / tau``::

    L = 1/2 * ( 1/N sum_i -log softmax_j(s_ij)[i]  +  1/N sum_j -log softmax_i(s_ij)[j] )

i.e. cross-entropy of the [N, N] logit matrix against the diagonal, in both directions. Known answers: all rows
identical -> ``log N``; matching pairs identical and other pairs orthogonal -> ``log(1 + (N - 1) exp(-1/tau))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def symmetric_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (scalar) between paired rows of ``a`` and ``b`` [N, D]."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings must both be [N, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = a.float() @ b.float().T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class InterModalInfoNCE(nn.Module):
    """Module form of :func:`symmetric_infonce`; ``temperature`` must be > 0."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return symmetric_infonce(a, b, self.temperature)
