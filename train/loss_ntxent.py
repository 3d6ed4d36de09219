"""Intra-modality contrast: NT-Xent over two augmented views (SimCLR, Chen et al. 2020, arXiv 2002.05709).

Given two views ``z1, z2`` [N, D] of the same N patches of one modality (L2-normalised rows), stack
``z = [z1; z2]`` [2N, D], ``s_ik = z_i . z_k / tau`` and let ``p(i) = (i + N) mod 2N`` be the other view of i::

    L = 1/(2N) * sum_i -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) )

Known answers: all 2N embeddings identical -> ``log(2N - 1)``; views identical and different patches orthogonal
-> ``log(1 + (2N - 2) * exp(-1/tau))``. MoSAiC applies it separately to S1 and to S2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss (scalar) of two views ``z1, z2`` [N, D], N >= 1; rows are used as given (normalise first)."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"views must both be [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0).float()
    sim = z @ z.T / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))  # k != i in the denominator
    target = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(sim, target)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent`; ``temperature`` must be > 0."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature)
