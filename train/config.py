"""Training configuration: one frozen dataclass, defaults in one place, output name derived from it (STYLE.md
#5).

The defaults are the *embedded default*: ``mosaic-edge train`` with no arguments trains on the synthetic
benchmark (48 px patches, 2000/500/500 train/val/test) with the ``resnet10_micro`` encoder: 12 epochs of
MoSAiC pre-training on whole patches, linear heads on frozen features, then 30 epochs of end-to-end BCE
fine-tuning (lr 6e-3), within 5 minutes on 2 CPU cores. The fine-tune settings come from a validation-split
sweep (``benchmarks/RESULTS.md``, "Embedded default training"). ResNet-18/50 and BigEarthNet v2 are one flag
away (``--arch resnet50 --data /path``); ``--finetune-epochs 0`` gives the frozen-encoder (linear-probe)
model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLASSIFIER_MODES = ("two-phase", "joint")
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        data: ``"synthetic"`` or a path to a BigEarthNet v2 / SEN12MS root.
        out: Output directory; default ``runs/<name>``.
        arch: Encoder registry name for both modalities.
        embed_dim: Projection dimension.
        epochs: Contrastive pre-training epochs (phase 1).
        head_epochs: Epochs of the multi-label head fit on frozen features (phase 2, cheap).
        finetune_epochs: Epochs of end-to-end BCE fine-tuning of encoders + classifiers after the head fit
            (phase 3, :mod:`.finetune`; 0 = frozen encoders, i.e. the linear-probe result).
        finetune_lr: Peak AdamW learning rate of phase 3 (cosine decay).
        batch_size: Global batch size (split over DDP ranks).
        lr / weight_decay / warmup_epochs / grad_clip: AdamW, cosine schedule with linear warm-up, clip norm.
        head_lr: Learning rate of the phase-2 linear heads.
        temperature / l_intra / l_inter / l_sup: The MoSAiC objective (:class:`~.objective.LossWeights`).
        l_bce: Weight of the classifiers' BCE in phase 1 when ``classifier="joint"``.
        classifier: ``"two-phase"`` (contrastive only, then heads on frozen features) or ``"joint"`` (BCE on
        the
            heads during pre-training too, then the same head refit).
        label_fraction: Fraction of train patches that keep labels; the rest feed only self-supervised terms.
        seed: Seeds weights, data order, label mask and augmentations.
        amp: Mixed precision on CUDA (``auto`` = bf16 where supported else fp16); ignored on CPU.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        num_workers: DataLoader workers for datasets too large to cache in memory.
        n_train / n_val / n_test / patch_size: Synthetic benchmark size (ignored for real data).
        crop_size: Side of the augmented training crops (0: the patch size); evaluation always sees whole
        patches.
        cache_gb: Datasets below this size are preprocessed once and held in memory as tensors.
        log_every: Steps between progress lines.
    """

    data: str = "synthetic"
    out: str | None = None
    arch: str = "resnet10_micro"
    embed_dim: int = 128
    epochs: int = 12
    head_epochs: int = 200
    finetune_epochs: int = 30
    finetune_lr: float = 6e-3
    batch_size: int = 128
    lr: float = 3e-3
    head_lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    grad_clip: float = 3.0
    temperature: float = 0.1
    l_intra: float = 1.0
    l_inter: float = 1.0
    l_sup: float = 1.0
    l_bce: float = 1.0
    classifier: str = "two-phase"
    label_fraction: float = 1.0
    seed: int = 0
    amp: str = "auto"
    device: str = "auto"
    num_workers: int = 0
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 500
    patch_size: int = 48
    crop_size: int = 0
    cache_gb: float = 4.0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIER_MODES:
            raise ValueError(f"classifier must be one of {CLASSIFIER_MODES}, got {self.classifier!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if min(self.epochs, self.head_epochs, self.finetune_epochs) < 0 or self.batch_size < 2:
            raise ValueError("epochs, head_epochs and finetune_epochs must be >= 0 and batch_size >= 2")
        if min(self.lr, self.head_lr, self.finetune_lr) <= 0 or self.temperature <= 0:
            raise ValueError("lr, head_lr, finetune_lr and temperature must be > 0")

    @property
    def data_tag(self) -> str:
        return "synthetic" if self.data == "synthetic" else Path(self.data).name or "data"

    @property
    def name(self) -> str:
        """Run name derived from the fields that matter for comparing runs."""
        terms = "".join(t for t, w in (("i", self.l_intra), ("x", self.l_inter), ("s", self.l_sup)) if w > 0)
        return (
            f"{self.data_tag}-{self.arch}-lf{self.label_fraction:g}-{self.classifier}-{terms or 'sup'}"
            f"-e{self.epochs}-s{self.seed}"
        )

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls(**json.loads(text))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
