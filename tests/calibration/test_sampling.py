"""Stratified sampling: every class present when available, band ranges covered, same preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_edge.calibration.sampling import (
    SamplingConfig,
    sample_across_sources,
    sample_calibration_set,
    select_calibration_indices,
    source_quotas,
)
from mosaic_edge.contract import BENV2_CLASSES, S2_BANDS, Contract
from mosaic_edge.data.base import PatchDataset, RawPatch

P = 8


class FakeSource:
    """Common classes everywhere; class 18 (marine waters) in one patch, class 14 in two; one cloudy patch."""

    classes = BENV2_CLASSES
    split = "train"

    def __init__(self, n: int = 200, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n, n = n, 200  # features for 200 patches, the first ``n`` are served
        self.labels = np.zeros((n, len(BENV2_CLASSES)), dtype=np.float32)
        self.labels[np.arange(n), rng.integers(0, 5, n)] = 1.0
        self.labels[17, 18] = 1.0
        self.labels[[40, 90], 14] = 1.0
        self.brightness = rng.uniform(500, 3000, n)
        self.brightness[123] = 14000.0  # cloud
        self.vv = rng.uniform(-20, -5, n)
        self.vv[7] = -45.0  # calm water: very dark SAR

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> list[str]:
        return [f"p{i}" for i in range(self.n)]

    def read(self, i: int) -> RawPatch:
        sar = {
            "VV": np.full((P, P), self.vv[i], np.float32),
            "VH": np.full((P, P), self.vv[i] - 6, np.float32),
        }
        opt = {b: np.full((P, P), self.brightness[i], np.float32) for b in S2_BANDS}
        return RawPatch(f"p{i}", sar, opt, self.labels[i].copy())


def _contract() -> Contract:
    return Contract(patch_size=P)


def test_every_available_class_and_extremes_are_sampled() -> None:
    src = FakeSource()
    # a pool of the whole split: coverage then only depends on the selection
    out = sample_calibration_set(
        src, _contract(), size=24, seed=3, config=SamplingConfig(pool_factor=9), return_ids=True
    )
    assert out["sar"].shape == (24, 2, P, P) and out["optical"].shape == (24, 12, P, P)
    assert out["sar"].dtype == np.float32
    present = out["labels"].sum(axis=0) > 0
    available = src.labels.sum(axis=0) > 0
    np.testing.assert_array_equal(present, available)  # the single marine-waters patch is in
    ids = set(out["id"].tolist())
    assert {"p17", "p123", "p7"} <= ids  # rare class, cloudy optical, dark-water SAR


class LabelledFakeSource(FakeSource):
    """Also offers labels without pixels, like BigEarthNet's metadata table."""

    def label_matrix(self) -> np.ndarray:
        return self.labels[: self.n]


def test_label_matrix_finds_rare_classes_outside_the_pool() -> None:
    src = LabelledFakeSource()
    for seed in range(5):  # a 24-patch pool of 200 misses p17 most of the time; the label matrix never does
        out = sample_calibration_set(
            src, _contract(), size=12, seed=seed, config=SamplingConfig(pool_factor=2), return_ids=True
        )
        assert "p17" in set(out["id"].tolist()) and out["labels"][:, 14].sum() >= 2


def test_uniform_sample_would_miss_the_rare_class() -> None:
    # Guard that the fixture is hard: a seeded uniform draw of the same size misses class 18 most of the time.
    src = FakeSource()
    misses = sum(17 not in np.random.default_rng(s).choice(len(src), 24, replace=False) for s in range(50))
    assert misses > 35


def test_uses_the_runtime_preprocessing() -> None:
    src = FakeSource(n=10)
    out = sample_calibration_set(src, _contract(), size=10, seed=0, return_ids=True)
    ds = PatchDataset(src, _contract())
    for k, pid in enumerate(out["id"]):
        ref = ds[int(pid[1:])]
        np.testing.assert_array_equal(out["sar"][k], ref["sar"])
        np.testing.assert_array_equal(out["optical"][k], ref["optical"])


def test_deterministic_and_seed_dependent() -> None:
    src = FakeSource()
    a = sample_calibration_set(src, _contract(), size=20, seed=1, return_ids=True)["id"]
    b = sample_calibration_set(src, _contract(), size=20, seed=1, return_ids=True)["id"]
    c = sample_calibration_set(src, _contract(), size=20, seed=2, return_ids=True)["id"]
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_select_indices_pure() -> None:
    labels = np.zeros((100, 3))
    labels[:, 0] = 1
    labels[5, 2] = 1
    means = np.random.default_rng(0).normal(size=(100, 2))
    idx = select_calibration_indices(labels, means, size=16, seed=0)
    assert len(idx) == 16 and len(set(idx.tolist())) == 16 and 5 in idx
    extremes = {int(f(means[:, b])) for f in (np.argmin, np.argmax) for b in (0, 1)}
    assert extremes <= set(idx.tolist())
    # shares are bounded: with 40 patches of the rare class 2, labels take at most half, the rest stays random
    labels[:40, 2] = 1
    cfg = SamplingConfig(min_per_class=40, label_share=0.25, range_share=0.0)
    idx = select_calibration_indices(labels, means, size=16, seed=0, config=cfg)
    assert labels[idx, 2].sum() < 14  # uncapped, the label stage alone would take all 16
    assert len(select_calibration_indices(labels[:4], means[:4], size=10)) == 4


def test_small_source_gives_everything() -> None:
    out = sample_calibration_set(FakeSource(n=5), _contract(), size=256)
    assert out["sar"].shape[0] == 5


@pytest.mark.parametrize("size", [0, -1])
def test_size_must_be_positive(size: int) -> None:
    from mosaic_edge.errors import UserError

    with pytest.raises(UserError):
        sample_calibration_set(FakeSource(n=20), _contract(), size=size)


def test_quotas_split_evenly_and_pass_a_small_sources_surplus_on() -> None:
    assert source_quotas([100, 100], 64) == [32, 32]
    assert source_quotas([10, 100, 100], 64) == [10, 27, 27]
    assert source_quotas([10, 5], 64) == [10, 5]
    assert sum(source_quotas([3, 50, 7, 1000], 101)) == 101


def test_set_is_drawn_across_sources_and_says_how_many_from_each() -> None:
    contract = Contract(patch_size=P)
    small, big = FakeSource(n=12, seed=1), FakeSource(n=200, seed=2)
    calib, draws = sample_across_sources([("small", small), ("big", big)], contract, size=40, seed=3)
    assert [(d.source, d.available, d.drawn) for d in draws] == [("small", 12, 12), ("big", 200, 28)]
    assert len(calib["sar"]) == 40 and calib["optical"].shape == (40, 12, P, P) and len(calib["id"]) == 40
    assert sorted(calib["id"][:12]) == sorted(small.ids)  # the whole small source
    again, _ = sample_across_sources([("small", small), ("big", big)], contract, size=40, seed=3)
    np.testing.assert_array_equal(again["id"], calib["id"])  # seeded
    other, _ = sample_across_sources([("small", small), ("big", big)], contract, size=40, seed=4)
    assert list(other["id"][12:]) != list(calib["id"][12:])
    with pytest.raises(Exception, match="empty"):
        sample_across_sources([("none", FakeSource(n=0))], contract, size=4)
