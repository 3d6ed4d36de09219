"""Geo test helpers: GeoJSON results read back with GDAL (pyogrio), WKB rings, distances in the native grid.

Nothing here uses the package's own georeferencing code, so a test comparing the two compares independent
readings: the grid comes from the GeoTIFF tags through tifffile, the footprints from GDAL.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def read_geojson_with_gdal(path: Path) -> tuple[dict, list[list[np.ndarray]], dict[str, np.ndarray]]:
    """``(meta, polygons, fields)`` of a GeoJSON file as GDAL reads it: each feature's polygons (a Polygon is
    one, a MultiPolygon several), each a list of [k, 2] lon/lat rings."""
    from pyogrio import raw

    meta, _fids, geometry, values = raw.read(str(path))
    fields = dict(zip(meta["fields"], values, strict=True))
    return meta, [wkb_polygons(g) for g in geometry], fields


def wkb_polygons(wkb: bytes) -> list[list[np.ndarray]]:
    """Polygons of a little- or big-endian WKB Polygon / MultiPolygon (2-D)."""
    polys, _ = _wkb(memoryview(wkb), 0)
    return polys


def _wkb(buf: memoryview, pos: int) -> tuple[list[list[np.ndarray]], int]:
    order = "<" if buf[pos] == 1 else ">"
    (kind,) = struct.unpack_from(order + "I", buf, pos + 1)
    pos += 5
    if kind == 3:
        (n,) = struct.unpack_from(order + "I", buf, pos)
        pos += 4
        rings = []
        for _ in range(n):
            (k,) = struct.unpack_from(order + "I", buf, pos)
            pos += 4
            rings.append(np.frombuffer(buf, order + "f8", 2 * k, pos).reshape(k, 2).copy())
            pos += 16 * k
        return [rings], pos
    if kind == 6:
        (n,) = struct.unpack_from(order + "I", buf, pos)
        pos += 4
        out = []
        for _ in range(n):
            polys, pos = _wkb(buf, pos)
            out += polys
        return out, pos
    raise ValueError(f"WKB geometry type {kind} is not a (Multi)Polygon")


def tiff_grid(path: Path) -> tuple[float, float, float, float]:
    """``(x0, y0, pixel_x, pixel_y)`` of a north-up GeoTIFF from its ModelTiepoint/ModelPixelScale tags."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        sx, sy = tags["ModelPixelScaleTag"].value[:2]
        _i, _j, _k, x, y = tags["ModelTiepointTag"].value[:5]
    return float(x), float(y), float(sx), float(sy)


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed lon/lat ring: > 0 counter-clockwise."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def densify_lonlat(ring: np.ndarray, step: int = 64) -> np.ndarray:
    """Points along the straight lon/lat segments of a ring (what RFC 7946 says a line between positions is)."""
    t = np.linspace(0.0, 1.0, step, endpoint=False)[:, None]
    return np.concatenate([a + t * (b - a) for a, b in zip(ring[:-1], ring[1:], strict=True)])


def distance_to_rectangle(x: np.ndarray, y: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Distance of points to the boundary of the axis-aligned rectangle ``(minx, miny, maxx, maxy)``."""
    x0, y0, x1, y1 = rect
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    d_in = np.minimum.reduce([x - x0, x1 - x, y - y0, y1 - y])
    dx = np.maximum.reduce([x0 - x, np.zeros_like(x), x - x1])
    dy = np.maximum.reduce([y0 - y, np.zeros_like(y), y - y1])
    return np.where(inside, d_in, np.hypot(dx, dy))
