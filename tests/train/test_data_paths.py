"""Training data paths: packed-store splits, the device-side standardisation, loaders built once, unlabelled
patches without labels, and a linear probe that embeds only labelled patches."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchDataset, RawPatch
from mosaic_edge.data.pack import pack_dataset
from mosaic_edge.data.preprocess import preprocess
from mosaic_edge.data.sources import DataSpec, open_source
from mosaic_edge.data.synthetic import SyntheticConfig, SyntheticMosaic, synthetic_contract
from mosaic_edge.train import data as data_mod
from mosaic_edge.train.config import TrainConfig
from mosaic_edge.train.data import StoreSplit, TensorSplit, load_split
from mosaic_edge.train.evaluate import linear_probe
from mosaic_edge.train.finetune import finetune
from mosaic_edge.train.loop import train
from mosaic_edge.train.models import build_model
from mosaic_edge.train.normalise import BatchNormaliser, uint16_to_float
from mosaic_edge.train.store_loader import StoreLoader

SMALL = SyntheticConfig(n_train=40, n_val=16, n_test=16, patch_size=24, stats_samples=40)
TINY = dict(arch="tiny", patch_size=24, n_train=40, n_val=16, n_test=16, batch_size=16, crop_size=16,
            head_epochs=5, finetune_epochs=2, device="cpu", log_every=100, epochs=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-store") / "s"
    pack_dataset(DataSpec("synthetic", dataclasses.asdict(SMALL)), out, workers=0, chunk_size=16)
    return out


def test_batch_normaliser_is_the_shared_preprocessing_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    contract = Contract(patch_size=8)
    sar = rng.normal(-15, 8, (5, 2, 8, 8)).astype(np.float32)
    sar[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    sar[1, 1, 2, 2] = 40.0  # beyond the clip range
    optical = rng.integers(0, 20000, (5, 12, 8, 8)).astype(np.uint16)
    optical[2, :, 3, 3] = 0  # L2A no-data pixel (0 in every band)
    optical[2, 4, 4, 4] = 0  # a single zero band is data
    norm = BatchNormaliser(contract)
    got_s = norm.sar(torch.from_numpy(sar))
    got_o = norm.optical(uint16_to_float(torch.from_numpy(optical.view(np.int16))))
    for i in range(5):
        want = preprocess(sar[i], optical[i], contract)
        assert torch.equal(got_s[i], torch.from_numpy(want.sar)), i
        assert torch.equal(got_o[i], torch.from_numpy(want.optical)), i
    assert got_o[2, :, 3, 3].abs().sum() == 0 and got_o[2, 4, 4, 4] != 0


def test_store_split_matches_the_cached_raw_split(store: Path) -> None:
    cfg = TrainConfig(**TINY, data=str(store))
    raw_cfg = TrainConfig(**TINY)
    contract = synthetic_contract(dataclasses.replace(SMALL, seed=0))
    got, want = load_split(cfg, contract, "validation"), load_split(raw_cfg, contract, "validation")
    assert isinstance(got, StoreSplit) and isinstance(want, TensorSplit)
    idx = [torch.tensor([3, 1, 15]), torch.tensor([0])]
    for a, b in zip(got.iter_batches(idx), want.iter_batches(idx), strict=True):
        assert torch.equal(a["sar"], b["sar"]) and torch.equal(a["labels"], b["labels"])
        assert (a["optical"] - b["optical"]).abs().max() <= 0.5 / min(contract.optical_std) + 1e-6
        assert a["sar"].dtype == a["optical"].dtype == torch.float32 and a["labelled"].dtype == torch.bool
    half = load_split(cfg, contract, "validation", label_fraction=0.5)
    b = next(half.iter_batches([torch.arange(16)]))
    assert int(b["labelled"].sum()) == 8 and b["labels"][~b["labelled"]].abs().sum() == 0  # zeroed at the source
    assert b["labels"][b["labelled"]].sum() > 0


def test_train_and_evaluate_on_a_store_with_persistent_loader_threads(store: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[StoreLoader] = []

    class Counting(StoreLoader):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            built.append(self)

    monkeypatch.setattr(data_mod, "StoreLoader", Counting)
    cfg = TrainConfig(**{**TINY, "epochs": 2, "finetune_epochs": 2}, data=str(store), num_workers=2,
                      label_fraction=0.5, out=str(tmp_path / "run"))
    res = train(cfg)
    assert 0 < res.metrics["test"]["macro_map"] <= 1
    # one loader per split (train, validation, test), whatever the number of epochs and phases
    assert len(built) == 3 and all(b.workers == 2 and not b.pin for b in built)
    from mosaic_edge.train.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(res.checkpoint)
    assert again["data"] == str(store) and again["macro_map"] == pytest.approx(res.metrics["test"]["macro_map"])
    # export reopens the store the checkpoint records: its test split is the gate set, its train split calibrates
    pytest.importorskip("onnxruntime")
    from mosaic_edge.export.pipeline import ExportConfig, run_export

    exp = run_export(res.checkpoint, tmp_path / "export", ExportConfig(
        int8=True, calib_method="minmax", calib_size=8, eval_limit=16, parity_limit=4, max_map_drop_pts=100.0))
    assert exp.report["export"]["data"]["data"] == str(store)
    assert exp.manifest.contract.optical_product == "L2A" and (tmp_path / "export" / "calib.npz").is_file()


@pytest.mark.parametrize("workers", [0, 3])
def test_store_loader_prefetch_never_hands_out_a_refilled_buffer(store: Path, workers: int) -> None:
    source = open_source(store, "train")
    loader = StoreLoader(source, workers)
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.choice(len(source), int(rng.integers(1, 17)), replace=False))
               for _ in range(25)]
    got = 0
    for raw, idx, _ in loader.batches(batches):
        want = source.gather(idx.numpy())
        time.sleep(0.002)  # give the threads time to run ahead
        assert np.array_equal(raw["sar"].numpy(), want["sar"])
        assert np.array_equal(raw["optical"].numpy().view(np.uint16), want["optical"])
        assert np.array_equal(raw["labels"].numpy(), want["labels"])
        got += 1
    assert got == 25
    loader.close()


def test_finetune_iterates_each_epoch_through_one_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(**TINY)
    contract = synthetic_contract(dataclasses.replace(SMALL, seed=0))
    split = load_split(cfg, contract, "train")
    calls: list[int] = []
    real = split.iter_batches

    def spy(batches: list[torch.Tensor], device: Any = None) -> Any:
        calls.append(len(batches))
        return real(batches, device)

    monkeypatch.setattr(split, "iter_batches", spy)
    model = build_model("tiny", 19, 16)
    finetune(model, split, contract, 3, 1e-3, 0, torch.device("cpu"), batch_size=8)
    assert calls == [5, 5, 5]  # one pass per epoch over its 40 // 8 batches, not one per step


def test_linear_probe_embeds_only_the_labelled_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(**{**TINY, "n_train": 200})
    contract = synthetic_contract(dataclasses.replace(SMALL, seed=0))
    split = load_split(cfg, contract, "train")  # all 200 labelled
    seen: list[int] = []
    real = split.iter_batches

    def spy(batches: list[torch.Tensor], device: Any = None) -> Any:
        seen.extend(int(len(b)) for b in batches)
        return real(batches, device)

    monkeypatch.setattr(split, "iter_batches", spy)
    model = build_model("tiny", 19, 16)
    linear_probe(model, cfg, contract, 0.05, torch.device("cpu"), split)
    assert sum(seen) == 10  # 5 % of 200, not 200


class _CorruptUnlabelled:
    """A source whose patches outside the labelled mask carry random labels (or the true ones)."""

    def __init__(self, inner: SyntheticMosaic, unlabelled: np.ndarray, corrupt: bool):
        self.inner, self.unlabelled, self.corrupt = inner, unlabelled, corrupt
        self.classes, self.split = inner.classes, inner.split

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def ids(self) -> list[str]:
        return self.inner.ids

    def read(self, index: int) -> RawPatch:
        raw = self.inner.read(index)
        if self.corrupt and self.unlabelled[index]:
            raw.labels = np.random.default_rng(index).integers(0, 2, len(self.classes)).astype(np.float32)
        return raw


def test_unlabelled_labels_are_zeroed_at_the_source_and_change_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mosaic_edge.data.base import labelled_mask

    cfg = TrainConfig(**{**TINY, "finetune_epochs": 1, "classifier": "joint"}, label_fraction=0.25, min_labelled=4)
    mask = labelled_mask(cfg.n_train, cfg.label_fraction, cfg.seed)
    contract = synthetic_contract(dataclasses.replace(SMALL, seed=0))
    ds = PatchDataset(_CorruptUnlabelled(SyntheticMosaic(SMALL, "train"), ~mask, True), contract, 0.25)
    assert all(ds[i]["labels"].sum() == 0 and not ds[i]["labelled"] for i in np.flatnonzero(~mask))
    results = []
    for corrupt in (False, True):
        def dataset(source: Any, *a: Any, _corrupt: bool = corrupt, **kw: Any) -> PatchDataset:
            if source.split == "train":
                source = _CorruptUnlabelled(source, ~mask, _corrupt)
            return PatchDataset(source, *a, **kw)

        monkeypatch.setattr(data_mod, "PatchDataset", dataset)
        torch.manual_seed(0)
        res = train(cfg.replace(out=str(tmp_path / f"c{corrupt}")))
        results.append((res.metrics["test"]["macro_map"],
                        torch.load(res.checkpoint, weights_only=True)["state_dict"]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(v, results[1][1][k]) for k, v in results[0][1].items())


def test_streamed_raw_split_keeps_one_persistent_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []
    real = torch.utils.data.DataLoader

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            built.append(kw)
            super().__init__(*a, **kw)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Counting)
    cfg = TrainConfig(**TINY, cache_gb=0.0, num_workers=1)  # too big for the cache: streamed through workers
    contract = synthetic_contract(dataclasses.replace(SMALL, seed=0))
    split = load_split(cfg, contract, "train")
    assert isinstance(split, data_mod.StreamingSplit)
    model = build_model("tiny", 19, 16)
    finetune(model, split, contract, 3, 1e-3, 0, torch.device("cpu"), batch_size=8)
    assert len(built) == 1 and built[0]["persistent_workers"] and built[0]["num_workers"] == 1
    assert not built[0]["pin_memory"]  # pinned only for a CUDA device
