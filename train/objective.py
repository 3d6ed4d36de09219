"""The MoSAiC objective: intra-modality + inter-modality + multi-label supervised contrast (+ optional BCE).

::

    total = l_intra * (L_s1 + L_s2) + l_inter * L_inter + l_sup * L_mlsup  [+ l_bce * BCE]

with, for two augmented views v1, v2 of a batch (embeddings [N, D], L2-normalised):

- ``L_s1 = nt_xent(sar_v1, sar_v2)``, ``L_s2 = nt_xent(opt_v1, opt_v2)``  (:mod:`.loss_ntxent`);
- ``L_inter = (infonce(sar_v1, opt_v1) + infonce(sar_v2, opt_v2)) / 2``  (:mod:`.loss_infonce`);
- ``L_mlsup = mlsupcon([sar_v1; opt_v1; sar_v2; opt_v2], labels x 4)`` over labelled patches only
  (:mod:`.loss_mlsupcon`);
- ``BCE``: mean of the fused, SAR-only and optical-only classifiers' BCE on labelled patches of view 1 (only in
  the ``joint`` classifier mode, or alone for the supervised baseline, which needs no second view).

Under DDP every embedding is gathered across ranks with gradients first (:func:`.distributed.gather_with_grad`)
so negatives span the global batch. A weight of 0 skips its term entirely. Unlabelled rows enter only the
self-supervised terms; their labels are never read (they are zeros anyway, see
:class:`~mosaic_edge.data.base.PatchDataset`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mosaic_edge.train.distributed import gather_no_grad, gather_with_grad
from mosaic_edge.train.loss_infonce import symmetric_infonce
from mosaic_edge.train.loss_mlsupcon import multilabel_supcon
from mosaic_edge.train.loss_ntxent import nt_xent


@dataclass(frozen=True)
class LossWeights:
    """Weights of the objective's terms and the shared temperature (validated: weights >= 0, tau > 0); the
    defaults are :class:`~.config.TrainConfig`'s."""

    l_intra: float = 1.0
    l_inter: float = 1.0
    l_sup: float = 1.0
    l_bce: float = 0.0
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("l_intra", "l_inter", "l_sup", "l_bce"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def contrastive(self) -> bool:
        return self.l_intra > 0 or self.l_inter > 0 or self.l_sup > 0


HEADS = ("logits", "logits_sar", "logits_optical")


def bce_terms(out: dict[str, torch.Tensor], labels: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE of the three classifiers (fused, SAR-only, optical-only) over labelled rows (all rows when
    ``labelled`` is None); 0, attached to the graph, when none is labelled."""
    if labelled is None:
        return torch.stack([F.binary_cross_entropy_with_logits(out[k].float(), labels) for k in HEADS]).mean()
    if not bool(labelled.any()):
        return torch.stack([out[k].sum() for k in HEADS]).sum() * 0.0
    y = labels[labelled]
    return torch.stack(
        [F.binary_cross_entropy_with_logits(out[k][labelled].float(), y) for k in HEADS]
    ).mean()


def mosaic_loss(
    v1: dict[str, torch.Tensor],
    v2: dict[str, torch.Tensor] | None,
    labels: torch.Tensor,
    labelled: torch.Tensor,
    w: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total objective for two views' model outputs; returns ``(total, {term: detached 0-d tensor})``.

    Args:
        v1, v2: Model output dicts (``emb_sar``, ``emb_optical`` [n, D], logits [n, C]) of the two views; ``v2``
            may be None when no contrastive term is on.
        labels: float multi-hot [n, C]. labelled: bool [n] (False rows feed only the self-supervised terms).
        w: Term weights and temperature.

    The terms stay on the device (no host synchronisation per step); convert them when logging.
    """
    tau = w.temperature
    # Zero attached to every output, so DDP sees all parameters used even when some terms are switched off.
    total = torch.stack([t.sum() for t in v1.values()]).sum() * 0.0
    terms: dict[str, torch.Tensor] = {}
    if w.contrastive:
        if v2 is None:
            raise ValueError("the contrastive terms need two views")
        s1, s2 = gather_with_grad(v1["emb_sar"]), gather_with_grad(v2["emb_sar"])
        o1, o2 = gather_with_grad(v1["emb_optical"]), gather_with_grad(v2["emb_optical"])
    if w.l_intra > 0:
        ls1, ls2 = nt_xent(s1, s2, tau), nt_xent(o1, o2, tau)
        total = total + w.l_intra * (ls1 + ls2)
        terms.update(s1=ls1.detach(), s2=ls2.detach())
    if w.l_inter > 0:
        li = 0.5 * (symmetric_infonce(s1, o1, tau) + symmetric_infonce(s2, o2, tau))
        total = total + w.l_inter * li
        terms["inter"] = li.detach()
    if w.l_sup > 0:
        mask = gather_no_grad(labelled)
        y = gather_no_grad(labels)[mask]
        z = torch.cat([s1[mask], o1[mask], s2[mask], o2[mask]], dim=0)
        lsup = multilabel_supcon(z, y.repeat(4, 1), tau)
        total = total + w.l_sup * lsup
        terms["sup"] = lsup.detach()
    if w.l_bce > 0:
        lb = bce_terms(v1, labels, labelled)
        total = total + w.l_bce * lb
        terms["bce"] = lb.detach()
    terms["total"] = total.detach()
    return total, terms
