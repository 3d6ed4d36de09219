"""GeoTIFF reading/writing: georeferencing round trip, band layouts, and bad files naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from mosaic_edge.data.tiff import GeoInfo, read_tiff, write_tiff
from mosaic_edge.errors import DataError

UTM = GeoInfo((10.0, 0.0, 399960.0, 0.0, -10.0, 5300040.0), "EPSG:32633")


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.uint8])
def test_georef_round_trip(tmp_path, dtype):
    arr = (np.arange(3 * 20 * 30) % 250).astype(dtype).reshape(3, 20, 30)
    back, geo = read_tiff(write_tiff(tmp_path / "a.tif", arr, UTM))
    assert back.dtype == arr.dtype and back.shape == (3, 20, 30)
    np.testing.assert_array_equal(back, arr)
    assert geo == UTM and geo.epsg == 32633


def test_geographic_crs_and_rotated_transform(tmp_path):
    rotated = GeoInfo((0.5, 0.1, 10.0, 0.2, -0.5, 50.0), "EPSG:4326")
    _, geo = read_tiff(write_tiff(tmp_path / "r.tif", np.zeros((4, 5), np.uint16), rotated))
    assert geo == rotated  # stored as ModelTransformationTag + GeographicTypeGeoKey


def test_window_bounds():
    # 120 x 120 window at (row 10, col 20) of a 10 m north-up grid.
    assert UTM.window_bounds(10, 20, 120, 120) == (
        399960.0 + 200,
        5300040.0 - 1300,
        399960.0 + 1400,
        5300040.0 - 100,
    )


def test_pixel_is_point_shifts_half_pixel(tmp_path):
    # GeoKeyDirectory with GTRasterTypeGeoKey = PixelIsPoint: the tiepoint is a pixel centre.
    tags = [
        (33550, "d", 3, (10.0, 10.0, 0.0), False),
        (33922, "d", 6, (0, 0, 0, 1000.0, 2000.0, 0), False),
        (34735, "H", 12, (1, 1, 0, 2, 1025, 0, 1, 2, 3072, 0, 1, 32632), False),
    ]
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((4, 4), np.uint16), extratags=tags)
    _, geo = read_tiff(tmp_path / "p.tif")
    assert geo.transform == (10.0, 0.0, 995.0, 0.0, -10.0, 2005.0) and geo.crs == "EPSG:32632"


def test_no_georef_reads_none(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.ones((6, 7), np.float32))
    arr, geo = read_tiff(tmp_path / "plain.tif")
    assert arr.shape == (6, 7) and geo is None


def test_pixel_interleaved_is_returned_band_first(tmp_path):
    hwc = np.arange(5 * 6 * 3, dtype=np.uint16).reshape(5, 6, 3)
    tifffile.imwrite(tmp_path / "contig.tif", hwc, photometric="rgb")
    arr, _ = read_tiff(tmp_path / "contig.tif")
    np.testing.assert_array_equal(arr, np.moveaxis(hwc, -1, 0))


def test_zero_byte_file_names_it(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(DataError, match="empty.tif"):
        read_tiff(tmp_path / "empty.tif")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.tif"):
        read_tiff(tmp_path / "nope.tif")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_file_names_it(tmp_path, keep):
    blob = write_tiff(
        tmp_path / "full.tif", np.random.default_rng(0).random((64, 64)).astype(np.float32), compress=False
    ).read_bytes()
    (tmp_path / "cut.tif").write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(DataError, match="cut.tif"):
        read_tiff(tmp_path / "cut.tif")


def test_garbage_file_names_it(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    with pytest.raises(DataError, match="junk.tif"):
        read_tiff(tmp_path / "junk.tif")


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    path = write_tiff(tmp_path / "big.tif", np.zeros((300, 300), np.uint8))
    decoded = []
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda self, *a, **k: decoded.append(1))
    with pytest.raises(DataError, match="big.tif.*limit"):
        read_tiff(path, max_pixels=300 * 299)
    assert not decoded
