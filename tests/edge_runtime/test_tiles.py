"""Tile reading (npz, GeoTIFF pair, BigEarthNet per-band folders), patching and post-processing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.special import expit

from mosaic_edge import patching
from mosaic_edge.contract import sigmoid
from mosaic_edge.data.preprocess import preprocess
from mosaic_edge.edge_runtime import postprocess
from mosaic_edge.edge_runtime.tiles import prepare_tile
from mosaic_edge.errors import DataError
from mosaic_edge.tile_format import MissingPartnerError, TileLimits, load_npz, read_tile
from tests.support.runtime import copy_benv2_tile, raw_tile, write_geotiff_tile, write_npz_tile


def test_npz_tile_matches_shared_preprocessing(tmp_path, contract):
    path = write_npz_tile(tmp_path / "a.npz", 20, 30, seed=3)
    tile = read_tile(path)
    assert tile.id == "a" and tile.kind == "npz" and tile.geo is None
    prep = prepare_tile(tile, contract)
    sar, opt = raw_tile(20, 30, 3)
    ref = preprocess(sar, opt, contract)
    np.testing.assert_array_equal(prep.sar, ref.sar)
    np.testing.assert_array_equal(prep.optical, ref.optical)
    assert not prep.optical_invalid.any()


def test_sar_only_and_cloudy_tiles_mark_optical_invalid(tmp_path, contract):
    for name, kw in (("s.npz", {"optical": False}), ("c.npz", {"cloudy": np.array(True)})):
        prep = prepare_tile(read_tile(write_npz_tile(tmp_path / name, **kw)), contract)
        assert prep.optical_invalid.all()
        np.testing.assert_array_equal(prep.optical[:, :4, :4] if name == "s.npz" else 0, 0)


def test_geotiff_pair_keeps_georeferencing(tmp_path, contract):
    folder = write_geotiff_tile(tmp_path / "g", 40, 40, seed=1)
    tile = read_tile(folder)
    assert tile.kind == "geotiff" and tile.geo.crs == "EPSG:32633"
    wins = patching.windows(40, 40, contract.patch_size)
    assert wins[-1].bounds(tile.geo) == (500240.0, 5799600.0, 500400.0, 5799760.0)


def test_geotiff_pair_mismatches_and_missing_partner(tmp_path):
    with pytest.raises(DataError, match="CRS"):
        read_tile(write_geotiff_tile(tmp_path / "crs", crs2="EPSG:32634"))
    folder = write_geotiff_tile(tmp_path / "p")
    (folder / "s2.tif").unlink()
    with pytest.raises(MissingPartnerError):
        read_tile(folder)
    assert read_tile(folder, allow_sar_only=True).optical is None


def test_benv2_per_band_tile_nested_and_flat(tmp_path, benv2_root, contract):
    nested = copy_benv2_tile(benv2_root, 0, tmp_path / "n")
    flat = tmp_path / "f"
    flat.mkdir()
    for f in nested.rglob("*.tif"):
        shutil.copy(f, flat / f.name)
    a, b = read_tile(nested), read_tile(flat)
    assert a.kind == b.kind == "benv2"
    assert set(a.optical) == set(contract.optical_bands) and a.optical["B01"].shape == (20, 20)
    pa, pb = prepare_tile(a, contract), prepare_tile(b, contract)
    assert pa.shape == (120, 120)
    np.testing.assert_array_equal(pa.optical, pb.optical)


def test_load_npz_refuses_pickles_and_bombs(tmp_path):
    np.savez(tmp_path / "obj.npz", sar=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        load_npz(tmp_path / "obj.npz", TileLimits())
    # A header that declares a huge array while the member holds a few bytes.
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (2, 100_000, 100_000)
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as zf, zf.open("sar.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 16)
    with pytest.raises(DataError, match="declares shape"):
        load_npz(tmp_path / "bomb.npz", TileLimits())


@pytest.mark.parametrize(("size", "patch", "stride", "starts"), [
    (16, 16, None, [0]), (40, 16, None, [0, 16, 24]), (40, 16, 12, [0, 12, 24]), (33, 16, 8, [0, 8, 16, 17]),
])
def test_windows_cover_the_tile(size, patch, stride, starts):
    wins = patching.windows(size, size, patch, stride)
    assert sorted({w.row for w in wins}) == starts
    covered = np.zeros((size, size), bool)
    for w in wins:
        assert w.row + w.height <= size and w.col + w.width <= size
        covered[w.row:w.row + w.height, w.col:w.col + w.width] = True
    assert covered.all()


def test_windows_refuse_bad_stride_and_small_tiles():
    with pytest.raises(Exception, match="stride"):
        patching.windows(40, 40, 16, 17)
    with pytest.raises(Exception, match="smaller"):
        patching.windows(10, 40, 16)


def test_postprocess_thresholds_and_geojson(contract):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, contract.num_classes)).astype(np.float32)
    np.testing.assert_allclose(sigmoid(logits), expit(logits.astype(np.float64)), rtol=1e-12)
    assert sigmoid(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]
    heads = postprocess.choose_heads(np.array([0.1, 0.9]), 0.5)
    assert heads == ["fused", "sar"]
    out = {"logits": logits, "logits_sar": logits[::-1].copy()}
    scores = postprocess.patch_scores(out, heads)
    np.testing.assert_allclose(scores[1], expit(logits[0]))
    from mosaic_edge.data.tiff import GeoInfo

    geo = GeoInfo((10.0, 0.0, 0.0, 0.0, -10.0, 100.0), "EPSG:32633")
    wins = patching.windows(16, 32, 16)
    recs = postprocess.tile_records("t", wins, heads, scores, contract, geo, [0.1, 0.9], {"model_hash": "h"})
    for rec, s in zip(recs, scores, strict=True):
        want = {c for c, v, t in zip(contract.classes, s, contract.thresholds, strict=True) if v >= t}
        assert {lab["name"] for lab in rec["labels"]} == want
        assert [lab["score"] for lab in rec["labels"]] == sorted((lab["score"] for lab in rec["labels"]),
                                                                 reverse=True)
    assert recs[1]["bounds"] == [160.0, -60.0, 320.0, 100.0] and recs[1]["head"] == "sar"
    fc = json.loads(postprocess.to_geojson(recs))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    assert fc["crs"]["properties"]["name"] == "EPSG:32633"
    assert postprocess.to_geojson([{**recs[0], "bounds": None}]) is None
