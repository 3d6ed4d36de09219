"""Batch augmentations for SAR/optical pairs, on the training device.

Spatial transforms (random crop-and-resize, horizontal flip, 90-degree rotations) are drawn once per patch and
applied *identically* to its S1 and S2 halves with one ``affine_grid`` / ``grid_sample``, so the two modalities
stay co-registered (the inter-modality loss relies on it). Then modality-specific photometric noise:

- S1: multiplicative speckle. Backscatter is in dB, so an L-look Gamma(L, 1/L) intensity factor becomes an
  additive ``10 log10(g)`` term (drawn from a moment-matched Gaussian), divided by the contract's per-band std
  because inputs are standardised.
- S2: per-band gain ``U(1-g, 1+g)`` on reflectance (``x' = x g + mean (g - 1) / std`` in standardised units), and
  cloud-like occlusion: a smooth random blob (low-resolution noise, bilinearly upsampled, thresholded) replaced
  by bright, flat cloud reflectance.

Randomness comes from an explicit ``torch.Generator`` the caller seeds per step, so a resumed run draws exactly
the same augmentations (bit-identical continuation). :data:`GEOMETRIC_AUGMENT` (flips and 90-degree rotations
only) is what the classifier-only training uses: the crops and photometric noise serve the contrastive views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mosaic_edge.contract import Contract

# Reflectance x 1e4 of a thick cloud: bright and nearly flat across the S2 bands (L2A clouds sit ~0.4-0.8).
CLOUD_REFLECTANCE = 6000.0


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; set a probability to 0 to switch a transform off."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    flip_p: float = 0.5
    rot90: bool = True
    speckle_looks: float = 4.0
    speckle_p: float = 0.8
    gain: float = 0.1
    cloud_p: float = 0.3
    cloud_cover: tuple[float, float] = (0.1, 0.4)


# Geometry only, whole patches: for BCE training (phase 3, the supervised baseline) the contrastive crops and
# photometric noise only add label noise (a crop can drop a 3 %-area class that is still labelled).
GEOMETRIC_AUGMENT = AugmentConfig(crop_scale=(1.0, 1.0), speckle_p=0.0, gain=0.0, cloud_p=0.0)


def _rand(n: int, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (hi - lo) + lo


def spatial_theta(n: int, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-sample affine [n, 2, 3] (output -> input coords) of crop, flip and rot90."""
    dev = g.device
    scale = _rand(n, g, *cfg.crop_scale).sqrt()  # crop area fraction -> side fraction
    tx = (_rand(n, g) * 2 - 1) * (1 - scale)
    ty = (_rand(n, g) * 2 - 1) * (1 - scale)
    k = torch.randint(0, 4 if cfg.rot90 else 1, (n,), generator=g, device=dev)
    flip = torch.where(_rand(n, g) < cfg.flip_p, -1.0, 1.0)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=dev)[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=dev)[k]
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = cos * scale * flip
    theta[:, 0, 1] = -sin * scale
    theta[:, 1, 0] = sin * scale * flip
    theta[:, 1, 1] = cos * scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta


def _cloud_mask(n: int, size: int, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Smooth random blobs [n, 1, size, size] in {0, 1}, one per patch with probability ``cloud_p``.

    The field is standardised per patch and cut at the normal quantile of the drawn cover, which gives roughly
    that cover fraction without a per-patch sort.
    """
    dev = g.device
    noise = torch.rand(n, 1, 4, 4, generator=g, device=dev)
    smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    smooth = (smooth - smooth.mean((2, 3), keepdim=True)) / smooth.std((2, 3), keepdim=True).clamp_min(1e-6)
    cover = _rand(n, g, *cfg.cloud_cover).clamp(1e-3, 1 - 1e-3)
    thresh = torch.special.ndtri(1 - cover)
    mask = (smooth > thresh.view(n, 1, 1, 1)).float()
    return mask * (_rand(n, g) < cfg.cloud_p).float().view(n, 1, 1, 1)


def augment_pair(
    sar: torch.Tensor,
    optical: torch.Tensor,
    contract: Contract,
    cfg: AugmentConfig,
    g: torch.Generator,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view of a standardised batch ``sar`` [n,2,P,P], ``optical`` [n,12,P,P].

    The crop is resampled to ``size`` x ``size`` (default P): training on smaller crops is the usual way to cut
    the cost of contrastive pre-training (SimCLR trains at 224 px crops of larger images).
    """
    n, _, h, w = sar.shape
    if size:
        h = w = int(size)
    dev, dt = sar.device, sar.dtype
    theta = spatial_theta(n, cfg, g).to(dev, dt)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    sar = F.grid_sample(sar, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    optical = F.grid_sample(optical, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    if cfg.speckle_p > 0:
        # 10 log10 of Gamma(L, 1/L) has mean 10/ln10 (digamma(L) - ln L) and variance (10/ln10)^2 trigamma(L);
        # a Gaussian with those moments is close for L >= 3 and ~20x cheaper to draw than gamma variates.
        L = torch.tensor(float(cfg.speckle_looks))
        k = 10.0 / math.log(10.0)
        mu = float(k * (torch.special.digamma(L) - torch.log(L)))
        sd = float(k * torch.special.polygamma(1, L).sqrt())
        db = (mu + sd * torch.randn(sar.shape, generator=g, device=g.device)).to(dev, dt)
        std = torch.tensor(contract.sar_std, device=dev, dtype=dt).view(1, -1, 1, 1)
        on = (_rand(n, g) < cfg.speckle_p).to(dev, dt).view(n, 1, 1, 1)
        sar = sar + on * db / std

    mean = torch.tensor(contract.optical_mean, device=dev, dtype=dt).view(1, -1, 1, 1)
    std = torch.tensor(contract.optical_std, device=dev, dtype=dt).view(1, -1, 1, 1)
    if cfg.gain > 0:
        gain = 1 + (torch.rand(n, optical.shape[1], generator=g, device=g.device) * 2 - 1) * cfg.gain
        gain = gain.to(dev, dt).view(n, -1, 1, 1)
        optical = optical * gain + mean * (gain - 1) / std
    if cfg.cloud_p > 0:
        mask = _cloud_mask(n, h, cfg, g).to(dev, dt) if h == w else torch.zeros(n, 1, h, w, device=dev)
        cloud = (CLOUD_REFLECTANCE - mean) / std
        optical = optical * (1 - mask) + cloud * mask
    return sar.contiguous(), optical.contiguous()
