"""Synthetic benchmark: determinism, BigEarthNet v2 shapes, generative-model properties, layout round trip."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mosaic_edge.contract import BENV2_CLASSES, S2_BANDS, S2_GSD
from mosaic_edge.data.base import PatchDataset, PatchSource
from mosaic_edge.data.benv2 import BigEarthNetV2
from mosaic_edge.data.synthetic import (
    SyntheticConfig,
    SyntheticMosaic,
    generate_patch,
    synthetic_contract,
    write_benv2_layout,
)
from mosaic_edge.data.synthetic_signatures import class_arrays
from mosaic_edge.errors import UserError

SMALL = SyntheticConfig(n_train=24, n_val=6, n_test=8, stats_samples=16)


def _bytes(patch):
    return (
        b"".join(patch.sar[b].tobytes() for b in ("VV", "VH"))
        + b"".join(patch.optical[b].tobytes() for b in S2_BANDS)
        + patch.labels.tobytes()
    )


def test_same_seed_same_bytes_in_any_order():
    a = [SyntheticMosaic(SMALL, "train").read(i) for i in range(6)]
    b = [SyntheticMosaic(SMALL, "train").read(i) for i in reversed(range(6))][::-1]
    assert [_bytes(x) for x in a] == [_bytes(x) for x in b]


def test_index_split_and_seed_change_the_patch():
    base = _bytes(generate_patch(SMALL, "train", 3))
    assert base != _bytes(generate_patch(SMALL, "train", 4))
    assert base != _bytes(generate_patch(SMALL, "test", 3))
    assert base != _bytes(generate_patch(SyntheticConfig(seed=1), "train", 3))


def test_is_a_patch_source_with_benv2_shapes():
    source = SyntheticMosaic(SMALL, "validation")
    assert isinstance(source, PatchSource)
    assert len(source) == 6 and source.ids[0] == "synthetic-validation-0" and source.classes == BENV2_CLASSES
    patch = source.read(5)
    for band in S2_BANDS:
        n = 120 * 10 // S2_GSD[band]
        assert patch.optical[band].shape == (n, n) and patch.optical[band].dtype == np.uint16
        assert patch.optical[band].min() >= 1
    for band in ("VV", "VH"):
        assert patch.sar[band].shape == (120, 120) and patch.sar[band].dtype == np.float32
        assert np.isfinite(patch.sar[band]).all()
    assert patch.labels.shape == (19,) and patch.labels.dtype == np.float32
    with pytest.raises(IndexError):
        source.read(6)


def test_labels_are_the_classes_above_min_area():
    for i in range(30):
        patch = generate_patch(SMALL, "train", i)
        area = patch.meta["class_area"]
        assert 1 <= len(area) <= 5 and abs(sum(area.values()) - 1) < 1e-9
        expected = sorted(BENV2_CLASSES.index(c) for c, a in area.items() if a > SMALL.min_label_area)
        assert np.flatnonzero(patch.labels).tolist() == expected


def test_cloud_fraction_and_clouds_are_bright_in_s2_only():
    cfg = SyntheticConfig(cloud_fraction=0.5)
    patches = [generate_patch(cfg, "train", i) for i in range(80)]
    cloudy = [p for p in patches if p.meta["cloud_cover"] > 0.3]
    clear = [p for p in patches if not p.meta["contains_cloud_or_shadow"]]
    assert 0.3 < 1 - len(clear) / len(patches) < 0.7
    assert np.mean([p.optical["B02"].mean() for p in cloudy]) > 2 * np.mean(
        [p.optical["B02"].mean() for p in clear]
    )
    # SAR does not see clouds.
    assert (
        abs(np.mean([p.sar["VV"].mean() for p in cloudy]) - np.mean([p.sar["VV"].mean() for p in clear])) < 2
    )


def test_physics_of_single_class_patches():
    """Pure water is dark in NIR and in SAR; forest has a red edge (NIR >> red) and strong VH."""
    cfg = SyntheticConfig(max_regions=1, cloud_fraction=0.0)
    water, forest = BENV2_CLASSES.index("Inland waters"), BENV2_CLASSES.index("Broad-leaved forest")
    found = {}
    for i in range(300):
        p = generate_patch(cfg, "train", i)
        c = int(np.flatnonzero(p.labels)[0])
        if c in (water, forest):
            found.setdefault(c, p)
        if len(found) == 2:
            break
    w, f = found[water], found[forest]
    assert w.optical["B08"].mean() < 500 < f.optical["B08"].mean()
    assert f.optical["B08"].mean() > 2.5 * f.optical["B04"].mean()  # red edge, even leaf-off
    assert w.sar["VV"].mean() < -15 < f.sar["VH"].mean() + 3
    # Speckle: VV of a single-class patch varies by a few dB pixel to pixel.
    assert 1.0 < float(np.std(w.sar["VV"])) < 6.0


def test_designed_inter_class_similarity():
    t = class_arrays()
    rel = lambda a, b: float(np.abs(t["s2"][a] - t["s2"][b]).max() / t["s2"][a].max())  # noqa: E731
    s1 = lambda a, b: float(np.abs(t["s1"][a] - t["s1"][b]).max())  # noqa: E731
    c = BENV2_CLASSES.index
    # Near-identical in S2, separable in S1.
    for a, b in [
        ("Urban fabric", "Industrial or commercial units"),
        ("Inland waters", "Marine waters"),
        ("Pastures", "Natural grassland and sparsely vegetated areas"),
    ]:
        assert rel(c(a), c(b)) < 0.05 and s1(c(a), c(b)) > 2.0
    # Near-identical in S1, separable in S2.
    for a, b in [("Broad-leaved forest", "Coniferous forest"), ("Inland wetlands", "Coastal wetlands")]:
        assert s1(c(a), c(b)) < 0.5 and rel(c(a), c(b)) > 0.25


def test_generation_is_fast():
    generate_patch(SMALL, "train", 0)  # warm caches
    t0 = time.process_time()
    for i in range(40):
        generate_patch(SMALL, "train", i)
    per_patch = (time.process_time() - t0) / 40
    assert per_patch < 0.02, f"{per_patch * 1e3:.1f} ms per patch"  # ~2-4 ms measured; loose for busy CI


def test_contract_from_train_split():
    contract = synthetic_contract(SMALL)
    assert (
        contract.dataset == "synthetic" and contract.classes == BENV2_CLASSES and contract.patch_size == 120
    )
    assert "synthetic train split" in contract.stats_source and "seed=0" in contract.stats_source
    assert contract == synthetic_contract(SyntheticConfig(n_train=24, n_val=6, n_test=8, stats_samples=16))
    # Statistics do not depend on the split sizes, only on the generator knobs.
    assert (
        synthetic_contract(SyntheticConfig(n_train=30, stats_samples=16)).optical_mean
        == contract.optical_mean
    )
    assert contract.sar_mean[0] > contract.sar_mean[1]  # VV brighter than VH
    sample = PatchDataset(SyntheticMosaic(SMALL, "train"), contract)[0]
    assert abs(float(sample["optical"].mean())) < 1.5 and abs(float(sample["sar"].mean())) < 1.5


def test_config_validation():
    with pytest.raises(UserError):
        SyntheticConfig(patch_size=100)
    with pytest.raises(UserError):
        SyntheticConfig(cloud_fraction=1.5)


def test_write_benv2_layout_round_trip(tmp_path):
    cfg = SyntheticConfig(n_train=3, n_val=1, n_test=2)
    write_benv2_layout(cfg, tmp_path, compress=False)
    for split in ("train", "validation", "test"):
        disk, mem = BigEarthNetV2(tmp_path, split), SyntheticMosaic(cfg, split)
        assert len(disk) == len(mem)
        for i in range(len(mem)):
            a, b = disk.read(i), mem.read(i)
            assert _bytes(a) == _bytes(b)
            assert a.meta["geo"] == b.meta["geo"] and a.meta["geo"].crs == "EPSG:32633"
            assert a.meta["contains_cloud_or_shadow"] == b.meta["contains_cloud_or_shadow"]
