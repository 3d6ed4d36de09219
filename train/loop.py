"""The training run: phase 1 contrastive pre-training (MoSAiC objective), phase 2 heads, phase 3 fine-tune.

Phase 1 optimises ``l_intra (L_s1 + L_s2) + l_inter L_inter + l_sup L_mlsup`` (plus the classifiers' BCE in
``joint`` mode) with AdamW, linear warm-up then cosine decay per step, gradient clipping, AMP on CUDA (bf16 where
supported), channels_last on CUDA, optionally ``torch.compile``, under DDP with SyncBatchNorm when launched by
torchrun. With few labels, every batch holds at least ``min_labelled`` labelled patches
(:func:`~.sampling.labelled_epoch_batches`). Without any contrastive term (the supervised baseline) a batch is
one geometric view of labelled patches with BCE. A weights-only training state (``last.pt``) is written every
epoch; ``resume=True`` continues from it bit-identically (data order and augmentations are pure functions of
seed, epoch and step). Phase 2 (rank 0) freezes the encoders and fits the three linear heads on the labelled
train patches (:mod:`.probe`); phase 3 (rank 0, ``finetune_epochs > 0``) fine-tunes encoders and heads end to
end with BCE from there (:mod:`.finetune`); then it tunes per-class thresholds on validation (max F1), evaluates
on test and writes ``model.pt``, ``contract.json``, ``metrics.jsonl`` and ``curves.png``.

Why two phases by default (``classifier="two-phase"``) rather than BCE jointly with the contrastive terms: joint
BCE did not measurably help (``benchmarks/RESULTS.md``, "Previous embedded default", the ``--classifier joint``
rows), while two phases keep the pre-training objective exactly MoSAiC's, make phase 2 the same procedure as the
linear-probe protocol, and let a pre-trained encoder be re-probed at any label fraction without retraining.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from mosaic_edge.errors import UserError
from mosaic_edge.train.augment import GEOMETRIC_AUGMENT, AugmentConfig, augment_pair
from mosaic_edge.train.checkpoint import save_checkpoint
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.data import contract_for_config, data_spec, load_split
from mosaic_edge.train.distributed import (
    DistInfo,
    all_reduce_mean,
    init_distributed,
    leave_process_group,
    revert_sync_batchnorm,
    shutdown_distributed,
    use_sync_batchnorm,
)
from mosaic_edge.train.evaluate import linear_probe, load_eval_splits, tune_and_test
from mosaic_edge.train.finetune import finetune
from mosaic_edge.train.models import MosaicModel, build_model
from mosaic_edge.train.objective import LossWeights, mosaic_loss
from mosaic_edge.train.report import Progress, append_jsonl, plot_curves
from mosaic_edge.train.sampling import epoch_batches, labelled_epoch_batches

# Fields that may change between an interrupted run and its resumption without changing the result.
_RESUME_FREE = ("out", "log_every", "num_workers", "device", "cache_gb", "compile")


@dataclass
class TrainResult:
    """Where a run wrote its outputs, and its final numbers (empty on non-zero ranks)."""

    out_dir: Path
    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def resolve_device(cfg: TrainConfig, dist: DistInfo) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{dist.local_rank}")
    return dev


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 or fp16 autocast on CUDA (``auto``: bf16 where supported), None (full precision) otherwise."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "bf16" or (cfg.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def memory_format(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    """``torch.channels_last`` (``auto``: on CUDA, where cuDNN convolutions prefer it) or the default format."""
    on = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    return torch.channels_last if on else torch.contiguous_format


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def loss_weights(cfg: TrainConfig) -> LossWeights:
    return LossWeights(
        cfg.l_intra, cfg.l_inter, cfg.l_sup, cfg.l_bce if cfg.classifier == "joint" else 0.0, cfg.temperature
    )


def _epoch_batches(cfg: TrainConfig, split: Any, w: LossWeights, bs: int, epoch: int,
                   dist: DistInfo) -> list[torch.Tensor]:
    """This rank's batches of phase-1 epoch ``epoch``.

    Without contrastive terms only labelled patches carry a loss, so batches cycle through those; otherwise
    every patch is seen once per epoch with at least ``cfg.min_labelled`` labelled ones per batch.
    """
    labelled = split.labelled
    subset = torch.nonzero(labelled).flatten()
    if not w.contrastive and len(subset):
        return [subset[b % len(subset)]
                for b in epoch_batches(len(split), bs, cfg.seed, epoch, dist.rank, dist.world_size)]
    return labelled_epoch_batches(labelled, bs, cfg.min_labelled, cfg.seed, epoch, dist.rank, dist.world_size)


def _save_state(
    path: Path,
    model: MosaicModel,
    opt: torch.optim.Optimizer,
    scaler: Any,
    epoch: int,
    cfg: TrainConfig,
    records: list[dict[str, Any]],
) -> None:
    state = {
        "format": "mosaic-edge-train-state",
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "config": cfg.to_json(),
        "records": json.dumps(records),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _restore(state_path: Path, cfg: TrainConfig, model: MosaicModel, opt: torch.optim.Optimizer, scaler: Any,
             device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    state = torch.load(state_path, map_location=device, weights_only=True)
    saved = {k: v for k, v in json.loads(state["config"]).items() if k not in _RESUME_FREE}
    if saved != {k: v for k, v in json.loads(cfg.to_json()).items() if k not in _RESUME_FREE}:
        raise UserError(f"{state_path} was written by a different training config; refusing to resume")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), json.loads(state["records"])


def pretrain(
    cfg: TrainConfig,
    model: MosaicModel,
    train_split: Any,
    contract: Any,
    dist: DistInfo,
    device: torch.device,
    resume: bool,
    stop_after: int | None,
) -> list[dict[str, Any]]:
    """Phase 1; returns the per-epoch records (including those restored on resume)."""
    w = loss_weights(cfg)
    out = cfg.out_dir
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    dtype = amp_dtype(cfg, device)
    fmt = memory_format(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    records: list[dict[str, Any]] = []
    start = 0
    state_path = out / "last.pt"
    if resume and state_path.is_file():
        start, records = _restore(state_path, cfg, model, opt, scaler, device)
    synced = use_sync_batchnorm(model, dist, device, cfg.sync_bn)
    if dist.enabled and cfg.sync_bn and not synced and dist.is_main:
        print("note: SyncBatchNorm needs CUDA tensors (torch); BatchNorm statistics stay per process on "
              f"{device.type}", file=sys.stderr)
    net: Any = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if dist.enabled
        else model
    )
    if cfg.compile:
        net = torch.compile(net)
    n = len(train_split)
    bs = min(cfg.batch_size, n) // dist.world_size * dist.world_size
    steps = n // bs
    total, warm = cfg.epochs * steps, int(round(cfg.warmup_epochs * steps))
    aug = AugmentConfig() if w.contrastive else GEOMETRIC_AUGMENT
    crop = (cfg.crop_size or None) if w.contrastive else None
    gen = torch.Generator(device=device)
    try:
        for epoch in range(start, cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)):
            net.train()
            batches = _epoch_batches(cfg, train_split, w, bs, epoch, dist)
            prog = Progress("pretrain", epoch, cfg.epochs, len(batches), cfg.log_every, dist.is_main)
            sums: dict[str, torch.Tensor] = {}
            t0 = time.perf_counter()
            for step, b in enumerate(train_split.iter_batches(batches, device)):
                gstep = epoch * steps + step
                for group in opt.param_groups:
                    group["lr"] = lr_at(gstep, total, warm, cfg.lr)
                gen.manual_seed((cfg.seed * 1_000_003 + gstep) * 64 + dist.rank)
                sar, optical, labels, labelled = b["sar"], b["optical"], b["labels"], b["labelled"]
                views = [augment_pair(sar, optical, contract, aug, gen, crop)]
                if w.contrastive:
                    views.append(augment_pair(sar, optical, contract, aug, gen, crop))
                s_in = torch.cat([v[0] for v in views]).contiguous(memory_format=fmt)
                o_in = torch.cat([v[1] for v in views]).contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                    both = net(s_in, o_in)  # one pass for both views
                k = len(sar)
                v1 = {key: v[:k] for key, v in both.items()}
                v2 = {key: v[k:] for key, v in both.items()} if w.contrastive else None
                loss, terms = mosaic_loss(v1, v2, labels, labelled, w)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    terms["gnorm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).detach()
                scaler.step(opt)
                scaler.update()
                for key, v in terms.items():
                    sums[key] = sums[key] + v.float() if key in sums else v.float()
                prog.update(step, k * dist.world_size, terms)
            means = all_reduce_mean({f"loss_{k}": float(v) / max(1, len(batches)) for k, v in sums.items()}, device)
            rec = {
                "phase": "pretrain",
                "epoch": epoch,
                **means,
                "lr": opt.param_groups[0]["lr"],
                "samples_per_s": prog.throughput,
                "time_s": time.perf_counter() - t0,
                "world_size": dist.world_size,
                "sync_bn": synced,
                "channels_last": fmt == torch.channels_last,
            }
            records.append(rec)
            if dist.is_main:
                _save_state(state_path, model, opt, scaler, epoch + 1, cfg, records)
    finally:
        if synced:
            revert_sync_batchnorm(model)
    return records


def finish(
    cfg: TrainConfig,
    model: MosaicModel,
    contract: Any,
    train_split: Any,
    device: torch.device,
    records: list[dict[str, Any]],
) -> TrainResult:
    """Phases 2-3 on rank 0: heads on frozen features, optional end-to-end fine-tune, thresholds on validation,
    test metrics, artefacts."""
    out = cfg.out_dir
    t0 = time.perf_counter()
    eval_splits = load_eval_splits(cfg, contract)
    contract, res = linear_probe(model, cfg, contract, cfg.label_fraction, device, train_split, eval_splits)
    val_metrics, test_metrics = res["val"], res["test"]
    records.append(
        {
            "phase": "head",
            "history": res["head_history"],
            "time_s": time.perf_counter() - t0,
            "val_macro_map": val_metrics["macro_map"],
            "val_macro_f1": val_metrics["macro_f1"],
        }
    )
    if cfg.finetune_epochs > 0:
        probe_test = test_metrics["macro_map"]  # the frozen-encoder (linear-probe) score, kept for comparison
        t0 = time.perf_counter()
        history = finetune(
            model,
            train_split,
            contract,
            cfg.finetune_epochs,
            cfg.finetune_lr,
            cfg.seed,
            device,
            weight_decay=cfg.weight_decay,
            grad_clip=cfg.grad_clip,
            amp_dtype=amp_dtype(cfg, device),
            memory_format=memory_format(cfg, device),
        )
        contract, res = tune_and_test(model, cfg, contract, device, eval_splits)
        val_metrics, test_metrics = res["val"], res["test"]
        records.append(
            {
                "phase": "finetune",
                "history": history,
                "time_s": time.perf_counter() - t0,
                "val_macro_map": val_metrics["macro_map"],
                "val_macro_f1": val_metrics["macro_f1"],
                "probe_test_macro_map": probe_test,
            }
        )
    summary = {k: v for k, v in test_metrics.items() if k != "per_class_ap"}
    records.append({"phase": "test", **summary})
    model.to(memory_format=torch.contiguous_format)  # the saved weights are layout-neutral
    contract = save_checkpoint(
        out / "model.pt",
        model,
        contract,
        extra={"train_config": cfg.to_json(), "data_spec": data_spec(cfg).to_dict(), "test": summary,
               "val_macro_map": val_metrics["macro_map"]},
    )
    contract.save(out / "contract.json")
    (out / "metrics.jsonl").unlink(missing_ok=True)
    for r in records:
        append_jsonl(out / "metrics.jsonl", r)
    plot_curves(records, out / "curves.png")
    return TrainResult(out, out / "model.pt", {"test": test_metrics, "val": val_metrics})


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Run a whole training (all phases) described by ``cfg``; see the module docstring.

    Args:
        cfg: The run's configuration.
        resume: Continue from ``<out>/last.pt`` when it exists (must be the same config).
        stop_after: Stop after this many pre-training epochs without phase 2 (simulates an interruption).
    """
    dist = init_distributed("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    try:
        device = resolve_device(cfg, dist)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        out = cfg.out_dir
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        contract = contract_for_config(cfg)
        model = build_model(
            cfg.arch,
            contract.num_classes,
            cfg.embed_dim,
            len(contract.sar_bands),
            len(contract.optical_bands),
        ).to(device, memory_format=memory_format(cfg, device))
        train_split = load_split(cfg, contract, "train", cfg.label_fraction)
        records = pretrain(cfg, model, train_split, contract, dist, device, resume, stop_after)
        leave_process_group(dist)  # the collectives end with phase 1
        if stop_after is not None and stop_after < cfg.epochs:
            return TrainResult(out, out / "last.pt")
        result = (
            finish(cfg, model, contract, train_split, device, records)
            if dist.is_main
            else TrainResult(out, out / "model.pt")
        )
        # No barrier here: phases 2-3 run no collectives (the group is gone), and on a large dataset they can
        # outlast the timeout a barrier would impose on the idle ranks; torchrun waits for every rank to exit.
        return result
    finally:
        shutdown_distributed()
