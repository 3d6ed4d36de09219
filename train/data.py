"""From a data spec to batches of tensors on the training device.

Three kinds of split, one interface (``len``, ``labelled``, ``labels_known``, ``iter_batches(batches, device)``):

- :class:`TensorSplit`: small datasets (the synthetic benchmark, test fixtures) preprocessed once with the shared
  numpy preprocessing (:class:`~mosaic_edge.data.base.PatchDataset`) and held as tensors.
- :class:`StoreSplit`: a :mod:`packed store <mosaic_edge.data.store>`; each batch is one vectorised gather from the
  memory-mapped arrays (by loader threads when there are any, :mod:`.store_loader`). For a CUDA device it travels
  in raw units through pinned memory and is standardised on the device (:class:`~.normalise.BatchNormaliser`,
  bit-identical to the shared preprocessing); on a CPU the shared numpy preprocessing standardises it.
- :class:`StreamingSplit`: a raw BigEarthNet v2 / SEN12MS root too large to cache, read patch by patch through
  the dataset's reader in ``DataLoader`` workers.

Loaders are built once per split and kept (persistent workers or threads), whatever the number of passes. Batches are
explicit index lists (:mod:`.sampling`), so the data order is a pure function of ``(seed, epoch)``. Unlabelled
patches (low-label training) carry all-zero labels from the source on; ``labelled`` says which are which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchDataset, labelled_mask
from mosaic_edge.data.preprocess import normalise_optical, normalise_sar
from mosaic_edge.data.sources import STORE, SYNTHETIC, DataSpec, reader_options
from mosaic_edge.data.store import StoreSource
from mosaic_edge.errors import UserError
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.normalise import BatchNormaliser, uint16_to_float
from mosaic_edge.train.store_loader import StoreLoader

Batch = dict[str, torch.Tensor]


def data_spec(cfg: TrainConfig) -> DataSpec:
    """The data of a training config as a :class:`DataSpec` (what the checkpoint records; a root is recorded
    absolute, so an export started from another working directory reopens it)."""
    if cfg.data != SYNTHETIC:
        root = str(Path(cfg.data).resolve())
        return DataSpec(root, reader_options(root, cfg.label_threshold, cfg.split_file))
    if cfg.label_threshold is not None or cfg.split_file:
        raise UserError("--label-threshold and --split-file apply to SEN12MS data, not to the synthetic benchmark")
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


def contract_for_config(cfg: TrainConfig) -> Contract:
    """Normalisation statistics, classes and patch size of the config's data (no thresholds tuned yet)."""
    return data_spec(cfg).contract()


class _BatchPlan:
    """The batches of the next pass through a loader: set before each pass, so one ``DataLoader`` with persistent
    workers serves every epoch and every phase."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def loader_kwargs(num_workers: int, device: torch.device | None) -> dict[str, Any]:
    pin = device is not None and device.type == "cuda"
    return {"num_workers": num_workers, "pin_memory": pin, "persistent_workers": num_workers > 0,
            **({"prefetch_factor": 4} if num_workers > 0 else {})}


def _to(batch: Batch, device: torch.device | None) -> Batch:
    if device is None:
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class TensorSplit:
    """A whole split preprocessed into tensors: sar [N,2,P,P], optical [N,12,P,P], labels [N,C], labelled [N]."""

    sar: torch.Tensor
    optical: torch.Tensor
    labels: torch.Tensor
    labelled: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def iter_batches(self, batches: list[torch.Tensor], device: torch.device | None = None) -> Iterator[Batch]:
        for idx in batches:
            yield _to({"sar": self.sar[idx], "optical": self.optical[idx], "labels": self.labels[idx],
                       "labelled": self.labelled[idx]}, device)


class StoreSplit:
    """A split of a packed store, read by index batches from the memory maps (:class:`~.store_loader.StoreLoader`:
    ``num_workers`` gathering threads, pinned buffers on CUDA), standardised on the device."""

    def __init__(self, source: StoreSource, contract: Contract, labelled: np.ndarray, num_workers: int = 0):
        self.source, self.contract = source, contract
        self._labelled = torch.from_numpy(np.asarray(labelled, dtype=bool))
        self.num_workers = num_workers
        self._loaders: dict[bool, StoreLoader] = {}
        self._norm: dict[str, BatchNormaliser] = {}

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labelled(self) -> torch.Tensor:
        return self._labelled

    def loader(self, pin: bool) -> StoreLoader:
        """The split's loader (built once, threads kept), with pinned buffers or not."""
        if pin not in self._loaders:
            self._loaders[pin] = StoreLoader(self.source, self.num_workers, pin)
        return self._loaders[pin]

    def iter_batches(self, batches: list[torch.Tensor], device: torch.device | None = None) -> Iterator[Batch]:
        dev = device or torch.device("cpu")
        cuda = dev.type == "cuda"
        if cuda and str(dev) not in self._norm:
            self._norm[str(dev)] = BatchNormaliser(self.contract, dev)
        for raw, idx, slot in self.loader(pin=cuda).batches(batches):
            keep = self._labelled[idx].to(dev, non_blocking=True)
            labels = raw["labels"].to(dev, non_blocking=True).to(torch.float32) * keep[:, None]  # unlabelled: 0
            if cuda:
                norm = self._norm[str(dev)]
                sar, optical = raw["sar"].to(dev, non_blocking=True), raw["optical"].to(dev, non_blocking=True)
                slot.event = torch.cuda.Event()  # the buffer may be refilled once these copies are done
                slot.event.record()
                sar, optical = norm.sar(sar), norm.optical(uint16_to_float(optical))
            else:  # the shared numpy preprocessing, patch by patch (in cache: faster than whole-batch ops on a CPU)
                c = self.contract
                sar = torch.from_numpy(np.stack([normalise_sar(x, c)[0] for x in raw["sar"].numpy()]))
                optical = torch.from_numpy(np.stack([normalise_optical(x.view(np.uint16), c)[0]
                                                     for x in raw["optical"].numpy()]))
            yield {"sar": sar, "optical": optical, "labels": labels, "labelled": keep}


class StreamingSplit:
    """Same interface as :class:`TensorSplit`, reading a raw dataset through a persistent ``DataLoader``."""

    def __init__(self, dataset: PatchDataset, num_workers: int):
        self.dataset = dataset
        self.num_workers = num_workers
        self._loaders: dict[str, tuple[torch.utils.data.DataLoader[Batch], _BatchPlan]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labelled(self) -> torch.Tensor:
        """Which patches keep their labels (the dataset's seeded mask)."""
        return torch.from_numpy(self.dataset.labelled)

    def iter_batches(self, batches: list[torch.Tensor], device: torch.device | None = None) -> Iterator[Batch]:
        key = str(device)
        if key not in self._loaders:
            plan = _BatchPlan()
            # PatchDataset is map-style (len + getitem) without subclassing torch's Dataset: the core never imports
            # torch, and DataLoader only needs the protocol.
            loader: torch.utils.data.DataLoader[Batch] = torch.utils.data.DataLoader(
                self.dataset,  # type: ignore[arg-type]
                batch_sampler=plan, collate_fn=_collate, **loader_kwargs(self.num_workers, device),
            )
            self._loaders[key] = (loader, plan)
        loader, plan = self._loaders[key]
        plan.batches = [b.tolist() for b in batches]
        for b in loader:
            yield _to(b, device)


def _collate(samples: list[dict[str, Any]]) -> Batch:
    return {
        "sar": torch.from_numpy(np.stack([s["sar"] for s in samples])),
        "optical": torch.from_numpy(np.stack([s["optical"] for s in samples])),
        "labels": torch.from_numpy(np.stack([s["labels"] for s in samples])),
        "labelled": torch.tensor([s["labelled"] for s in samples], dtype=torch.bool),
    }


Split = TensorSplit | StoreSplit | StreamingSplit


def load_split(cfg: TrainConfig, contract: Contract, split: str, label_fraction: float = 1.0) -> Split:
    """Open ``split``: a :class:`StoreSplit` for packed data; raw data cached as tensors when it fits in
    ``cfg.cache_gb``, streamed otherwise."""
    spec = data_spec(cfg)
    source = spec.open(split)
    if spec.kind == STORE:
        assert isinstance(source, StoreSource)
        if tuple(source.classes) != tuple(contract.classes):
            raise UserError(f"{cfg.data}: the store's classes differ from the model's")
        if len(source) == 0:
            raise UserError(f"split {split!r} of {cfg.data} is empty")
        return StoreSplit(source, contract, labelled_mask(len(source), label_fraction, cfg.seed), cfg.num_workers)
    ds = PatchDataset(source, contract, label_fraction=label_fraction, seed=cfg.seed)
    bands = len(contract.sar_bands) + len(contract.optical_bands)
    nbytes = len(ds) * bands * contract.patch_size**2 * 4
    if nbytes > cfg.cache_gb * 1e9:
        return StreamingSplit(ds, cfg.num_workers)
    all_idx = torch.arange(len(ds))
    chunks = list(all_idx.split(256))
    if cfg.num_workers > 0 and len(ds) > 256:
        parts = list(StreamingSplit(ds, cfg.num_workers).iter_batches(chunks))
    else:
        parts = [_collate([ds[int(i)] for i in c]) for c in chunks] if len(ds) else []
    if not parts:
        raise UserError(f"split {split!r} of {cfg.data} is empty")
    return TensorSplit(
        **{k: torch.cat([p[k] for p in parts]) for k in ("sar", "optical", "labels", "labelled")}
    )
