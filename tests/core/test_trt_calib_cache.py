"""TensorRT calibration cache: header version integer, big-endian float32 hex, round trip."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mosaic_edge.errors import DataError, UserError
from mosaic_edge.trt_calib_cache import (
    format_calib_cache,
    hex_to_scale,
    parse_calib_cache,
    read_calib_cache,
    scale_to_hex,
    trt_version_int,
    write_calib_cache,
)


@pytest.mark.parametrize(
    ("version", "want"),
    [("8.6.1", 8601), ("8.5.1", 8501), ("10.3.0", 100300), ("10.13.2.6", 101302), ("11.0", 110000)],
)
def test_version_integer(version: str, want: int) -> None:
    assert trt_version_int(version) == want


@pytest.mark.parametrize(
    ("value", "hexstr"),
    [(0.5, "3f000000"), (1.0, "3f800000"), (-2.0, "c0000000"), (0.1, "3dcccccd"), (0.0, "00000000")],
)
def test_known_float_hex(value: float, hexstr: str) -> None:
    assert scale_to_hex(value) == hexstr
    assert hex_to_scale(hexstr) == struct.unpack(">f", struct.pack(">f", value))[0]


def test_round_trip(tmp_path: Path) -> None:
    amax = {"sar": 7.474727, "/enc/conv1/Conv_output_0": 12.5, "logits": 127.0 * 0.5}
    path = write_calib_cache(tmp_path / "calib.cache", amax, trt_version="8.6.1")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert lines[3] == "logits: 3f000000"  # amax 63.5 -> scale 0.5
    cache = read_calib_cache(path)
    assert cache.version_int == 8601 and cache.algorithm == "EntropyCalibration2"
    assert list(cache.scales) == list(amax)
    for k, v in amax.items():
        assert cache.amax[k] == pytest.approx(v, rel=1e-6)
        assert cache.scales[k] == pytest.approx(v / 127, rel=1e-6)


def test_parse_rejects_garbage() -> None:
    with pytest.raises(DataError, match="first line"):
        parse_calib_cache("not a cache\nx: 3f000000\n")
    with pytest.raises(DataError, match="line 2"):
        parse_calib_cache("TRT-8601-EntropyCalibration2\nx: 3f00\n")
    with pytest.raises(DataError, match="empty"):
        parse_calib_cache("")


def test_refuses_bad_values() -> None:
    with pytest.raises(UserError):
        format_calib_cache({"a": float("nan")})
    with pytest.raises(UserError):
        format_calib_cache({"bad: name": 1.0})
