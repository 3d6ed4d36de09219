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
    assert prep.optical_invalid is None and prep.optical_usable  # every optical pixel usable


def test_raw_form_keeps_physical_units_and_fills_nonfinite_with_the_band_mean(tmp_path, contract):
    raw = contract.replace(input_form="raw")
    sar, opt = raw_tile(20, 30, 3)
    prep = prepare_tile(read_tile(write_npz_tile(tmp_path / "a.npz", 20, 30, seed=3)), raw)
    assert prep.input_form == "raw" and prep.optical.dtype == np.uint16  # cast to float32 only when cut
    np.testing.assert_array_equal(prep.sar, sar)
    np.testing.assert_array_equal(prep.optical, opt)
    assert prep.optical_invalid is None and prep.sar_invalid_fraction == 0.0
    sar[0, 1, 2], sar[1, 3, 3] = np.nan, -np.inf
    opt[:, 4, 5] = 0  # L2A no-data pixel
    optf = opt.astype(np.float32)
    optf[7, 6, 6] = np.nan
    from mosaic_edge.tile_format import write_tile

    prep = prepare_tile(read_tile(write_tile(tmp_path / "b.npz", sar, optf)), raw)
    assert prep.sar[0, 1, 2] == np.float32(contract.sar_mean[0]) and prep.sar[1, 3, 3] == np.float32(
        contract.sar_mean[1])
    assert prep.optical[7, 6, 6] == np.float32(contract.optical_mean[7])
    assert prep.sar_invalid_fraction == pytest.approx(2 / 600)
    assert sorted(zip(*np.nonzero(prep.optical_invalid), strict=True)) == [(4, 5), (6, 6)]
    ref = preprocess(sar, optf, contract)
    assert ref.sar_invalid_fraction == prep.sar_invalid_fraction


def test_sar_only_and_cloudy_tiles_mark_optical_invalid(tmp_path, contract):
    for form in ("standardised", "raw"):
        c = contract.replace(input_form=form)
        for name, kw in (("s.npz", {"optical": False}), ("c.npz", {"cloudy": np.array(True)})):
            prep = prepare_tile(read_tile(write_npz_tile(tmp_path / name, **kw)), c)
            assert prep.optical_invalid.all() and not prep.optical_usable
            assert (prep.optical is None) == (name == "s.npz")


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
    assert recs[1]["crs"] == "EPSG:32633"  # JSON Lines keep the native grid
    fc = json.loads(postprocess.to_geojson(recs))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2 and "crs" not in fc  # RFC 7946
    assert [f["properties"]["bounds"] for f in fc["features"]] == [r["bounds"] for r in recs]
    assert postprocess.to_geojson([{**recs[0], "bounds": None}]) is None


def test_one_read_gives_the_fingerprint_and_the_same_arrays(tmp_path, benv2_root):
    from mosaic_edge.tile_format import fingerprint, read_files

    tiles = [write_npz_tile(tmp_path / "a.npz", 20, 30, seed=3, transform=(10, 0, 5, 0, -10, 7), crs="EPSG:1"),
             write_geotiff_tile(tmp_path / "g", 40, 40, seed=1), copy_benv2_tile(benv2_root, 2, tmp_path / "b")]
    (tiles[2] / "a-b").write_bytes(b"x")  # '-' sorts before '/' as text, not as a path part
    (tiles[2] / "a").mkdir()
    (tiles[2] / "a" / "b").write_bytes(b"y")
    for path in tiles:
        files = read_files(path)
        assert files.sha256() == fingerprint(path) == _reference_fingerprint(path)
    arrays = load_npz(tiles[0], TileLimits())
    with np.load(tiles[0], allow_pickle=False) as ref:
        assert sorted(arrays) == sorted(ref.files)
        for key in ref.files:
            np.testing.assert_array_equal(arrays[key], ref[key])
            assert arrays[key].dtype == ref[key].dtype


def _reference_fingerprint(path):
    """The tile identity as defined from the start: names relative to the tile, files in path order."""
    import hashlib
    import os
    from pathlib import Path

    files = sorted(Path(r) / f for r, _, fs in os.walk(path) for f in fs) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def test_tile_folders_refuse_fifos_deep_nesting_and_too_many_files(tmp_path):
    import os

    from mosaic_edge.tile_format import read_files

    fifo = write_geotiff_tile(tmp_path / "f")
    os.mkfifo(fifo / "pipe")
    with pytest.raises(DataError, match="pipe is not a regular file"):
        read_files(fifo)  # and does not block waiting for a writer
    deep = write_geotiff_tile(tmp_path / "d")
    (deep / "x" / "y").mkdir(parents=True)
    with pytest.raises(DataError, match="nested deeper"):
        read_files(deep)
    many = write_geotiff_tile(tmp_path / "m")
    for i in range(5):
        (many / f"extra{i}").write_bytes(b"")
    with pytest.raises(DataError, match="more than 4 files"):
        read_files(many, TileLimits(max_files=4))


@pytest.mark.parametrize("writer", ["savez", "savez_compressed", "fortran"])
def test_npz_variants_parse_like_numpy(tmp_path, writer):
    sar, opt = raw_tile(12, 10, 5)
    path = tmp_path / "v.npz"
    if writer == "fortran":
        np.savez(path, sar=np.asfortranarray(sar), optical=np.asfortranarray(opt), cloudy=np.asarray(True))
    else:
        getattr(np, writer)(path, sar=sar, optical=opt, crs=np.asarray("EPSG:32633"))
    arrays = load_npz(path, TileLimits())
    with np.load(path, allow_pickle=False) as ref:
        for key in ref.files:
            np.testing.assert_array_equal(arrays[key], ref[key])
    tile = read_tile(path)
    np.testing.assert_array_equal(tile.sar, sar)
    np.testing.assert_array_equal(tile.optical, opt)


def test_npz_payload_corruption_is_caught(tmp_path):
    path = write_npz_tile(tmp_path / "c.npz", 16, 16)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the optical payload
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="CRC"):
        read_tile(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DataError, match="unreadable .npz"):
        read_tile(path)


def test_band_folder_matches_the_training_reader(tmp_path, benv2_root):
    from mosaic_edge.data.benv2 import BigEarthNetV2, read_benv2_patch

    src = BigEarthNetV2(benv2_root, "train")
    for i in range(len(src)):
        tile = read_tile(copy_benv2_tile(benv2_root, i, tmp_path / f"t{i}"))
        s1, s2 = src.folders(i)
        ref = read_benv2_patch(s1, s2, patch_size=None)
        for got, want in ((tile.sar, ref.sar), (tile.optical, ref.optical)):
            assert sorted(got) == sorted(want)
            for band in want:
                np.testing.assert_array_equal(got[band], want[band])
                assert got[band].dtype == want[band].dtype
        assert tile.geo == ref.meta["geo"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (tmp_path / "t0").rglob("*.tif"):
        shutil.copy(f, flat / f.name)
    (flat / next(flat.glob("*_B03.tif")).name.replace("_B03", "_B03x")).write_bytes(b"")  # not a band file
    (flat / next(flat.glob("*_B03.tif")).name).unlink()
    with pytest.raises(DataError, match="S2 band B03 missing"):
        read_tile(flat)


@pytest.mark.parametrize("geo", [None, (10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0)])
def test_encoded_tile_is_byte_for_byte_json_dumps_of_the_records(contract, geo):
    from mosaic_edge.data.tiff import GeoInfo

    rng = np.random.default_rng(1)
    c = contract.replace(classes=("Zürich ünique", *contract.classes[1:]))  # non-ASCII names are escaped
    wins = patching.windows(40, 56, 16)
    logits = rng.normal(0, 6, (len(wins), c.num_classes))
    logits[0, :4] = [-30.0, -9.3, 12.0, 0.0]  # scores below 1e-4 print in exponent notation; 1.0; exactly 0.5
    logits[1] = 0.7  # ties among the labels
    scores = sigmoid(logits)
    heads = postprocess.choose_heads(rng.random(len(wins)), 0.5)
    inv = rng.random(len(wins))
    g = None if geo is None else GeoInfo(geo, "EPSG:32633")
    extra = {"model_hash": "h" * 64, "runner": "ort", "precision": "int8", "input_sha256": "s" * 64,
             "timings_ms": {"read": 0.123, "verify": 0.2, "queue": 1.0}}
    records = postprocess.tile_records("T-1", wins, heads, scores, c, g, inv, extra)
    summary = postprocess.tile_summary("T-1", wins, heads, scores, c, g, extra)
    jsonl, geojson = postprocess.encode_tile("T-1", wins, heads, scores, c, g, inv, extra)
    assert jsonl == postprocess.to_jsonl([summary, *records])
    assert geojson == postprocess.to_geojson(records, summary)
    assert (geojson is None) == (geo is None)
    with pytest.raises(ValueError, match="not JSON compliant"):
        postprocess.encode_tile("T-1", wins, heads, scores * np.nan, c, g, inv, extra)


def test_windows_cut_once_per_tile_or_batch_by_batch_give_the_same_batches(tmp_path, contract):
    from mosaic_edge.edge_runtime import pipeline
    from tests.support.runtime import write_tiny_export

    raw = contract.replace(input_form="raw")
    path = write_npz_tile(tmp_path / "w.npz", 40, 50, seed=6)
    prepared = prepare_tile(read_tile(path), raw)
    whole = pipeline.cut(prepared, raw, "w.npz", "")
    lazy = pipeline.cut(prepared, raw, "w.npz", "", precut_max_bytes=0)
    assert whole.inputs is not None and whole.source is None  # the file's bytes are no longer held
    assert lazy.inputs is None and lazy.source is prepared and whole.n == lazy.n == 12
    assert whole.inputs["optical"].dtype == np.float32 and whole.inputs["optical"].flags.c_contiguous

    from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner

    model = write_tiny_export(tmp_path / "m", contract)
    with OnnxRuntimeRunner(model / "model.onnx", threads=1) as r:
        parts = [(whole, 3, 9)]
        view = pipeline.batch_inputs(r, 8, parts)
        assert all(np.shares_memory(view[k], whole.inputs[k]) for k in view)  # one job: no copy at all
        for a, b in ((0, 5), (5, 12)):
            got = pipeline.fill(r.input_buffers(16), [(whole, a, b), (lazy, 0, 2)])
            want = pipeline.fill({k: np.empty_like(v) for k, v in r.input_buffers(16).items()},
                                 [(lazy, a, b), (whole, 0, 2)])
            for k in got:
                np.testing.assert_array_equal(got[k], want[k])
                assert len(got[k]) == b - a + 2


def test_a_tile_of_another_product_level_is_refused(tmp_path, contract, benv2_root):
    """SEN12MS-style L1C optical served to an L2A (BigEarthNet) model, or the reverse, is refused, not mixed."""
    l1c = read_tile(write_npz_tile(tmp_path / "l1c.npz", optical_product="L1C"))
    assert l1c.optical_product == "L1C"
    with pytest.raises(DataError, match="l1c: optical data is Sentinel-2 L1C, the model takes L2A"):
        prepare_tile(l1c, contract)
    prepare_tile(l1c, contract.replace(optical_product="L1C"))  # an L1C model takes it
    sar_only = read_tile(write_npz_tile(tmp_path / "s1.npz", optical=False, optical_product="L1C"))
    prepare_tile(sar_only, contract)  # no optical data, nothing to mix
    undeclared = read_tile(write_npz_tile(tmp_path / "plain.npz"))
    assert undeclared.optical_product is None
    prepare_tile(undeclared, contract)
    folder = read_tile(copy_benv2_tile(benv2_root, 0, tmp_path / "ben"))  # S2A_MSIL2A_... patch names
    assert folder.optical_product == "L2A"
    with pytest.raises(ValueError, match="optical_product"):
        write_npz_tile(tmp_path / "bad.npz", optical_product="L3")
