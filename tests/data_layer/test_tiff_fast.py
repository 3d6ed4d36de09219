"""The in-memory TIFF decoder gives tifffile's arrays and georeferencing, and declines what it does not handle."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mosaic_edge.data import tiff_fast
from mosaic_edge.data.tiff import GeoInfo, _parse_geo, decode_tiff, write_tiff
from mosaic_edge.errors import DataError

UTM = GeoInfo((10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0), "EPSG:32633")


def _reference(data: bytes) -> tuple[np.ndarray, GeoInfo | None]:
    """What tifffile alone gives (the decoder's specification)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]
        arr = series.asarray()
        geo = _parse_geo({t.code: t.value for t in tif.pages[0].tags.values()})
        if arr.ndim == 3 and series.axes.endswith("S"):
            arr = np.moveaxis(arr, -1, 0)
        elif arr.ndim > 3:
            arr = arr.reshape(-1, arr.shape[-2], arr.shape[-1])
    return np.ascontiguousarray(arr), geo


def _bytes(tmp_path: Path, arr: np.ndarray, **kwargs) -> bytes:
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, arr, **kwargs)
    return path.read_bytes()


RNG = np.random.default_rng(0)
LAYOUTS = {
    "2d_u16_deflate": (RNG.integers(0, 60000, (20, 30)).astype(np.uint16), {"compression": "zlib"}),
    "2d_f32_raw": (RNG.normal(size=(17, 9)).astype(np.float32), {}),
    "2d_f64": (RNG.normal(size=(5, 7)), {"compression": "zlib"}),
    "2d_i16": (RNG.integers(-900, 900, (6, 6)).astype(np.int16), {}),
    "2d_u8_strips": (RNG.integers(0, 255, (50, 13)).astype(np.uint8), {"rowsperstrip": 7}),
    "planar_u16_strips": (RNG.integers(0, 9000, (12, 24, 24)).astype(np.uint16),
                          {"planarconfig": "separate", "photometric": "minisblack", "compression": "zlib",
                           "rowsperstrip": 5}),
    "contig_f32": (RNG.normal(size=(16, 16, 2)).astype(np.float32),
                   {"planarconfig": "contig", "photometric": "minisblack"}),
    "rgb_u8": (RNG.integers(0, 255, (8, 8, 3)).astype(np.uint8), {"photometric": "rgb"}),
}
DECLINED = {
    "tiled": (RNG.integers(0, 9, (32, 32)).astype(np.uint16), {"tile": (16, 16)}),
    "predictor": (RNG.integers(0, 9, (8, 8)).astype(np.uint16), {"compression": "zlib", "predictor": True}),
    "big_endian": (RNG.normal(size=(4, 4)).astype(np.float32), {"byteorder": ">"}),
    "multipage": (RNG.integers(0, 9, (3, 8, 8)).astype(np.uint16), {"photometric": "minisblack"}),
    "shaped_1hw": (RNG.integers(0, 9, (1, 8, 8)).astype(np.uint16), {"photometric": "minisblack"}),
}


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_fast_path_equals_tifffile(tmp_path, kind):
    arr, kwargs = LAYOUTS[kind]
    data = _bytes(tmp_path, arr, **kwargs)
    assert tiff_fast.decode(data, kind, 10**8) is not None
    got, geo = decode_tiff(data, kind)
    want, want_geo = _reference(data)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert geo == want_geo


@pytest.mark.parametrize("kind", sorted(DECLINED))
def test_other_layouts_fall_back_to_tifffile(tmp_path, kind):
    arr, kwargs = DECLINED[kind]
    data = _bytes(tmp_path, arr, **kwargs)
    assert tiff_fast.decode(data, kind, 10**8) is None
    got, _ = decode_tiff(data, kind)
    np.testing.assert_array_equal(got, _reference(data)[0])


def test_georeferencing_and_project_writer(tmp_path):
    for arr in (RNG.normal(size=(2, 12, 10)).astype(np.float32), RNG.integers(0, 9, (12, 10)).astype(np.uint16)):
        data = write_tiff(tmp_path / "g.tif", arr, UTM).read_bytes()
        assert tiff_fast.decode(data, "g", 10**8) is not None
        got, geo = decode_tiff(data, "g")
        np.testing.assert_array_equal(got, arr)
        assert geo == UTM == _reference(data)[1]


def test_real_benv2_bands_take_the_fast_path(benv2_root):
    for path in sorted(benv2_root.rglob("*.tif"))[:30]:
        data = path.read_bytes()
        assert tiff_fast.decode(data, path.name, 10**8) is not None, path.name
        got, geo = decode_tiff(data, path.name)
        want, want_geo = _reference(data)
        np.testing.assert_array_equal(got, want)
        assert geo == want_geo


def test_bad_bytes_are_data_errors(tmp_path):
    data = write_tiff(tmp_path / "b.tif", RNG.integers(0, 9, (12, 40, 40)).astype(np.uint16)).read_bytes()
    with pytest.raises(DataError, match="truncated"):
        decode_tiff(data[: len(data) // 2], "cut.tif")
    with pytest.raises(DataError, match="exceeds"):
        decode_tiff(data, "big.tif", max_pixels=1000)
    strips = tiff_fast.read_tags(data)[273]
    broken = bytearray(data)
    broken[strips[3]:strips[3] + 8] = b"\xff" * 8  # corrupt one Deflate stream
    with pytest.raises(DataError, match="unreadable TIFF"):
        decode_tiff(bytes(broken), "corrupt.tif")
    with pytest.raises(DataError, match="empty"):
        decode_tiff(b"", "empty.tif")


def test_a_zero_rows_per_strip_is_a_data_error(tmp_path):
    data = bytearray(_bytes(tmp_path, RNG.integers(0, 255, (50, 13)).astype(np.uint8), rowsperstrip=7))
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == 278:  # RowsPerStrip, value stored in the entry
            data[entry + 8:entry + 12] = b"\0" * 4
    with pytest.raises(DataError, match="RowsPerStrip"):
        decode_tiff(bytes(data), "zero.tif")


@pytest.mark.parametrize("libdeflate", [True, False])
def test_inflate_and_crc_agree_with_zlib_with_and_without_libdeflate(monkeypatch, libdeflate):
    import zlib

    from mosaic_edge import fastzlib

    if not libdeflate:
        monkeypatch.setattr(fastzlib, "_libdeflate", None)
    elif fastzlib._libdeflate is None:
        pytest.skip("libdeflate (the 'deflate' package) is not installed")
    payload = RNG.integers(0, 40, 5000).astype(np.uint8).tobytes()
    stream = zlib.compress(payload)
    assert bytes(fastzlib.inflate(stream, len(payload))) == payload
    assert bytes(fastzlib.inflate(memoryview(stream), 100)) == payload[:100]  # only what was asked for
    assert fastzlib.crc32(memoryview(payload)) == zlib.crc32(payload)
    with pytest.raises(zlib.error):
        fastzlib.inflate(stream[:10] + b"\xff" * 20 + stream[30:], len(payload))
