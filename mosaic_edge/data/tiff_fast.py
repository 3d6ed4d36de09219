"""A small TIFF decoder for the layouts tiles and BigEarthNet patches use, from bytes already in memory.

tifffile's generality costs ~0.1 ms of Python per file before any pixel is decoded; a BigEarthNet tile is 14
files, and the runtime's host budget per tile is a few milliseconds. :func:`decode` handles the common case --
one little-endian classic-TIFF image (one IFD), in strips, uncompressed or Deflate (:mod:`mosaic_edge.fastzlib`),
no predictor, one sample format and bit depth, chunky or planar -- in ~10 us plus the inflate, and returns None
for anything else, so the caller falls back to tifffile (:func:`mosaic_edge.data.tiff.decode_tiff`). Results are
the arrays and tags tifffile gives for the same bytes (tested layout by layout).
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

from mosaic_edge import fastzlib
from mosaic_edge.errors import DataError

_TYPES: dict[int, tuple[str, int]] = {  # TIFF field type -> (struct code, size)
    1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1), 7: ("B", 1), 8: ("h", 2),
    9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8), 13: ("I", 4),
}
_WIDTH, _LENGTH, _BITS, _COMPRESSION, _DESCRIPTION = 256, 257, 258, 259, 270
_STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_COUNTS, _PLANAR = 273, 277, 278, 279, 284
_PREDICTOR, _TILE_WIDTH, _SAMPLE_FORMAT, _PHOTOMETRIC = 317, 322, 339, 262
_NONE, _DEFLATE, _DEFLATE_OLD = 1, 8, 32946
# Tags read into values: the layout tags above and the GeoTIFF tags (mosaic_edge.data.tiff); others are skipped.
# GeoTIFF: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory; GDAL_NODATA (ASCII, e.g. "0",
# "-9999", "nan": GDAL's TIFFTAG_GDAL_NODATA)
PIXEL_SCALE, TIEPOINT, TRANSFORMATION, GEOKEYS, GDAL_NODATA = 33550, 33922, 34264, 34735, 42113
_WANTED = frozenset({_WIDTH, _LENGTH, _BITS, _COMPRESSION, _DESCRIPTION, _STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP,
                     _STRIP_COUNTS, _PLANAR, _PREDICTOR, _TILE_WIDTH, _SAMPLE_FORMAT, _PHOTOMETRIC, PIXEL_SCALE,
                     TIEPOINT, TRANSFORMATION, GEOKEYS, GDAL_NODATA})
_KIND = {1: "u", 2: "i", 3: "f"}


def _value(data: Any, typ: int, count: int, where: int) -> Any:
    code, size = _TYPES[typ]
    if typ == 2:
        return bytes(data[where:where + count]).split(b"\0", 1)[0].decode("latin-1")
    if typ in (5, 10):
        raw = struct.unpack_from(f"<{2 * count}{code[0]}", data, where)
        return tuple(raw[i] / raw[i + 1] if raw[i + 1] else 0.0 for i in range(0, len(raw), 2))
    values = struct.unpack_from(f"<{count}{code}", data, where)
    return values[0] if count == 1 else values


def read_tags(data: Any) -> dict[int, Any] | None:
    """The layout and GeoTIFF tags of the only IFD of a little-endian classic TIFF; None for other files (the
    caller falls back)."""
    if len(data) < 8 or bytes(data[:4]) != b"II*\0":
        return None
    (ifd,) = struct.unpack_from("<I", data, 4)
    if ifd + 2 > len(data):
        return None
    (n,) = struct.unpack_from("<H", data, ifd)
    end = ifd + 2 + 12 * n
    if end + 4 > len(data) or struct.unpack_from("<I", data, end)[0] != 0:
        return None  # truncated directory, or more than one page: tifffile decides what the series is
    tags: dict[int, Any] = {}
    for k in range(n):
        tag, typ, count = struct.unpack_from("<HHI", data, ifd + 2 + 12 * k)
        if tag not in _WANTED:
            continue
        if typ not in _TYPES:
            return None
        size = _TYPES[typ][1] * count
        where = ifd + 2 + 12 * k + 8
        if size > 4:
            (where,) = struct.unpack_from("<I", data, where)
            if where + size > len(data):
                return None
        tags[tag] = _value(data, typ, count, where)
    return tags


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,)


def decode(data: Any, name: str, max_pixels: int) -> tuple[np.ndarray, dict[int, Any]] | None:
    """Pixels and tags of a TIFF in the layouts this module handles, or None (use tifffile).

    Returns:
        ``(array, tags)``: ``[H, W]`` for one sample per pixel, else ``[C, H, W]`` (chunky pixels
        transposed), as :func:`mosaic_edge.data.tiff.read_tiff` returns them.

    Raises:
        DataError: the image is over ``max_pixels`` or its pixel data is truncated or corrupt.
    """
    tags = read_tags(data)
    if tags is None or _TILE_WIDTH in tags or _STRIP_OFFSETS not in tags or _STRIP_COUNTS not in tags:
        return None
    h, w = int(tags.get(_LENGTH, 0)), int(tags.get(_WIDTH, 0))
    spp = int(tags.get(_SAMPLES, 1))
    bits = set(_ints(tags.get(_BITS, 1)))
    fmts = set(_ints(tags.get(_SAMPLE_FORMAT, 1)))
    compression = int(tags.get(_COMPRESSION, _NONE))
    planar = int(tags.get(_PLANAR, 1))
    if (h < 1 or w < 1 or len(bits) != 1 or len(fmts) != 1 or compression not in (_NONE, _DEFLATE, _DEFLATE_OLD)
            or int(tags.get(_PREDICTOR, 1)) != 1 or planar not in (1, 2) or tags.get(_PHOTOMETRIC) == 3):
        return None
    (bps,), (fmt,) = bits, fmts
    if bps not in (8, 16, 32, 64) or fmt not in _KIND or (fmt == 3 and bps < 32):
        return None
    natural = (h, w) if spp == 1 else ((spp, h, w) if planar == 2 else (h, w, spp))
    described = _described_shape(tags.get(_DESCRIPTION))
    if described is not None and described != natural:
        return None  # a shaped tifffile series (e.g. [1, H, W]): let tifffile give its own shape
    if h * w > max_pixels or h * w * spp > 16 * max_pixels:
        raise DataError(f"{name}: image of shape {natural} exceeds the {max_pixels}-pixel limit")
    offsets, counts = _ints(tags[_STRIP_OFFSETS]), _ints(tags[_STRIP_COUNTS])
    if len(offsets) != len(counts):
        return None
    if offsets and max(o + c for o, c in zip(offsets, counts, strict=True)) > len(data):
        raise DataError(f"{name}: truncated TIFF (pixel data ends past the end of the {len(data)}-byte file)")
    dtype = np.dtype(f"<{_KIND[fmt]}{bps // 8}")
    planes = spp if planar == 2 else 1
    row_bytes = w * dtype.itemsize * (1 if planar == 2 else spp)
    rows = min(int(tags.get(_ROWS_PER_STRIP, h)), h)
    if rows < 1:
        raise DataError(f"{name}: unreadable TIFF (RowsPerStrip {rows})")
    per_plane = -(-h // rows)
    if len(offsets) != per_plane * planes:
        return None
    out = np.empty(h * row_bytes * planes, np.uint8)
    pos = 0
    for k, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        want = min(rows, h - (k % per_plane) * rows) * row_bytes
        chunk = data[offset:offset + count]
        if compression != _NONE:
            try:
                chunk = fastzlib.inflate(chunk, want)
            except zlib.error as exc:
                raise DataError(f"{name}: unreadable TIFF (corrupt Deflate strip {k}: {exc})") from exc
        if len(chunk) < want:
            raise DataError(f"{name}: unreadable TIFF (strip {k} holds {len(chunk)} of {want} bytes)")
        out[pos:pos + want] = np.frombuffer(chunk, np.uint8, want)
        pos += want
    array = out.view(dtype).reshape(natural)
    if planar == 1 and spp > 1:
        array = np.ascontiguousarray(np.moveaxis(array, -1, 0))
    return array.astype(dtype.newbyteorder("="), copy=False), tags


def _described_shape(text: Any) -> tuple[int, ...] | None:
    """The shape in tifffile's JSON ImageDescription (``{"shape": [...]}``), None when there is none."""
    if not isinstance(text, str) or not text.startswith("{"):
        return None
    try:
        shape = json.loads(text).get("shape")
        return tuple(int(v) for v in shape) if isinstance(shape, list) else None
    except (ValueError, TypeError, AttributeError):
        return None
