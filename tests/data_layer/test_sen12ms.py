"""SEN12MS reader on generated real-format fixtures: layout, labels, splits, contract, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from mosaic_edge.contract import S2_BANDS, Contract
from mosaic_edge.data.base import PatchDataset
from mosaic_edge.data.sen12ms import (
    IGBP_TO_SIMPLE,
    SEN12MS,
    SEN12MS_CLASSES,
    igbp_labels,
    read_split_files,
    scene_hash_split,
    scene_of,
    sen12ms_contract,
    split_key,
    stats_sample,
)
from mosaic_edge.data.tiff import read_tiff, write_tiff
from mosaic_edge.errors import ContractMismatchError, DataError, UserError
from tests.support.sen12ms import write_sen12ms_fixture


@pytest.fixture(scope="module")
def sen_root(tmp_path_factory):
    return write_sen12ms_fixture(tmp_path_factory.mktemp("sen12ms"), scenes=3, patches=2)


def _all(root, **kw):
    return [SEN12MS(root, s, **kw) for s in ("train", "validation", "test")]


def test_simplified_igbp_scheme():
    expected = {1: 0, 5: 0, 6: 1, 7: 1, 8: 2, 9: 2, 10: 3, 11: 4, 12: 5, 14: 5, 13: 6, 15: 7, 16: 8, 17: 9}
    for code, cls in expected.items():
        assert IGBP_TO_SIMPLE[code] == cls
    igbp = np.full((10, 10), 17)
    igbp[:, :1] = 1  # 10 % forest: at the threshold -> a label
    igbp[0, 1:6] = 13  # 5 % urban: below
    labels, fractions = igbp_labels(igbp, 0.1)
    assert np.flatnonzero(labels).tolist() == [
        SEN12MS_CLASSES.index("Forest"),
        SEN12MS_CLASSES.index("Water"),
    ]
    assert fractions[SEN12MS_CLASSES.index("Urban/Built-up")] == pytest.approx(0.05)


def test_reads_every_patch_once_with_shapes(sen_root):
    splits = _all(sen_root)
    ids = [i for s in splits for i in s.ids]
    assert len(ids) == len(set(ids)) == 2 * 3 * 2
    source = next(s for s in splits if len(s))
    patch = source.read(0)
    assert set(patch.optical) == set(S2_BANDS)  # B10 dropped
    assert all(a.shape == (256, 256) and a.dtype == np.uint16 for a in patch.optical.values())
    assert patch.sar["VV"].shape == (256, 256) and patch.sar["VV"].dtype == np.float32
    s2_path = source.paths(0)[1]
    raw, geo = read_tiff(s2_path)
    np.testing.assert_array_equal(patch.optical["B11"], raw[11])  # index 11 of the 13-band file
    assert geo is not None and geo.crs == "EPSG:32632"
    lc, _ = read_tiff(source.paths(0)[2])
    np.testing.assert_array_equal(patch.labels, igbp_labels(lc[0], 0.1)[0])


def test_scene_hash_keeps_scenes_together_and_is_deterministic(sen_root):
    for source in _all(sen_root):
        for pid in source.ids:
            scene = pid.rsplit("_p", 1)[0]
            assert scene_hash_split(scene) == source.split
    assert scene_hash_split("ROIs1158_spring_1") == scene_hash_split("ROIs1158_spring_1")
    counts = {s: 0 for s in ("train", "validation", "test")}
    for i in range(2000):
        counts[scene_hash_split(f"ROIs{i}_fall_1")] += 1
    assert 1450 < counts["train"] < 1750 and counts["validation"] > 120 and counts["test"] > 120


def test_explicit_split_file(sen_root, tmp_path):
    csv = tmp_path / "splits.csv"
    csv.write_text("key,split\nROIs1158_spring_1,test\nROIs1868_summer_2_p1,val\n")
    train, val, test = _all(sen_root, split_file=csv)
    assert len(train) == 0 and val.ids == ["ROIs1868_summer_2_p1"]
    assert test.ids == ["ROIs1158_spring_1_p0", "ROIs1158_spring_1_p1"]


def test_split_keys_in_every_toolbox_form():
    assert split_key("ROIs1158_spring/s1_63") == "ROIs1158_spring_63"  # SEN12MS_holdOutScenes.txt
    assert split_key("ROIs2017_winter/s2_144\n") == "ROIs2017_winter_144"  # ValidationScenes.txt
    assert split_key("ROIs1158_spring_s2_124_p100.tif") == "ROIs1158_spring_124_p100"  # test_list.txt
    assert split_key("/data/ROIs1158_spring/lc_124/ROIs1158_spring_lc_124_p7.tif") == "ROIs1158_spring_124_p7"
    assert split_key("ROIs1158_spring_124_p100") == "ROIs1158_spring_124_p100"
    assert split_key("ROIs1158_spring_124") == "ROIs1158_spring_124"
    with pytest.raises(DataError, match="not a SEN12MS scene"):
        split_key("BigEarthNet_patch_1", "list.txt:3")


def test_toolbox_lists_hold_out_scenes_as_test(sen_root, tmp_path):
    holdout = tmp_path / "SEN12MS_holdOutScenes.txt"
    holdout.write_text("ROIs1158_spring/s1_2\nROIs1868_summer/s1_3\n")
    train, val, test = _all(sen_root, split_file=[f"test={holdout}"])
    assert {scene_of(i) for i in test.ids} == {"ROIs1158_spring_2", "ROIs1868_summer_3"} and len(test) == 4
    # the other scenes: train, and validation by scene hash when no validation list is given
    rest = set(train.ids) | set(val.ids)
    assert len(rest) == 8 and not rest & set(test.ids)
    assert all(scene_hash_split(scene_of(i), (0.9, 0.1, 0.0)) == "validation" for i in val.ids)
    vlist = tmp_path / "val_list.txt"
    vlist.write_text("ROIs1158_spring_s2_1_p0.tif\n")
    train, val, test = _all(sen_root, split_file=[f"test={holdout}", f"val={vlist}"])
    assert val.ids == ["ROIs1158_spring_1_p0"] and len(train) == 7 and len(test) == 4
    table = read_split_files([f"test={holdout}"])
    assert not table.exhaustive and table.keys == {"ROIs1158_spring_2": "test", "ROIs1868_summer_3": "test"}


def test_split_file_errors(sen_root, tmp_path):
    with pytest.raises(UserError, match="pickled split lists"):
        SEN12MS(sen_root, "train", split_file=[f"test={tmp_path / 'test_list.pkl'}"])
    with pytest.raises(UserError, match="does not exist"):
        SEN12MS(sen_root, "train", split_file=[f"test={tmp_path / 'missing.txt'}"])
    bad = tmp_path / "bad.txt"
    bad.write_text("ROIs1158_spring/s1_2\nnot a scene\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        SEN12MS(sen_root, "train", split_file=[f"test={bad}"])


def test_stats_sample_covers_every_scene_and_is_seeded():
    ids = [f"ROIs{r}_{season}_{scene}_p{p}" for r, season in ((1158, "spring"), (1868, "summer"), (1970, "fall"),
                                                               (2017, "winter"))
           for scene in range(1, 6) for p in range(50)]
    sample = stats_sample(ids, 40, seed=0)
    assert len(sample) == 40 and len(set(sample.tolist())) == 40
    scenes = [scene_of(ids[i]) for i in sample]
    assert len(set(scenes)) == 20 and max(scenes.count(s) for s in set(scenes)) == 2  # 2 per scene, evenly
    assert {ids[i].split("_")[1] for i in sample} == {"spring", "summer", "fall", "winter"}
    assert np.array_equal(sample, stats_sample(ids, 40, seed=0))
    assert not np.array_equal(sample, stats_sample(ids, 40, seed=1))
    assert sorted(stats_sample(ids[:30], 100).tolist()) == list(range(30))
    # the first sorted patches would all come from one scene of one season
    assert {scene_of(i) for i in ids[:40]} == {"ROIs1158_spring_1"}


def test_contract_from_train_split(sen_root):
    train = SEN12MS(sen_root, "train")
    contract = sen12ms_contract(train)
    assert (
        contract.classes == SEN12MS_CLASSES and contract.patch_size == 256 and contract.dataset == "sen12ms"
    )
    assert contract.optical_product == "L1C"
    assert "seed 0" in contract.stats_source and "Level-1C" in contract.stats_source
    with pytest.raises(ContractMismatchError, match="optical_product"):
        contract.check_compatible(contract.replace(optical_product="L2A"))
    assert Contract().optical_product == "L2A"
    assert contract.sar_mean[0] > contract.sar_mean[1]
    sample = PatchDataset(train, contract)[0]
    assert sample["optical"].shape == (12, 256, 256) and sample["labels"].shape == (10,)
    with pytest.raises(UserError):
        sen12ms_contract(SEN12MS(sen_root, "test"))


@pytest.fixture()
def one_scene(tmp_path):
    root = write_sen12ms_fixture(tmp_path, rois=(("ROIs2017", "winter"),), scenes=1, patches=1)
    source = next(s for s in _all(root) if len(s))
    return source


def test_wrong_band_count(one_scene):
    s1, s2, _ = one_scene.paths(0)
    write_tiff(s2, np.ones((12, 256, 256), np.uint16))
    with pytest.raises(DataError, match=f"{s2.name}.*12 bands, expected 13"):
        one_scene.read(0)


def test_wrong_size(one_scene):
    s1, _, _ = one_scene.paths(0)
    write_tiff(s1, np.ones((2, 128, 128), np.float32))
    with pytest.raises(DataError, match=f"{s1.name}.*expected 256x256"):
        one_scene.read(0)


def test_missing_partner_and_truncated(one_scene):
    _, s2, lc = one_scene.paths(0)
    lc.write_bytes(lc.read_bytes()[:1000])
    with pytest.raises(DataError, match=lc.name):
        one_scene.read(0)
    s2.unlink()
    with pytest.raises(DataError, match=f"{s2.name}.*missing S2"):
        one_scene.read(0)


def test_not_a_root(tmp_path):
    with pytest.raises(UserError, match="SEN12MS"):
        SEN12MS(tmp_path, "train")
