"""Evaluation: mAP, F1 at the contract's thresholds, per-class AP, and silhouettes.

Silhouette ("cluster coherence" in the MoSAiC abstract) needs one cluster id per patch, which multi-label data
does not have; we score the patches that carry exactly one label (pure scenes), clustered by that label, with
cosine distance on the concatenation of the L2-normalised SAR and optical parts (whose cosine is the mean of the
two modalities' cosines). ``silhouette_features`` uses the pooled encoder features, the representation every
method and phase shares (a supervised model's projection heads never train, and phase 3 leaves them stale);
``silhouette`` uses the projection embeddings the contrastive terms act on. At most ``max_silhouette`` such
patches are used (the metric is O(N^2)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mosaic_edge.contract import Contract
from mosaic_edge.metrics import average_precision, f1_scores, mean_average_precision, silhouette_score
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.data import load_split
from mosaic_edge.train.models import MosaicModel
from mosaic_edge.train.probe import FEATURE_KEYS, extract
from mosaic_edge.train.sampling import epoch_batches


def predict_split(
    model: MosaicModel,
    split: Any,
    device: torch.device,
    batch_size: int = 256,
    indices: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Features, outputs and labels of a loaded split's patches (all, or ``indices``); eval mode, no augmentation."""
    batches = (list(indices.split(batch_size)) if indices is not None
               else epoch_batches(len(split), batch_size, 0, 0, shuffle=False, drop_last=False))
    return extract(model, split.iter_batches(batches, device), device)


def _sigmoid(x: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(x.float()).numpy().astype(np.float64)


def embedding_silhouette(
    out: dict[str, torch.Tensor],
    max_samples: int = 2000,
    seed: int = 0,
    keys: tuple[str, str] = ("emb_sar", "emb_optical"),
) -> float:
    """Silhouette of single-label patches in a joint space (NaN when fewer than 2 classes occur).

    ``keys`` name the SAR and optical parts: the projection embeddings (default) or the pooled encoder
    features ``("f_sar", "f_optical")``; each part is L2-normalised before the two are concatenated.
    """
    y = out["labels"].numpy() > 0.5
    single = np.flatnonzero(y.sum(1) == 1)
    if len(single) > max_samples:
        single = np.sort(np.random.default_rng(seed).choice(single, max_samples, replace=False))
    parts = [torch.nn.functional.normalize(out[k].float(), dim=1) for k in keys]
    emb = torch.cat(parts, dim=1).numpy()[single]
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
        "silhouette_features": embedding_silhouette(out, keys=FEATURE_KEYS),
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
        f"silhouette (single-label patches, cosine): encoder features {res['silhouette_features']:.4f}   "
        f"projection embeddings {res['silhouette']:.4f}",
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
    eval_splits: dict[str, Any] | None = None,
) -> tuple[Contract, dict[str, Any]]:
    """Linear-probe protocol: frozen encoders, linear heads fitted on ``label_fraction`` of the train labels.

    Only the labelled train patches are embedded (at 1 % labels, 1 % of the split). A probe at a fraction no
    larger than the split's reuses it (the seeded label masks are nested); a larger one reloads the split with
    its labels. Thresholds are tuned on the validation split (max F1 per class); ``eval_splits`` are the loaded
    validation and test splits to reuse (:func:`load_eval_splits`). Returns the contract carrying the thresholds
    and ``{"val": metrics, "test": metrics, "head_history": [...]}``. The model's heads are overwritten.
    """
    from mosaic_edge.data.base import labelled_mask
    from mosaic_edge.train.probe import fit_heads

    if train_split is None or label_fraction > cfg.label_fraction:
        train_split = load_split(cfg, contract, "train", label_fraction)
        labelled = train_split.labelled
    else:
        labelled = torch.from_numpy(labelled_mask(len(train_split), label_fraction, cfg.seed))
        labelled &= train_split.labelled
    idx = torch.nonzero(labelled).flatten()
    history = fit_heads(model, predict_split(model, train_split, device, indices=idx), cfg.head_epochs,
                        cfg.head_lr, cfg.seed)
    contract, res = tune_and_test(model, cfg, contract, device, eval_splits)
    return contract, {**res, "head_history": history}


def load_eval_splits(cfg: TrainConfig, contract: Contract) -> dict[str, Any]:
    """The validation and test splits of the config's data, loaded once for every evaluation of a run."""
    return {split: load_split(cfg, contract, split) for split in ("validation", "test")}


def tune_and_test(
    model: MosaicModel,
    cfg: TrainConfig,
    contract: Contract,
    device: torch.device,
    eval_splits: dict[str, Any] | None = None,
) -> tuple[Contract, dict[str, Any]]:
    """Tune per-class thresholds on the validation split (max F1), then score validation and test.

    Returns the contract carrying the thresholds and ``{"val": metrics, "test": metrics}``.
    """
    from mosaic_edge.train.probe import tune_thresholds

    splits = eval_splits or load_eval_splits(cfg, contract)
    val = predict_split(model, splits["validation"], device)
    thresholds = tune_thresholds(torch.sigmoid(val["logits"]).numpy(), val["labels"].numpy())
    contract = contract.replace(thresholds=tuple(float(t) for t in thresholds), model_name=cfg.arch)
    test = predict_split(model, splits["test"], device)
    return contract, {"val": compute_metrics(val, contract), "test": compute_metrics(test, contract)}


def evaluate_checkpoint(
    checkpoint: str | Path, data: str | None = None, split: str = "test", device: str = "cpu"
) -> dict[str, Any]:
    """Metrics of a checkpoint on ``split`` of ``data`` (default: the data it was trained on)."""
    from mosaic_edge.train.checkpoint import load_checkpoint, read_checkpoint

    extra = read_checkpoint(checkpoint).get("extra", {})
    model, contract = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_json(extra["train_config"]) if "train_config" in extra else TrainConfig()
    if data is not None and data != cfg.data:
        from mosaic_edge.data.sources import detect_kind

        keep = detect_kind(data) == "sen12ms"  # SEN12MS reader options (split files, threshold) apply to SEN12MS
        cfg = cfg.replace(data=data, label_threshold=cfg.label_threshold if keep else None,
                          split_file=cfg.split_file if keep else ())
    dev = torch.device(device)
    loaded = load_split(cfg, contract, split)
    res = compute_metrics(predict_split(model.to(dev), loaded, dev), contract)
    res.update(checkpoint=str(checkpoint), data=cfg.data, split=split, model_name=contract.model_name)
    return res
