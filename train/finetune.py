"""Phase 3: end-to-end fine-tuning of encoders and classifiers with BCE, after the contrastive pre-training.

Why: heads on frozen contrastive features are the bottleneck of the embedded default, and fine-tuning from the
MoSAiC pre-training reaches far more than the same BCE training from random weights (``benchmarks/RESULTS.md``,
"Embedded default training").

Procedure: the heads start from the phase-2 linear fit (so the first steps do not push random-head gradients
into the pre-trained encoders); then every labelled train patch, one augmented view per epoch
(:data:`~.augment.GEOMETRIC_AUGMENT`: whole patches, so the fine-tuned model sees the same scale as at
evaluation), mean BCE of the fused, SAR-only and optical-only classifiers, AdamW with cosine decay, gradient
clipping, AMP on CUDA. Each epoch is one pass of the split's loader over that epoch's batches (the loader and its
workers live as long as the split). The projection heads are not trained here (they get no gradient), so the
embeddings move only with the encoders; measure cluster coherence on the encoder features
(``silhouette_features``). It runs on one process (rank 0 of a torchrun job), after the DDP pre-training, and is
not checkpointed per epoch (``--resume`` covers phase 1 only): on a large dataset pass ``--finetune-epochs 0``
or keep it short.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from mosaic_edge.contract import Contract
from mosaic_edge.train.augment import GEOMETRIC_AUGMENT, AugmentConfig, augment_pair
from mosaic_edge.train.models import MosaicModel
from mosaic_edge.train.objective import bce_terms
from mosaic_edge.train.sampling import epoch_batches


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
    augment: AugmentConfig = GEOMETRIC_AUGMENT,
    memory_format: torch.memory_format = torch.contiguous_format,
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
        memory_format: Of the input batches (``torch.channels_last`` with a channels_last model).
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
        run, seen = torch.zeros((), device=device), 0  # summed on the device: no host sync per step
        batches = [labelled[pos] for pos in epoch_batches(len(labelled), bs, seed + 7919, epoch)[:steps]]
        for step, b in enumerate(split.iter_batches(batches, device)):
            gstep = epoch * steps + step
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * gstep / total))
            gen.manual_seed((seed * 1_000_003 + gstep) * 64 + 63)
            y = b["labels"]
            sar, optical = augment_pair(b["sar"], b["optical"], contract, augment, gen)
            sar, optical = sar.contiguous(memory_format=memory_format), optical.contiguous(memory_format=memory_format)
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
            run += loss.detach().float() * len(y)
            seen += len(y)
        history.append(float(run) / max(1, seen))
    model.eval()
    return history
