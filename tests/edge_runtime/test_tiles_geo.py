"""Results GIS tools and web maps place correctly: RFC 7946 GeoJSON read back with GDAL (pyogrio) and compared,
window by window, with the tile's own georeferencing; the tile summary; georeferencing that is refused."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mosaic_edge import patching
from mosaic_edge.contract import sigmoid
from mosaic_edge.data.tiff import GeoInfo, write_tiff
from mosaic_edge.edge_runtime import postprocess
from tests.support.geo import (
    densify_lonlat,
    distance_to_rectangle,
    read_geojson_with_gdal,
    signed_area,
    tiff_grid,
)
from tests.support.runtime import raw_tile, read_results, read_summaries, serve_once

pytest.importorskip("pyogrio")
pyproj = pytest.importorskip("pyproj")

# A north-up 10 m grid in UTM 33N far from the central meridian (15 E), at 59.5 N: where projected edges bend.
NORTH = (10.0, 0.0, 300000.0, 0.0, -10.0, 6600000.0)


def _rect(x0, y0, px, py, win):
    return (x0 + win["col"] * px, y0 - (win["row"] + win["height"]) * py, x0 + (win["col"] + win["width"]) * px,
            y0 - win["row"] * py)


def _check_footprint(polys, rect, to_native, pixel, tolerance_px=1.0):
    """Every point of the drawn footprint (straight lon/lat segments) lies within ``tolerance_px`` of the true
    rectangle's boundary, and every true corner within ``tolerance_px`` of a drawn vertex; rings CCW."""
    vertices = []
    for rings in polys:
        exterior = rings[0]
        assert len(rings) == 1 and np.array_equal(exterior[0], exterior[-1])
        assert signed_area(exterior) > 0, "exterior ring is not counter-clockwise (RFC 7946 right-hand rule)"
        pts = densify_lonlat(exterior)
        if len(polys) > 1:  # cut at the antimeridian: the cut runs inside the footprint, along +-180
            pts = pts[np.abs(pts[:, 0]) != 180.0]
        x, y = to_native(pts[:, 0], pts[:, 1])
        assert distance_to_rectangle(np.asarray(x), np.asarray(y), rect).max() <= tolerance_px * pixel
        vertices.append(np.stack(to_native(exterior[:, 0], exterior[:, 1]), axis=1))
    vx = np.concatenate(vertices)
    x0, y0, x1, y1 = rect
    for cx, cy in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)):
        if len(polys) == 1:  # a footprint cut at the antimeridian has new vertices instead of some corners
            assert np.hypot(vx[:, 0] - cx, vx[:, 1] - cy).min() <= tolerance_px * pixel


def test_daemon_geojson_is_rfc7946_and_every_window_lies_within_a_pixel(tmp_path, tiny_onnx):
    tile = tmp_path / "spool" / "incoming" / "g33"
    sar, opt = raw_tile(64, 96, 3)
    geo = GeoInfo(NORTH, "EPSG:32633")
    write_tiff(tile / "s1.tif", sar, geo)
    write_tiff(tile / "s2.tif", opt, geo)
    serve_once(tiny_onnx, tmp_path / "spool")
    spool = tmp_path / "spool"
    records = read_results(spool)["g33"]
    summary = read_summaries(spool)["g33"]
    assert records[0]["crs"] == "EPSG:32633" and records[0]["bounds"] == [300000.0, 6599840.0, 300160.0, 6600000.0]

    text = (spool / "results" / "g33.geojson").read_text()
    fc = json.loads(text)
    assert "crs" not in fc and fc["type"] == "FeatureCollection"
    meta, polys, fields = read_geojson_with_gdal(spool / "results" / "g33.geojson")
    assert meta["crs"] in ("EPSG:4326", "OGC:CRS84")  # GDAL sees WGS 84 longitude/latitude
    assert len(polys) == len(records) + 1 and list(fields["type"]) == ["tile"] + ["window"] * len(records)

    x0, y0, px, py = tiff_grid(spool / "done" / "g33" / "s1.tif")  # the tile's own georeferencing
    to_native = pyproj.Transformer.from_crs(4326, 32633, always_xy=True).transform
    tile_rect = (x0, y0 - 64 * py, x0 + 96 * px, y0)
    _check_footprint(polys[0], tile_rect, to_native, px)
    for k, rec in enumerate(records, start=1):
        window = json.loads(fields["window"][k]) if isinstance(fields["window"][k], str) else fields["window"][k]
        assert window == rec["window"] and int(fields["patch"][k]) == rec["patch"]
        _check_footprint(polys[k], _rect(x0, y0, px, py, window), to_native, px)
    # bbox members: [west, south, east, north] holding every position
    allpts = np.concatenate([poly[0] for feature in polys for poly in feature])
    west, south, east, north = fc["bbox"]
    assert west <= allpts[:, 0].min() and east >= allpts[:, 0].max() and south <= allpts[:, 1].min()
    assert north >= allpts[:, 1].max() and summary["bbox"] == fc["bbox"]
    tile_props = fc["features"][0]["properties"]
    assert tile_props["labels"] == [lab["name"] for lab in summary["labels"]]
    assert tile_props["label_fractions"] == {lab["name"]: lab["fraction"] for lab in summary["labels"]}


def _scene_grid():
    """A Sentinel-2 tile's grid (T33UUP-like: 10,980 px of 10 m), far from the central meridian."""
    return GeoInfo((10.0, 0.0, 199980.0, 0.0, -10.0, 6600000.0), "EPSG:32633")


def _encode(geo, size, patch, contract, seed=0):
    wins = patching.windows(size, size, patch)
    scores = sigmoid(np.random.default_rng(seed).normal(0, 3, (len(wins), contract.num_classes)))
    heads = ["fused"] * len(wins)
    jsonl, geojson = postprocess.encode_tile("S", wins, heads, scores, contract, geo, [0.0] * len(wins),
                                             {"model_hash": "h", "input_sha256": "s"})
    return wins, scores, jsonl, geojson


def test_scene_footprint_is_densified_to_stay_within_a_pixel(tmp_path, contract):
    geo = _scene_grid()
    wins, _, _, geojson = _encode(geo, 10980, 1098, contract)
    path = tmp_path / "scene.geojson"
    path.write_bytes(geojson)
    _, polys, _ = read_geojson_with_gdal(path)
    to_native = pyproj.Transformer.from_crs(4326, 32633, always_xy=True).transform
    tile_rect = geo.window_bounds(0, 0, 10980, 10980)
    _check_footprint(polys[0], tile_rect, to_native, 10.0)
    assert len(polys[0][0][0]) > 5  # densified
    # Drawn with its corners alone, the same footprint would be tens of pixels off: the check can fail.
    fwd = pyproj.Transformer.from_crs(32633, 4326, always_xy=True).transform
    x0, y0, x1, y1 = tile_rect
    lon, lat = fwd([x0, x1, x1, x0, x0], [y1, y1, y0, y0, y1])
    corners = np.stack([lon, lat], axis=1)
    with pytest.raises(AssertionError):
        _check_footprint([[corners[::-1]]], tile_rect, to_native, 10.0)
    for k, win in enumerate(wins, start=1):
        _check_footprint(polys[k], geo.window_bounds(win.row, win.col, win.height, win.width), to_native, 10.0)


def test_footprints_crossing_the_antimeridian_are_cut_in_two(tmp_path, contract):
    # UTM 60N at 65 N: the 180th meridian lies ~141 km east of the zone's central meridian (177 E).
    geo = GeoInfo((10.0, 0.0, 600000.0, 0.0, -10.0, 7210000.0), "EPSG:32660")
    _, _, jsonl, geojson = _encode(geo, 10980, 1098, contract)
    fc = json.loads(geojson)
    tile = fc["features"][0]
    assert tile["geometry"]["type"] == "MultiPolygon"
    west, _south, east, _north = fc["bbox"]
    assert west > 0 > east  # RFC 7946 5.2: west > east across the antimeridian
    for part in tile["geometry"]["coordinates"]:
        lons = np.array(part[0])[:, 0]
        assert lons.min() >= -180.0 and lons.max() <= 180.0 and signed_area(np.array(part[0])) > 0
    path = tmp_path / "am.geojson"
    path.write_bytes(geojson)
    _, polys, _ = read_geojson_with_gdal(path)
    to_native = pyproj.Transformer.from_crs(4326, 32660, always_xy=True).transform
    _check_footprint(polys[0], geo.window_bounds(0, 0, 10980, 10980), to_native, 10.0)
    assert json.loads(jsonl.splitlines()[0])["bbox"] == fc["bbox"]


def test_without_pyproj_a_georeferenced_tile_gets_json_lines_and_one_warning(monkeypatch, caplog, contract):
    import sys

    monkeypatch.setitem(sys.modules, "pyproj", None)
    monkeypatch.setattr(postprocess, "_warned_no_pyproj", False)
    geo = GeoInfo(NORTH, "EPSG:32633")
    with caplog.at_level(logging.WARNING, logger="mosaic_edge.edge_runtime"):
        for _ in range(3):
            _, _, jsonl, geojson = _encode(geo, 48, 16, contract)
            assert geojson is None
            summary = json.loads(jsonl.splitlines()[0])
            assert summary["bbox"] is None and summary["crs"] == "EPSG:32633" and summary["bounds"]
    warnings = [r for r in caplog.records if "pyproj" in r.getMessage()]
    assert len(warnings) == 1 and "mosaic-edge[runtime]" in warnings[0].getMessage()


def test_tile_summary_counts_labels_and_heads(contract):
    wins = patching.windows(48, 64, 16)
    rng = np.random.default_rng(5)
    scores = sigmoid(rng.normal(0, 3, (len(wins), contract.num_classes)))
    heads = ["sar" if k % 3 == 0 else "fused" for k in range(len(wins))]
    summary = postprocess.tile_summary("T", wins, heads, scores, contract, None, {"input_sha256": "x"})
    records = postprocess.tile_records("T", wins, heads, scores, contract, None, [0.0] * len(wins), {})
    per_label: dict[str, int] = {}
    for r in records:
        for lab in r["labels"]:
            per_label[lab["name"]] = per_label.get(lab["name"], 0) + 1
    assert {lab["name"]: lab["windows"] for lab in summary["labels"]} == per_label
    assert all(lab["fraction"] == round(per_label[lab["name"]] / len(wins), 4) for lab in summary["labels"])
    counts = [lab["windows"] for lab in summary["labels"]]
    assert counts == sorted(counts, reverse=True)
    assert summary["heads"] == {"fused": 8, "sar": 4} and summary["windows"] == 12
    assert summary["windows_without_labels"] == sum(1 for r in records if not r["labels"])
    assert summary["size"] == {"height": 48, "width": 64} and summary["bbox"] is None
    assert summary["type"] == "tile" and summary["input_sha256"] == "x"


# ---- nodata tags and masks decide which windows the SAR head answers -----------------------------------------
def _masked_pair(folder, with_masks=True):
    """32 x 48 px (2 x 3 windows of 16): window 0 has S2 nodata (0 in one band), window 2 SCL cloud, window 3
    SCL snow (usable), window 4 the cloud mask; S1 has nodata (-9999) pixels in window 1."""
    sar, opt = raw_tile(32, 48, 4)
    opt[5, 0:12, 0:12] = 0  # > 50 % of window 0, one band: unusable where GDAL_NODATA=0
    sar[:, 16:20, 16:32] = -9999.0
    scl = np.full((32, 48), 4, np.uint8)  # vegetation
    scl[0:16, 32:48] = 9  # cloud, high probability
    scl[16:32, 0:16] = 11  # snow: land cover, optical stays usable
    cloud = np.zeros((32, 48), np.uint8)
    cloud[16:32, 16:32] = 255
    geo = GeoInfo(NORTH, "EPSG:32633")
    write_tiff(folder / "s1.tif", sar, geo, nodata=-9999.0)
    write_tiff(folder / "s2.tif", opt, geo, nodata=0)
    if with_masks:
        write_tiff(folder / "scl.tif", scl, geo)
        write_tiff(folder / "cloud_mask.tif", cloud, geo)
    return sar, opt, scl, cloud


@pytest.mark.parametrize("form", ["raw", "standardised"])
def test_nodata_tags_scl_and_cloud_mask_choose_the_sar_head(tmp_path, contract, form):
    from mosaic_edge.edge_runtime import pipeline
    from mosaic_edge.tile_format import read_tile, write_tile

    c = contract.replace(input_form=form)
    sar, opt, scl, cloud = _masked_pair(tmp_path / "t")
    job = pipeline.load(tmp_path / "t", "t", c)
    assert job.heads == ["sar", "fused", "sar", "fused", "sar", "fused"]
    np.testing.assert_allclose(job.optical_invalid, [144 / 256, 0, 1, 0, 1, 0])
    tile = read_tile(tmp_path / "t")
    assert tile.sar_nodata == -9999.0 and tile.optical_nodata == 0.0
    from mosaic_edge.edge_runtime.tiles import prepare_tile

    prep = prepare_tile(tile, c)
    assert prep.sar_invalid_fraction == pytest.approx(64 / (32 * 48))  # -9999 is S1 nodata, like NaN
    if form == "raw":
        assert (prep.sar[0, 16:20, 16:32] == np.float32(c.sar_mean[0])).all()
    else:
        assert np.isfinite(prep.sar).all() and abs(float(prep.sar[0, 16:20, 16:32].mean())) < 1e-6
    # the same masks in an .npz tile
    write_tile(tmp_path / "n.npz", sar, opt, scl=scl, cloud_mask=cloud)
    job = pipeline.load(tmp_path / "n.npz", "n", c)
    assert job.heads == ["fused", "fused", "sar", "fused", "sar", "fused"]  # no nodata tags in an .npz


def test_without_masks_and_tags_every_window_is_fused(tmp_path, contract):
    from mosaic_edge.edge_runtime import pipeline

    sar, opt = raw_tile(32, 48, 4)
    write_tiff(tmp_path / "t" / "s1.tif", sar, GeoInfo(NORTH, "EPSG:32633"))
    write_tiff(tmp_path / "t" / "s2.tif", opt, GeoInfo(NORTH, "EPSG:32633"))
    assert pipeline.load(tmp_path / "t", "t", contract).heads == ["fused"] * 6
