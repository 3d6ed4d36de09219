"""The MoSAiC dual-encoder model: one encoder per modality, projection heads, multi-label classifiers.

::

    sar [N,2,P,P] --enc_sar--> f_s [N,Fs] --proj_sar--> emb_sar [N,D] (L2-normalised)
                                    |  \\--cls_sar--------------------> logits_sar [N,C]
    optical [N,12,P,P] --enc_opt--> f_o [N,Fo] --proj_optical--> emb_optical [N,D]
                                    |  \\--cls_optical----------------> logits_optical [N,C]
                          concat(f_s, f_o) --cls_fused-------------> logits [N,C]

The per-modality classifiers let the runtime classify a tile from SAR alone when its optical half is missing or
cloud-covered. :meth:`MosaicModel.forward` returns exactly the contract's ``output_names``, in that order, so the
ONNX export can map dict keys to graph outputs one to one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mosaic_edge.contract import OUTPUT_NAMES
from mosaic_edge.train.encoders import create_encoder, list_encoders

ARCHS = tuple(list_encoders())


class ProjectionHead(nn.Module):
    """MLP ``Linear -> ReLU -> Linear``, then L2 normalisation (SimCLR's projection, Chen et al. 2020).

    No BatchNorm: it would couple samples across the batch (and ranks under DDP) and complicate export.
    """

    def __init__(self, in_features: int, hidden: int, embed_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class MosaicModel(nn.Module):
    """Dual-encoder multi-label model; build it with :func:`build_model`.

    Attributes:
        config: Primitive dict that rebuilds the model (``build_model(**config)``); stored in checkpoints.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        embed_dim: int,
        sar_chans: int,
        optical_chans: int,
        proj_hidden: int | None,
    ):
        super().__init__()
        self.enc_sar = create_encoder(arch, sar_chans)
        self.enc_optical = create_encoder(arch, optical_chans)
        fs, fo = self.enc_sar.num_features, self.enc_optical.num_features
        proj_hidden = int(proj_hidden) if proj_hidden else max(fs, embed_dim)
        self.config: dict[str, Any] = {
            "arch": arch,
            "num_classes": num_classes,
            "embed_dim": embed_dim,
            "sar_chans": sar_chans,
            "optical_chans": optical_chans,
            "proj_hidden": proj_hidden,
        }
        self.proj_sar = ProjectionHead(fs, proj_hidden, embed_dim)
        self.proj_optical = ProjectionHead(fo, proj_hidden, embed_dim)
        self.cls_fused = nn.Linear(fs + fo, num_classes)
        self.cls_sar = nn.Linear(fs, num_classes)
        self.cls_optical = nn.Linear(fo, num_classes)

    # Split pieces, used by the training loop (two augmented views) and the linear probe (frozen features).
    def features(self, sar: torch.Tensor, optical: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled encoder features ``(f_sar [N,Fs], f_optical [N,Fo])``."""
        return self.enc_sar(sar), self.enc_optical(optical)

    def heads(self, f_sar: torch.Tensor, f_optical: torch.Tensor) -> dict[str, torch.Tensor]:
        """All outputs from pooled features, keyed and ordered by the contract's ``output_names``."""
        out = {
            "logits": self.cls_fused(torch.cat([f_sar, f_optical], dim=1)),
            "logits_sar": self.cls_sar(f_sar),
            "logits_optical": self.cls_optical(f_optical),
            "emb_sar": self.proj_sar(f_sar),
            "emb_optical": self.proj_optical(f_optical),
        }
        return {name: out[name] for name in OUTPUT_NAMES}

    def forward(self, sar: torch.Tensor, optical: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output dict of ``sar`` [N,sar_chans,P,P] and ``optical`` [N,optical_chans,P,P] (standardised)."""
        return self.heads(*self.features(sar, optical))

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [*self.cls_fused.parameters(), *self.cls_sar.parameters(), *self.cls_optical.parameters()]


def build_model(
    arch: str = "resnet18",
    num_classes: int = 19,
    embed_dim: int = 128,
    sar_chans: int = 2,
    optical_chans: int = 12,
    proj_hidden: int | None = None,
) -> MosaicModel:
    """Build a :class:`MosaicModel`.

    Args:
        arch: Encoder registry name for both modalities (:func:`~.encoders.list_encoders`).
        num_classes: Number of labels C.
        embed_dim: Projection dimension D of ``emb_sar`` / ``emb_optical``.
        sar_chans / optical_chans: Input bands of each modality.
        proj_hidden: Hidden width of the projection MLPs (default: the encoder feature width, at least D).
    """
    if num_classes < 1 or embed_dim < 1:
        raise ValueError(f"num_classes and embed_dim must be >= 1, got {num_classes}, {embed_dim}")
    return MosaicModel(
        arch, int(num_classes), int(embed_dim), int(sar_chans), int(optical_chans), proj_hidden
    )
