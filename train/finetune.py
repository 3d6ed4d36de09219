"""Phase 3: end-to-end fine-tuning of encoders and classifiers with BCE, after the contrastive pre-training.

Why: heads on frozen contrastive features are the bottleneck of the embedded default. On the synthetic
benchmark (resnet10_micro, 12 pre-training epochs on 32 px crops, 48 px patches) the linear probe reaches
validation macro mAP 0.612; fine-tuning the whole model from there with BCE reaches 0.743 (20 epochs,
lr 3e-3), 0.761 (20 epochs, lr 6e-3) and 0.784 (30 epochs, lr 6e-3), while 15 epochs of the same BCE training
from random weights reach only 0.481, so the MoSAiC pre-training is what makes the short fine-tune work
(tuning table and commands: ``benchmarks/RESULTS.md``, "Embedded default training").

Procedure: the heads start from the phase-2 linear fit (so the first steps do not push random-head gradients
into the pre-trained encoders); then every labelled train patch, one augmented view per epoch (flips and
90-degree rotations only: whole patches, so the fine-tuned model sees the same scale as at evaluation), mean
BCE of the fused, SAR-only and optical-only classifiers, AdamW with cosine decay, gradient clipping, AMP on
CUDA. The projection heads are not trained here (they get no gradient), so the embeddings, and the silhouette
measured on them, move only with the encoders. It runs on one process (rank 0 of a torchrun job), after the
DDP pre-training, and is not checkpointed per epoch (``--resume`` covers phase 1 only). Limitation: on a large
dataset (BigEarthNet v2 under torchrun) this single-process phase is slow; pass ``--finetune-epochs 0`` there
or keep it short. In the embedded default it costs about as much wall time as the pre-training.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from mosaic_edge.contract import Contract
from mosaic_edge.train.augment import AugmentConfig, augment_pair
from mosaic_edge.train.data import epoch_batches
from mosaic_edge.train.models import MosaicModel
from mosaic_edge.train.objective import bce_terms

# Geometry only: the photometric augmentations (speckle, gain, clouds) and crops serve the contrastive views;
# for the classifier they only add label noise (a crop can drop a 3 %-area class that is still labelled).
FINETUNE_AUGMENT = AugmentConfig(crop_scale=(1.0, 1.0), speckle_p=0.0, gain=0.0, cloud_p=0.0)


def finetune_parameters(model: MosaicModel) -> list[torch.nn.Parameter]:
    """What phase 3 trains: both encoders and the three classifiers (not the projection heads)."""
    return [*model.enc_sar.parameters(), *model.enc_optical.parameters(), *model.classifier_parameters()]


def finetune(
    model: MosaicModel,
    split: Any,
    contract: Contract,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    grad_clip: float = 3.0,
    amp_dtype: torch.dtype | None = None,
    augment: AugmentConfig = FINETUNE_AUGMENT,
) -> list[float]:
    """Fine-tune ``model`` end to end with BCE on the labelled patches of ``split``; return loss per epoch.

    Args:
        model: Pre-trained model whose heads were already fitted on frozen features (phase 2).
        split: A loaded train split (:func:`~.data.load_split`) with ``labelled`` and ``iter_batches``.
        contract: Normalisation statistics the augmentations need.
        epochs / lr / batch_size / weight_decay / grad_clip: AdamW with cosine decay per step, no warm-up.
        seed: Seeds the batch order and the augmentations (deterministic given the seed).
        device: Where the model lives.
        amp_dtype: Autocast dtype on CUDA (None: full precision).
    """
    labelled = torch.nonzero(split.labelled).flatten()
    if epochs <= 0 or len(labelled) == 0:
        return []
    bs = max(1, min(batch_size, len(labelled)))
    params = finetune_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = max(1, len(labelled) // bs)
    total = epochs * steps
    gen = torch.Generator(device=device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    history = []
    model.train()
    for epoch in range(epochs):
        run, seen = 0.0, 0
        for step, pos in enumerate(epoch_batches(len(labelled), bs, seed + 7919, epoch)[:steps]):
            gstep = epoch * steps + step
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * gstep / total))
            gen.manual_seed((seed * 1_000_003 + gstep) * 64 + 63)
            b = next(iter(split.iter_batches([labelled[pos]])))
            sar, optical = b["sar"].to(device), b["optical"].to(device)
            y = b["labels"].to(device)
            sar, optical = augment_pair(sar, optical, contract, augment, gen)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                out = model.heads(*model.features(sar, optical))
            loss = bce_terms(out, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(opt)
            scaler.update()
            run += float(loss.detach()) * len(y)
            seen += len(y)
        history.append(run / max(1, seen))
    model.eval()
    return history
