"""Frozen-feature protocols: feature extraction, the linear multi-label heads (phase 2 / linear probe), and
per-class thresholds.

Phase 2 of training and the linear-probe protocol are the same procedure: freeze the encoders, embed the labelled
train patches once (no augmentation), then fit the three linear classifiers (fused, SAR-only, optical-only) with
BCE on the cached features. Fitting on cached features costs milliseconds per epoch, so hundreds of epochs are
free, and the result is deterministic given the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mosaic_edge.train.models import MosaicModel

FEATURE_KEYS: tuple[str, str] = ("f_sar", "f_optical")


@torch.no_grad()
def extract(
    model: MosaicModel, batches: Iterator[dict[str, torch.Tensor]], device: torch.device
) -> dict[str, torch.Tensor]:
    """Run ``model`` in eval mode over ``batches``; return CPU float32 features, outputs, labels and masks."""
    was_training = model.training
    model.eval()
    keep: dict[str, list[torch.Tensor]] = {}
    for b in batches:
        fs, fo = model.features(b["sar"].to(device), b["optical"].to(device))
        out = model.heads(fs, fo)
        for k, v in {
            "f_sar": fs,
            "f_optical": fo,
            **out,
            "labels": b["labels"],
            "labelled": b["labelled"],
        }.items():
            keep.setdefault(k, []).append(v.detach().float().cpu() if v.dtype != torch.bool else v.cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in keep.items()}


def fit_heads(
    model: MosaicModel,
    feats: dict[str, torch.Tensor],
    epochs: int,
    lr: float,
    seed: int,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
) -> list[float]:
    """Fit the model's three linear classifiers on frozen features of the labelled rows; return the loss per epoch.

    Heads are re-initialised first so the result depends only on the features (the linear-probe protocol).
    """
    mask = feats["labelled"]
    fs, fo, y = feats["f_sar"][mask], feats["f_optical"][mask], feats["labels"][mask]
    if len(y) == 0:
        raise ValueError("no labelled samples to fit the classifier on")
    heads = [model.cls_fused, model.cls_sar, model.cls_optical]
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    for h in heads:
        bound = 1.0 / math.sqrt(h.in_features)
        with torch.no_grad():
            h.weight.copy_(torch.rand(h.weight.shape, generator=g) * 2 * bound - bound)
            h.bias.zero_()
    params = [p for h in heads for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # Standardise features so one learning rate suits every encoder width; folded back into the weights below.
    mean = {k: v.mean(0) for k, v in (("s", fs), ("o", fo))}
    std = {k: v.std(0, unbiased=False).clamp_min(1e-6) for k, v in (("s", fs), ("o", fo))}
    xs, xo = ((fs - mean["s"]) / std["s"]).to(dev), ((fo - mean["o"]) / std["o"]).to(dev)
    y = y.to(dev)
    history = []
    steps_per_epoch = max(1, math.ceil(len(y) / batch_size))
    total = max(1, epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g).to(dev)
        run = 0.0
        for idx in order.split(batch_size):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            a, b = xs[idx], xo[idx]
            loss = (
                F.binary_cross_entropy_with_logits(model.cls_fused(torch.cat([a, b], 1)), y[idx])
                + F.binary_cross_entropy_with_logits(model.cls_sar(a), y[idx])
                + F.binary_cross_entropy_with_logits(model.cls_optical(b), y[idx])
            ) / 3
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += float(loss.detach()) * len(idx)
            step += 1
        history.append(run / len(y))
    # Fold the standardisation into the linear layers: W (x - m)/s + c = (W/s) x + (c - W m/s).
    with torch.no_grad():
        ms, mo = mean["s"].to(dev), mean["o"].to(dev)
        ss, so = std["s"].to(dev), std["o"].to(dev)
        for h, m, s in (
            (model.cls_sar, ms, ss),
            (model.cls_optical, mo, so),
            (model.cls_fused, torch.cat([ms, mo]), torch.cat([ss, so])),
        ):
            h.weight.div_(s)
            h.bias.sub_(h.weight @ m)
    return history


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, lo: float = 0.01, hi: float = 0.99) -> np.ndarray:
    """Per-class threshold maximising F1 on validation probabilities [N, C] (0.5 for a class without positives).

    Candidates are midpoints between consecutive sorted scores, so the chosen threshold separates the data the
    same way at any precision; it is clipped to ``[lo, hi]`` because the contract requires ``0 < t < 1``.
    """
    n, c = probs.shape
    out = np.full(c, 0.5)
    for j in range(c):
        y = labels[:, j] > 0.5
        if not y.any():
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        p, t = probs[order, j], y[order]
        tp = np.cumsum(t)
        k = np.arange(1, n + 1)
        f1 = 2 * tp / (k + t.sum())  # F1 when predicting the top-k as positive
        f1[:-1][p[:-1] == p[1:]] = -1  # only cut between distinct scores
        best = int(np.argmax(f1))
        thr = 0.5 * (p[best] + p[best + 1]) if best + 1 < n else p[best] * 0.5
        out[j] = float(np.clip(thr, lo, hi))
    return out
