"""Training configuration: one frozen dataclass, defaults and help in one place, output name derived from it
(STYLE.md #5).

Every field carries its help text in its metadata; ``mosaic-edge train`` builds its options from these fields
(:mod:`mosaic_edge.commands.train`), so a default or a help line is written once. The defaults are the embedded
default: ``mosaic-edge train`` with no arguments trains on the synthetic benchmark (48 px patches, 2000 / 500 /
500 train / validation / test) with the ``resnet10_micro`` encoder -- MoSAiC pre-training on whole patches,
linear heads on frozen features, then end-to-end BCE fine-tuning -- in a few minutes on 2 CPU cores
(``benchmarks/RESULTS.md``, "Embedded default training", has the measurements the defaults come from).
ResNet-18/50 and real data are one flag away (``--arch resnet50 --data /path``); ``--finetune-epochs 0`` gives
the frozen-encoder (linear-probe) model.

This module imports no torch: the CLI reads the fields to build its options. Building a config does import the
encoder registry, to validate ``arch``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSIFIER_MODES = ("two-phase", "joint")
AMP_MODES = ("auto", "off", "bf16", "fp16")
SWITCH_MODES = ("auto", "on", "off")


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A field with its CLI help (``cli``: ``flag`` to rename the option, ``short`` for a one-letter alias)."""
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; each field's help is its ``metadata["help"]``."""

    data: str = _opt("synthetic", "synthetic, a packed store (mosaic-edge pack), or a BigEarthNet v2 / SEN12MS "
                     "root.")
    out: str | None = _opt(None, "Output directory (default runs/<name derived from the config>).", short="-o")
    arch: str = _opt("resnet10_micro", "Encoder registry name for both modalities "
                     "(tiny | resnet10_micro | resnet18_narrow | resnet18 | resnet50).")
    embed_dim: int = _opt(128, "Projection dimension of the contrastive embeddings.")
    epochs: int = _opt(12, "Contrastive pre-training epochs (phase 1).")
    head_epochs: int = _opt(200, "Epochs of the multi-label heads on frozen features (phase 2, cheap).")
    finetune_epochs: int = _opt(30, "Epochs of end-to-end BCE fine-tuning after the head fit (phase 3; 0: frozen "
                                "encoders, i.e. the linear-probe model).")
    finetune_lr: float = _opt(6e-3, "Peak AdamW learning rate of phase 3 (cosine decay).")
    batch_size: int = _opt(128, "Global batch size (split over torchrun ranks).")
    lr: float = _opt(3e-3, "Peak AdamW learning rate of phase 1 (linear warm-up, cosine decay).")
    head_lr: float = _opt(1e-2, "Learning rate of the phase-2 linear heads.")
    weight_decay: float = _opt(1e-4, "AdamW weight decay.")
    warmup_epochs: float = _opt(1.0, "Linear warm-up of phase 1, in epochs.")
    grad_clip: float = _opt(3.0, "Gradient clipping norm (0: off).")
    temperature: float = _opt(0.1, "Temperature of the three contrastive terms.")
    l_intra: float = _opt(1.0, "Weight of intra-modality NT-Xent (S1 + S2).")
    l_inter: float = _opt(1.0, "Weight of inter-modality InfoNCE.")
    l_sup: float = _opt(1.0, "Weight of the multi-label supervised contrastive loss (4 suits fully labelled data: "
                        "benchmarks/RESULTS.md, \"SupCon term during pre-training\").")
    l_bce: float = _opt(1.0, "Weight of the classifiers' BCE in phase 1 when --classifier joint.")
    classifier: str = _opt("two-phase", "two-phase (contrastive only, then heads on frozen features) or joint "
                           "(BCE on the heads during pre-training too).")
    label_fraction: float = _opt(1.0, "Fraction of train patches that keep their labels; the others feed only the "
                                 "self-supervised terms.")
    min_labelled: int = _opt(4, "Labelled patches in every pre-training batch when labels are scarce, at most "
                             "half a batch (0: plain shuffling).")
    label_threshold: float | None = _opt(None, "SEN12MS: area fraction from which a class is a label (default "
                                         "0.1).")
    split_file: tuple[str, ...] = _opt((), "SEN12MS: SPLIT=PATH (a toolbox list, e.g. "
                                       "test=SEN12MS_holdOutScenes.txt) or a key,split CSV; repeatable.")
    seed: int = _opt(0, "Seeds weights, data order, label mask and augmentations.")
    amp: str = _opt("auto", "Mixed precision on CUDA: auto (bf16 where supported, else fp16) | bf16 | fp16 | off.")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N.")
    channels_last: str = _opt("auto", "channels_last memory format: auto (on CUDA) | on | off.")
    compile: bool = _opt(False, "torch.compile the model for phase 1 (CUDA; the first steps compile).")
    sync_bn: bool = _opt(True, "SyncBatchNorm under DDP with more than one process (CUDA).")
    num_workers: int = _opt(0, "DataLoader worker processes for streamed and packed data (persistent, pinned "
                            "memory on CUDA).")
    n_train: int = _opt(2000, "Synthetic train patches.")
    n_val: int = _opt(500, "Synthetic validation patches.")
    n_test: int = _opt(500, "Synthetic test patches.")
    patch_size: int = _opt(48, "Synthetic patch size (multiple of 6).")
    crop_size: int = _opt(0, "Side of the augmented pre-training crops (0: the patch size); evaluation always "
                          "sees whole patches.")
    cache_gb: float = _opt(4.0, "Raw datasets below this size are preprocessed once and held in memory.")
    log_every: int = _opt(10, "Steps between progress lines.")

    def __post_init__(self) -> None:
        from mosaic_edge.train.encoders import list_encoders  # the registry (imports torch)

        if self.arch not in list_encoders():
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {list_encoders()}")
        if self.classifier not in CLASSIFIER_MODES:
            raise ValueError(f"classifier must be one of {CLASSIFIER_MODES}, got {self.classifier!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.channels_last not in SWITCH_MODES:
            raise ValueError(f"channels_last must be one of {SWITCH_MODES}, got {self.channels_last!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if min(self.epochs, self.head_epochs, self.finetune_epochs) < 0 or self.batch_size < 2:
            raise ValueError("epochs, head_epochs and finetune_epochs must be >= 0 and batch_size >= 2")
        if min(self.lr, self.head_lr, self.finetune_lr) <= 0 or self.temperature <= 0:
            raise ValueError("lr, head_lr, finetune_lr and temperature must be > 0")
        if self.min_labelled < 0:
            raise ValueError(f"min_labelled must be >= 0, got {self.min_labelled}")
        if self.label_threshold is not None and not 0.0 < self.label_threshold <= 1.0:
            raise ValueError(f"label_threshold must be in (0, 1], got {self.label_threshold}")
        if not isinstance(self.split_file, tuple):  # a list from JSON or the CLI
            object.__setattr__(self, "split_file", tuple(self.split_file))

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
        return cls(**json.loads(text))  # fields a config written by an older version lacks take their defaults

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
