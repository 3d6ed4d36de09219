"""From a data spec to batches of tensors: sources, contract, in-memory cache or streaming loader.

Small datasets (the synthetic benchmark, test fixtures) are preprocessed once with the shared numpy
preprocessing
(:class:`~mosaic_edge.data.base.PatchDataset`) and held as tensors, so an epoch costs only the model; large
ones
(BigEarthNet v2) stream through a ``DataLoader`` with workers. Both are driven by explicit index batches, so
the
data order is a pure function of ``(seed, epoch)`` and a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchDataset, PatchSource
from mosaic_edge.data.sources import SYNTHETIC, DataSpec
from mosaic_edge.train.config import TrainConfig


def data_spec(cfg: TrainConfig) -> DataSpec:
    """The data of a training config as a :class:`DataSpec` (what the checkpoint records)."""
    if cfg.data != SYNTHETIC:
        return DataSpec(cfg.data)
    from mosaic_edge.data.synthetic import SyntheticConfig

    synthetic = SyntheticConfig(
        seed=cfg.seed,
        n_train=cfg.n_train,
        n_val=cfg.n_val,
        n_test=cfg.n_test,
        patch_size=cfg.patch_size,
        stats_samples=min(256, max(cfg.n_train, 1)),
    )
    return DataSpec(SYNTHETIC, dataclasses.asdict(synthetic))


def open_split(cfg: TrainConfig, split: str) -> PatchSource:
    """The :class:`PatchSource` of ``split`` for the config's data."""
    return data_spec(cfg).open(split)


def contract_for_config(cfg: TrainConfig) -> Contract:
    """Normalisation statistics, classes and patch size of the config's data (no thresholds tuned yet)."""
    return data_spec(cfg).contract()


@dataclass
class TensorSplit:
    """A whole split preprocessed into tensors: sar [N,2,P,P], optical [N,12,P,P], labels [N,C], labelled
    [N]."""

    sar: torch.Tensor
    optical: torch.Tensor
    labels: torch.Tensor
    labelled: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def iter_batches(self, batches: list[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        for idx in batches:
            yield {
                "sar": self.sar[idx],
                "optical": self.optical[idx],
                "labels": self.labels[idx],
                "labelled": self.labelled[idx],
            }


class StreamingSplit:
    """Same interface as :class:`TensorSplit`, reading through a ``DataLoader`` (for datasets too big for
    RAM)."""

    def __init__(self, dataset: PatchDataset, num_workers: int):
        self.dataset = dataset
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labelled(self) -> torch.Tensor:
        """Which patches keep their labels (the dataset's seeded mask)."""
        return torch.from_numpy(self.dataset.labelled)

    def iter_batches(self, batches: list[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        # PatchDataset is map-style (len + getitem) without subclassing torch's Dataset: the core never imports
        # torch, and DataLoader only needs the protocol.
        loader: torch.utils.data.DataLoader[dict[str, torch.Tensor]] = torch.utils.data.DataLoader(
            self.dataset,  # type: ignore[arg-type]
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.num_workers,
            collate_fn=_collate,
            persistent_workers=False,
        )
        yield from loader


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "sar": torch.from_numpy(np.stack([s["sar"] for s in samples])),
        "optical": torch.from_numpy(np.stack([s["optical"] for s in samples])),
        "labels": torch.from_numpy(np.stack([s["labels"] for s in samples])),
        "labelled": torch.tensor([s["labelled"] for s in samples], dtype=torch.bool),
    }


def load_split(
    cfg: TrainConfig, contract: Contract, split: str, label_fraction: float = 1.0
) -> TensorSplit | StreamingSplit:
    """Open ``split`` and cache it as tensors when it fits in ``cfg.cache_gb``, else stream it."""
    source = open_split(cfg, split)
    ds = PatchDataset(source, contract, label_fraction=label_fraction, seed=cfg.seed)
    bands = len(contract.sar_bands) + len(contract.optical_bands)
    nbytes = len(ds) * bands * contract.patch_size**2 * 4
    if nbytes > cfg.cache_gb * 1e9:
        return StreamingSplit(ds, cfg.num_workers)
    all_idx = torch.arange(len(ds))
    chunks = all_idx.split(256)
    if cfg.num_workers > 0 and len(ds) > 256:
        parts = list(StreamingSplit(ds, cfg.num_workers).iter_batches(list(chunks)))
    else:
        parts = [_collate([ds[int(i)] for i in c]) for c in chunks] if len(ds) else []
    if not parts:
        raise ValueError(f"split {split!r} of {cfg.data} is empty")
    return TensorSplit(
        **{k: torch.cat([p[k] for p in parts]) for k in ("sar", "optical", "labels", "labelled")}
    )


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    shuffle: bool = True,
    drop_last: bool = True,
) -> list[torch.Tensor]:
    """This rank's index batches for one epoch: a seeded permutation of ``range(n)``, split over ranks.

    ``batch_size`` is the global batch; each rank gets ``batch_size // world`` per step, and every rank gets
    the same
    number of steps (the tail that does not fill a global batch is dropped when ``drop_last``).
    """
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    local = batch_size // world
    if local < 1:
        raise ValueError(f"batch size {batch_size} is smaller than the {world} ranks")
    steps = n // batch_size if drop_last else -(-n // batch_size)
    out = []
    for s in range(steps):
        chunk = order[s * batch_size : (s + 1) * batch_size]
        out.append(chunk[rank::world] if world > 1 else chunk)
    return [b for b in out if len(b)]
