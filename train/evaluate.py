"""Evaluation: mAP, F1 at the contract's thresholds, per-class AP, and embedding silhouette.

Silhouette ("cluster coherence" in the MoSAiC abstract) needs one cluster id per patch, which multi-label data
does not have; we score the patches that carry exactly one label (pure scenes), clustered by that label, with
cosine distance on the concatenation of the L2-normalised SAR and optical embeddings (whose cosine is the
mean of
the two modalities' cosines). At most ``max_silhouette`` such patches are used (the metric is O(N^2)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mosaic_edge.contract import Contract
from mosaic_edge.metrics import average_precision, f1_scores, mean_average_precision, silhouette_score
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.data import epoch_batches, load_split
from mosaic_edge.train.models import MosaicModel
from mosaic_edge.train.probe import extract


def predict_split(
    model: MosaicModel, split: Any, device: torch.device, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Features, outputs and labels of every patch of a loaded split (eval mode, no augmentation)."""
    batches = epoch_batches(len(split), batch_size, 0, 0, shuffle=False, drop_last=False)
    return extract(model, split.iter_batches(batches), device)


def _sigmoid(x: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(x.float()).numpy().astype(np.float64)


def embedding_silhouette(out: dict[str, torch.Tensor], max_samples: int = 2000, seed: int = 0) -> float:
    """Silhouette of single-label patches in the joint embedding space (NaN when fewer than 2 classes
    occur)."""
    y = out["labels"].numpy() > 0.5
    single = np.flatnonzero(y.sum(1) == 1)
    if len(single) > max_samples:
        single = np.sort(np.random.default_rng(seed).choice(single, max_samples, replace=False))
    emb = torch.cat([out["emb_sar"], out["emb_optical"]], dim=1).numpy()[single]
    cluster = y[single].argmax(1)
    if not 2 <= len(np.unique(cluster)) < len(single):
        return float("nan")
    return float(silhouette_score(emb, cluster))


def compute_metrics(out: dict[str, torch.Tensor], contract: Contract) -> dict[str, Any]:
    """All evaluation numbers of model outputs ``out`` (from :func:`predict_split`) under ``contract``."""
    y = out["labels"].numpy()
    probs = _sigmoid(out["logits"])
    ap = np.atleast_1d(average_precision(y, probs))  # [C] per class (a float only for 1-D input)
    f1 = f1_scores(y, probs, np.asarray(contract.thresholds))
    res: dict[str, Any] = {
        "n": int(len(y)),
        "macro_map": mean_average_precision(y, probs, "macro"),
        "micro_map": mean_average_precision(y, probs, "micro"),
        "macro_f1": float(f1["macro"]),
        "micro_f1": float(f1["micro"]),
        "silhouette": embedding_silhouette(out),
        "per_class_ap": {
            c: (None if np.isnan(a) else float(a)) for c, a in zip(contract.classes, ap, strict=True)
        },
    }
    for key in ("logits_sar", "logits_optical"):
        res[f"macro_map_{key.split('_')[1]}_only"] = mean_average_precision(y, _sigmoid(out[key]), "macro")
    return res


def format_table(res: dict[str, Any]) -> str:
    """Human-readable summary with the per-class AP table."""
    lines = [
        f"patches: {res['n']}",
        f"macro mAP {res['macro_map']:.4f}   micro mAP {res['micro_map']:.4f}",
        f"macro F1  {res['macro_f1']:.4f}   micro F1  {res['micro_f1']:.4f}   (contract thresholds)",
        f"SAR-only macro mAP {res['macro_map_sar_only']:.4f}   "
        f"optical-only {res['macro_map_optical_only']:.4f}",
        f"silhouette (single-label patches, cosine) {res['silhouette']:.4f}",
        "",
        "per-class AP:",
    ]
    for name, ap in res["per_class_ap"].items():
        lines.append(f"  {'   n/a' if ap is None else f'{ap:6.3f}'}  {name}")
    return "\n".join(lines)


def linear_probe(
    model: MosaicModel,
    cfg: TrainConfig,
    contract: Contract,
    label_fraction: float,
    device: torch.device,
    train_split: Any = None,
) -> tuple[Contract, dict[str, Any]]:
    """Linear-probe protocol: frozen encoders, linear heads fitted on ``label_fraction`` of the train labels.

    Thresholds are tuned on the validation split (max F1 per class). Returns the contract carrying them and
    ``{"val": metrics, "test": metrics, "head_history": [...]}``. The model's heads are overwritten.
    """
    from mosaic_edge.train.probe import fit_heads

    if train_split is None or label_fraction != cfg.label_fraction:
        train_split = load_split(cfg, contract, "train", label_fraction)
    history = fit_heads(
        model, predict_split(model, train_split, device), cfg.head_epochs, cfg.head_lr, cfg.seed
    )
    contract, res = tune_and_test(model, cfg, contract, device)
    return contract, {**res, "head_history": history}


def tune_and_test(
    model: MosaicModel, cfg: TrainConfig, contract: Contract, device: torch.device
) -> tuple[Contract, dict[str, Any]]:
    """Tune per-class thresholds on the validation split (max F1), then score validation and test.

    Returns the contract carrying the thresholds and ``{"val": metrics, "test": metrics}``.
    """
    from mosaic_edge.train.probe import tune_thresholds

    val = predict_split(model, load_split(cfg, contract, "validation"), device)
    thresholds = tune_thresholds(torch.sigmoid(val["logits"]).numpy(), val["labels"].numpy())
    contract = contract.replace(thresholds=tuple(float(t) for t in thresholds), model_name=cfg.arch)
    test = predict_split(model, load_split(cfg, contract, "test"), device)
    return contract, {"val": compute_metrics(val, contract), "test": compute_metrics(test, contract)}


def evaluate_checkpoint(
    checkpoint: str | Path, data: str | None = None, split: str = "test", device: str = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint, run it on ``split`` of ``data`` (default: the data it was trained on), return
    metrics."""
    from mosaic_edge.train.checkpoint import load_checkpoint, read_checkpoint

    extra = read_checkpoint(checkpoint).get("extra", {})
    model, contract = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_json(extra["train_config"]) if "train_config" in extra else TrainConfig()
    if data is not None and data != cfg.data:
        cfg = cfg.replace(data=data)
    dev = torch.device(device)
    loaded = load_split(cfg, contract, split)
    res = compute_metrics(predict_split(model.to(dev), loaded, dev), contract)
    res.update(checkpoint=str(checkpoint), data=cfg.data, split=split, model_name=contract.model_name)
    return res
