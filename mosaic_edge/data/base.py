"""What every reader yields, and the dataset that turns raw patches into model samples.

Readers (BigEarthNet v2, SEN12MS, the synthetic benchmark) implement :class:`PatchSource`: ``len()``, ``ids`` and
``read(i) -> RawPatch`` with raw physical units. :class:`PatchDataset` applies the shared preprocessing
(:mod:`mosaic_edge.data.preprocess`) and yields sample dicts keyed by modality (STYLE.md #4)::

    {"sar": float32 [2,H,W], "optical": float32 [12,H,W], "labels": float32 [C] multi-hot,
     "labelled": bool, "id": str}

A patch outside the labelled fraction (low-label training) has ``labelled=False`` and all-zero ``labels``: its
true labels never leave the dataset, so no consumer can use them by mistake.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.data.preprocess import preprocess


@dataclass
class RawPatch:
    """One S1/S2 pair in physical units, before preprocessing.

    Attributes:
        id: Patch identifier (BigEarthNet ``patch_id``, SEN12MS file stem, ``synthetic-<split>-<i>``).
        sar: Band name -> 2-D float32 backscatter in dB (``VV``, ``VH``).
        optical: Band name -> 2-D reflectance x 1e4 at the band's native resolution.
        labels: float32 multi-hot [C] in the source's class order, or None when unknown.
        meta: Free-form extras (country, season, cloud flag, georeferencing).
    """

    id: str
    sar: dict[str, np.ndarray]
    optical: dict[str, np.ndarray]
    labels: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PatchSource(Protocol):
    """A split of a dataset that reads raw patches by index."""

    classes: tuple[str, ...]
    split: str

    def __len__(self) -> int: ...

    @property
    def ids(self) -> list[str]: ...

    def read(self, index: int) -> RawPatch: ...


def labelled_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Fixed, seeded choice of which of ``n`` samples keep their labels (low-label training).

    At least one sample stays labelled when ``fraction > 0``; the mask for a smaller fraction is a subset of the
    mask for a larger one with the same seed, so label-fraction sweeps are nested.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label fraction must be in [0, 1], got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    if fraction > 0:
        k = max(k, 1)
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask


class PatchDataset:
    """Map-style dataset of preprocessed samples over a :class:`PatchSource`.

    Args:
        source: The reader.
        contract: Normalisation and band order (must list the source's classes in the same order).
        label_fraction: Fraction of samples that keep their labels; the rest report ``labelled=False`` and
            all-zero labels.
        seed: Seed of the labelled mask.
    """

    def __init__(self, source: PatchSource, contract: Contract, label_fraction: float = 1.0, seed: int = 0):
        if tuple(source.classes) != tuple(contract.classes):
            raise ValueError("source classes and contract classes differ")
        self.source = source
        self.contract = contract
        self.labelled = labelled_mask(len(source), label_fraction, seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.source.read(index)
        size = (self.contract.patch_size, self.contract.patch_size)
        pre = preprocess(raw.sar, raw.optical, self.contract, size=size)
        labelled = bool(self.labelled[index] and raw.labels is not None)
        labels = raw.labels if labelled and raw.labels is not None else np.zeros(self.contract.num_classes)
        return {
            "sar": pre.sar,
            "optical": pre.optical,
            "labels": np.asarray(labels, dtype=np.float32),
            "labelled": labelled,
            "id": raw.id,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]
