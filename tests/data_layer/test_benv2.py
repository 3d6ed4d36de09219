"""BigEarthNet v2 reader on the 24 real pairs in tests/data/benv2-mini, and bad files naming the file."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from mosaic_edge.contract import BENV2_CLASSES, BENV2_STATS, S2_BANDS, S2_GSD
from mosaic_edge.data.base import PatchDataset
from mosaic_edge.data.benv2 import (
    SNOW_CLOUD_METADATA,
    BigEarthNetV2,
    benv2_contract,
    read_benv2_patch,
    read_benv2_patch_dirs,
)
from mosaic_edge.data.benv2_writer import write_metadata
from mosaic_edge.data.tiff import write_tiff
from mosaic_edge.errors import DataError, UserError


def _rows(root, name="metadata.parquet"):
    return pq.read_table(root / name).to_pylist()


def test_split_sizes_match_metadata(benv2_root):
    clean, snowy = _rows(benv2_root), _rows(benv2_root, SNOW_CLOUD_METADATA)
    assert (len(clean), len(snowy)) == (18, 6)
    for split in ("train", "validation", "test"):
        n_clean = sum(r["split"] == split for r in clean)
        n_all = n_clean + sum(r["split"] == split for r in snowy)
        assert len(BigEarthNetV2(benv2_root, split)) == n_clean
        assert len(BigEarthNetV2(benv2_root, split, include_snow_cloud=True)) == n_all
    assert len(BigEarthNetV2(benv2_root, "val")) == len(BigEarthNetV2(benv2_root, "validation"))


def test_all_24_pairs_read_with_shapes_dtypes_ranges_and_labels(benv2_root):
    rows = {r["patch_id"]: r for r in _rows(benv2_root) + _rows(benv2_root, SNOW_CLOUD_METADATA)}
    seen = 0
    for split in ("train", "validation", "test"):
        source = BigEarthNetV2(benv2_root, split, include_snow_cloud=True)
        for i in range(len(source)):
            patch = source.read(i)
            row = rows[patch.id]
            assert set(patch.optical) == set(S2_BANDS)
            for band, arr in patch.optical.items():
                n = 120 * 10 // S2_GSD[band]
                assert arr.shape == (n, n) and arr.dtype == np.uint16
                assert 0 < arr.max() < 20000
            for band in ("VV", "VH"):
                arr = patch.sar[band]
                assert arr.shape == (120, 120) and arr.dtype == np.float32
                assert np.isfinite(arr).all() and arr.min() > -60 and arr.max() < 30
            assert patch.sar["VH"].mean() < patch.sar["VV"].mean()  # cross-pol is weaker, always
            expected = [BENV2_CLASSES.index(n) for n in row["labels"]]
            assert sorted(np.flatnonzero(patch.labels).tolist()) == sorted(expected)
            assert patch.meta["country"] == row["country"] and patch.meta["split"] == split
            assert patch.meta["contains_seasonal_snow"] == row["contains_seasonal_snow"]
            assert patch.meta["geo"] is None  # these files carry no georeferencing tags
            seen += 1
    assert seen == 24


def test_real_band_means_are_near_published_stats(benv2_root):
    source = BigEarthNetV2(benv2_root, "train")
    vv = np.mean([source.read(i).sar["VV"].mean() for i in range(len(source))])
    mean, std = BENV2_STATS["VV"]
    assert abs(vv - mean) < 2 * std


def test_dataset_samples_with_published_contract(benv2_root):
    contract = benv2_contract()
    assert contract.dataset == "benv2" and contract.classes == BENV2_CLASSES
    ds = PatchDataset(BigEarthNetV2(benv2_root, "test"), contract, label_fraction=0.5, seed=1)
    sample = ds[0]
    assert sample["sar"].shape == (2, 120, 120) and sample["optical"].shape == (12, 120, 120)
    assert sample["sar"].dtype == sample["optical"].dtype == np.float32
    assert abs(float(sample["optical"].mean())) < 5
    assert sum(ds[i]["labelled"] for i in range(len(ds))) == round(0.5 * len(ds))


def test_read_dirs_infers_size(benv2_root):
    s1, s2 = BigEarthNetV2(benv2_root, "train").folders(0)
    patch = read_benv2_patch_dirs(s1, s2, patch_size=None)
    assert patch.optical["B01"].shape == (20, 20) and patch.labels is None


def test_unknown_split_and_root(benv2_root, tmp_path):
    with pytest.raises(UserError, match="split"):
        BigEarthNetV2(benv2_root, "training")
    with pytest.raises(UserError, match="metadata.parquet"):
        BigEarthNetV2(tmp_path, "train")


@pytest.fixture()
def one_pair(benv2_root, tmp_path):
    """A copy of one real pair with its own metadata.parquet; returns (root, s1_dir, s2_dir)."""
    source = BigEarthNetV2(benv2_root, "train")
    s1, s2 = source.folders(0)
    root = tmp_path / "root"
    d1 = root / s1.relative_to(benv2_root)
    d2 = root / s2.relative_to(benv2_root)
    shutil.copytree(s1, d1)
    shutil.copytree(s2, d2)
    write_metadata(root, [r for r in _rows(benv2_root) if r["patch_id"] == source.ids[0]])
    assert BigEarthNetV2(root, "train").read(0).id == source.ids[0]
    return root, d1, d2


def _band(folder, band):
    return folder / f"{folder.name}_{band}.tif"


def test_truncated_band(one_pair):
    root, _, s2 = one_pair
    f = _band(s2, "B05")
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(DataError, match=f.name):
        BigEarthNetV2(root, "train").read(0)


def test_zero_byte_band(one_pair):
    root, s1, _ = one_pair
    f = _band(s1, "VH")
    f.write_bytes(b"")
    with pytest.raises(DataError, match=f.name):
        BigEarthNetV2(root, "train").read(0)


def test_wrong_size_band(one_pair):
    root, _, s2 = one_pair
    f = _band(s2, "B02")
    write_tiff(f, np.ones((60, 60), np.uint16))
    with pytest.raises(DataError, match=f"{f.name}.*expected 120x120"):
        BigEarthNetV2(root, "train").read(0)


def test_wrong_band_count(one_pair):
    root, s1, _ = one_pair
    f = _band(s1, "VV")
    write_tiff(f, np.zeros((3, 120, 120), np.float32))
    with pytest.raises(DataError, match=f.name):
        BigEarthNetV2(root, "train").read(0)


def test_missing_band(one_pair):
    root, _, s2 = one_pair
    _band(s2, "B8A").unlink()
    with pytest.raises(DataError, match="B8A"):
        BigEarthNetV2(root, "train").read(0)


def test_missing_partner_modality(one_pair):
    root, s1, _ = one_pair
    shutil.rmtree(s1)
    with pytest.raises(DataError, match=f"{s1.name}.*S1"):
        BigEarthNetV2(root, "train").read(0)
    with pytest.raises(DataError, match="S1"):
        read_benv2_patch(s1, one_pair[2])


def test_read_dirs_rectangular_runtime_tile(tmp_path):
    for band in S2_BANDS:
        f = S2_GSD[band] // 10
        write_tiff(tmp_path / "s2" / f"tile_{band}.tif", np.full((240 // f, 360 // f), 500, np.uint16))
    for band in ("VV", "VH"):
        write_tiff(tmp_path / "s1" / f"tile_{band}.tif", np.full((240, 360), -12, np.float32))
    patch = read_benv2_patch(tmp_path / "s1", tmp_path / "s2", patch_size=None)
    assert patch.optical["B09"].shape == (40, 60) and patch.sar["VH"].shape == (240, 360)
    write_tiff(tmp_path / "s2" / "tile_B05.tif", np.ones((120, 120), np.uint16))
    with pytest.raises(DataError, match="tile_B05.tif.*expected 180x120"):
        read_benv2_patch(tmp_path / "s1", tmp_path / "s2", patch_size=None)
