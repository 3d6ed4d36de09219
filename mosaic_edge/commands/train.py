"""CLI commands of the train stage: ``train`` and ``evaluate`` (registered on the main app by
:func:`register`).

Both parse options into a library call (:func:`mosaic_edge.train.loop.train`,
:func:`mosaic_edge.train.evaluate.evaluate_checkpoint`); torch is imported inside the command bodies.
Multi-GPU: ``torchrun --nproc_per_node N -m mosaic_edge train ...``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

# Light (no torch): defaults live in one place, the frozen TrainConfig (STYLE.md #5).
from mosaic_edge.train.config import TrainConfig

_D = TrainConfig()


def train_cmd(
    data: str = typer.Option("synthetic", "--data", help="synthetic, or a BigEarthNet v2 / SEN12MS root."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default runs/<name from config>)."
    ),
    arch: str = typer.Option(
        _D.arch, "--arch", help="tiny | resnet10_micro | resnet18_narrow | resnet18 | resnet50."
    ),
    epochs: int = typer.Option(_D.epochs, "--epochs", help="Contrastive pre-training epochs."),
    head_epochs: int = typer.Option(
        _D.head_epochs, "--head-epochs", help="Epochs of the multi-label heads on frozen features."
    ),
    finetune_epochs: int = typer.Option(
        _D.finetune_epochs,
        "--finetune-epochs",
        help="Epochs of end-to-end BCE fine-tuning after the head fit (0: frozen encoders).",
    ),
    finetune_lr: float = typer.Option(
        _D.finetune_lr, "--finetune-lr", help="Peak fine-tuning learning rate."
    ),
    batch_size: int = typer.Option(
        _D.batch_size, "--batch-size", help="Global batch size (split over torchrun ranks)."
    ),
    lr: float = typer.Option(_D.lr, "--lr", help="Peak AdamW learning rate (cosine, warm-up)."),
    temperature: float = typer.Option(_D.temperature, "--temperature", help="Contrastive temperature."),
    l_intra: float = typer.Option(
        _D.l_intra, "--l-intra", help="Weight of intra-modality NT-Xent (S1 + S2)."
    ),
    l_inter: float = typer.Option(_D.l_inter, "--l-inter", help="Weight of inter-modality InfoNCE."),
    l_sup: float = typer.Option(
        _D.l_sup, "--l-sup", help="Weight of the multi-label supervised contrastive loss."
    ),
    classifier: str = typer.Option(_D.classifier, "--classifier", help="two-phase | joint."),
    label_fraction: float = typer.Option(
        _D.label_fraction, "--label-fraction", help="Fraction of train patches with labels."
    ),
    seed: int = typer.Option(_D.seed, "--seed"),
    amp: str = typer.Option(_D.amp, "--amp", help="auto | bf16 | fp16 | off (CUDA only)."),
    device: str = typer.Option(_D.device, "--device", help="auto | cpu | cuda | cuda:N."),
    num_workers: int = typer.Option(
        _D.num_workers, "--num-workers", help="DataLoader workers (streamed datasets)."
    ),
    n_train: int = typer.Option(_D.n_train, "--n-train", help="Synthetic train patches."),
    n_val: int = typer.Option(_D.n_val, "--n-val", help="Synthetic validation patches."),
    n_test: int = typer.Option(_D.n_test, "--n-test", help="Synthetic test patches."),
    patch_size: int = typer.Option(
        _D.patch_size, "--patch-size", help="Synthetic patch size (multiple of 6)."
    ),
    crop_size: int = typer.Option(_D.crop_size, "--crop-size", help="Training crop side (0: whole patch)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <out>/last.pt."),
) -> None:
    """Train MoSAiC (contrastive pre-training, then multi-label heads); write model.pt, contract, metrics,
    curves."""
    from mosaic_edge.errors import UserError
    from mosaic_edge.train.loop import train

    try:
        cfg = TrainConfig(
            data=data,
            out=str(out) if out else None,
            arch=arch,
            epochs=epochs,
            head_epochs=head_epochs,
            finetune_epochs=finetune_epochs,
            finetune_lr=finetune_lr,
            batch_size=batch_size,
            lr=lr,
            temperature=temperature,
            l_intra=l_intra,
            l_inter=l_inter,
            l_sup=l_sup,
            classifier=classifier,
            label_fraction=label_fraction,
            seed=seed,
            amp=amp,
            device=device,
            num_workers=num_workers,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            patch_size=patch_size,
            crop_size=crop_size,
        )
        from mosaic_edge.train.models import ARCHS

        if arch not in ARCHS:
            raise ValueError(f"unknown --arch {arch!r}; choose one of {list(ARCHS)}")
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    result = train(cfg, resume=resume)
    if not result.metrics:  # non-zero torchrun rank
        return
    test = result.metrics["test"]
    typer.echo(
        f"test macro mAP {test['macro_map']:.4f}  micro mAP {test['micro_map']:.4f}  "
        f"macro F1 {test['macro_f1']:.4f}  silhouette {test['silhouette']:.4f}"
    )
    for name in ("model.pt", "contract.json", "metrics.jsonl", "curves.png"):
        typer.echo(f"wrote {result.out_dir / name}")


def evaluate_cmd(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `mosaic-edge train`."),
    data: str | None = typer.Option(
        None, "--data", help="Data to evaluate on (default: what it was trained on)."
    ),
    split: str = typer.Option("test", "--split", help="train | validation | test."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate a checkpoint: micro/macro mAP, F1 at the contract thresholds, per-class AP, silhouette."""
    from mosaic_edge.train.evaluate import evaluate_checkpoint, format_table

    res = evaluate_checkpoint(checkpoint, data=data, split=split, device=device)
    if json_out:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}
        typer.echo(json.dumps(clean, sort_keys=True))
    else:
        typer.echo(format_table(res))


def register(app: typer.Typer) -> None:
    """Add this stage's commands to ``app``."""
    app.command(name="train")(train_cmd)
    app.command(name="evaluate")(evaluate_cmd)
