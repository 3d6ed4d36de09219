"""Footprints for RFC 7946 GeoJSON: pixel rectangles of a tile's native grid as WGS 84 longitude/latitude rings.

RFC 7946 GeoJSON holds WGS 84 longitude/latitude only (no ``crs`` member), exterior rings counter-clockwise
(the right-hand rule, section 3.1.6), lines straight in longitude/latitude, a ``bbox`` of
``[west, south, east, north]`` (section 5), and geometries crossing the antimeridian cut in two (section 3.1.9).
A tile's grid is projected (UTM for Sentinel-2), so a straight window edge is a curve in longitude/latitude:
an edge of 1,200 m bends by ~5 cm (0.005 of a 10 m pixel) and is drawn with its corners alone, the 109.8 km
edge of a Sentinel-2 tile bends by ~400 m and is densified. :func:`footprints` adds points along every edge
until the straight longitude/latitude segments between them stay within :data:`TOLERANCE_PX` of the true
(reprojected) edge, measured back in the native grid in pixels.

Reprojection uses pyproj (the ``runtime`` extra), imported on first use; :func:`transformer` raises
:class:`~mosaic_edge.optional.OptionalDependencyError` without it. Positions are rounded to
:data:`DECIMALS` decimal places (1.1 cm at the equator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mosaic_edge.errors import DataError
from mosaic_edge.optional import require

TOLERANCE_PX = 0.05  # largest distance of a drawn edge from the true footprint, in pixels of the native grid
DECIMALS = 7
MAX_SEGMENTS = 256  # per edge; reached only by grids far outside their projection's area of use


@lru_cache(maxsize=32)
def transformer(crs: str) -> Any:
    """A pyproj Transformer native ``crs`` -> WGS 84 lon/lat (``always_xy``; thread-safe since pyproj 3.1).

    Raises:
        OptionalDependencyError: pyproj is not installed.
        DataError: ``crs`` is not a coordinate reference system PROJ knows.
    """
    pyproj = require("pyproj", extra="runtime")
    try:
        return pyproj.Transformer.from_crs(pyproj.CRS.from_user_input(crs), pyproj.CRS.from_epsg(4326),
                                           always_xy=True)
    except pyproj.exceptions.CRSError as exc:
        raise DataError(f"unknown CRS {crs!r} ({exc})") from exc


@dataclass(frozen=True)
class Footprint:
    """One rectangle of the native grid in WGS 84: its rings (one, or two when cut at the antimeridian)."""

    rings: tuple[np.ndarray, ...]  # each [k, 2] lon/lat, closed, counter-clockwise
    bbox: tuple[float, float, float, float]  # west, south, east, north (west > east across the antimeridian)

    def geometry(self) -> dict[str, Any]:
        """The GeoJSON Polygon (MultiPolygon when cut at the antimeridian)."""
        coords = [r.tolist() for r in self.rings]
        if len(coords) == 1:
            return {"type": "Polygon", "coordinates": coords}
        return {"type": "MultiPolygon", "coordinates": [[c] for c in coords]}


def _edge_points(rects: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Native (x, y) of ``n`` points per edge of each rectangle ``[m, 4]`` (minx, miny, maxx, maxy), walked
    (minx, maxy) -> (maxx, maxy) -> (maxx, miny) -> (minx, miny), without the closing point: ``[m, 4n]`` each."""
    t = np.arange(n) / n
    x0, y0, x1, y1 = (rects[:, k:k + 1] for k in range(4))
    one = np.ones_like(t)
    xs = np.concatenate([x0 + (x1 - x0) * t, x1 * one, x1 + (x0 - x1) * t, x0 * one], axis=1)
    ys = np.concatenate([y1 * one, y1 + (y0 - y1) * t, y0 * one, y0 + (y1 - y0) * t], axis=1)
    return xs, ys


def _unwrap(lon: np.ndarray) -> np.ndarray:
    """Longitudes of each ring made continuous across the antimeridian (values up to 540)."""
    crossing = (lon.max(axis=1) - lon.min(axis=1)) > 180.0
    return np.where(crossing[:, None] & (lon < 0), lon + 360.0, lon)


def _bend(tr: Any, xs: np.ndarray, ys: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> float:
    """Largest native distance between the midpoint of each straight lon/lat segment, taken back to the native
    grid, and the native midpoint of the segment (the true edge)."""
    ulon = _unwrap(lon)
    mlon = (ulon + np.roll(ulon, -1, axis=1)) / 2
    mlat = (lat + np.roll(lat, -1, axis=1)) / 2
    mlon = np.where(mlon > 180.0, mlon - 360.0, mlon)
    x, y = tr.transform(mlon.ravel(), mlat.ravel(), direction="INVERSE")
    tx, ty = (xs + np.roll(xs, -1, axis=1)) / 2, (ys + np.roll(ys, -1, axis=1)) / 2
    dist = np.hypot(np.asarray(x).reshape(tx.shape) - tx, np.asarray(y).reshape(ty.shape) - ty)
    return float(np.nanmax(dist)) if dist.size else 0.0


def _ccw(ring: np.ndarray) -> np.ndarray:
    x, y = ring[:, 0], ring[:, 1]
    area2 = float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    return ring if area2 >= 0 else ring[::-1]


def _clip(ring: np.ndarray, keep_west: bool) -> np.ndarray:
    """Sutherland-Hodgman clip of a closed ring (unwrapped lon) to lon <= 180 (``keep_west``) or >= 180."""
    out: list[tuple[float, float]] = []
    pts = ring[:-1]
    inside = (pts[:, 0] <= 180.0) if keep_west else (pts[:, 0] >= 180.0)
    for k in range(len(pts)):
        p, q = pts[k], pts[(k + 1) % len(pts)]
        pin, qin = inside[k], inside[(k + 1) % len(pts)]
        if pin:
            out.append((p[0], p[1]))
        if pin != qin:
            s = (180.0 - p[0]) / (q[0] - p[0])
            out.append((180.0, p[1] + s * (q[1] - p[1])))
    if len(out) < 3:
        return np.empty((0, 2))
    arr = np.asarray(out + [out[0]], np.float64)
    if not keep_west:
        arr[:, 0] -= 360.0
    return arr


def _footprint(lon: np.ndarray, lat: np.ndarray) -> Footprint:
    ring = np.round(np.stack([np.append(lon, lon[0]), np.append(lat, lat[0])], axis=1), DECIMALS)
    if ring[:, 0].max() - ring[:, 0].min() <= 180.0:
        ring = _ccw(ring)
        return Footprint((ring,), (float(ring[:, 0].min()), float(ring[:, 1].min()), float(ring[:, 0].max()),
                                   float(ring[:, 1].max())))
    ring[:, 0] = np.where(ring[:, 0] < 0, ring[:, 0] + 360.0, ring[:, 0])
    west, east = _clip(ring, True), _clip(ring, False)
    parts = tuple(_ccw(np.round(p, DECIMALS)) for p in (west, east) if len(p))
    lats = np.concatenate([p[:, 1] for p in parts])
    return Footprint(parts, (float(west[:, 0].min()), float(lats.min()), float(east[:, 0].max()), float(lats.max())))


def footprints(crs: str, rects: Sequence[Sequence[float]] | np.ndarray, pixel: float,
               tolerance_px: float = TOLERANCE_PX) -> list[Footprint]:
    """WGS 84 footprints of native rectangles ``(minx, miny, maxx, maxy)`` in ``crs``.

    Every rectangle gets the same number of points per edge: doubled from 1 until the drawn edges of all of
    them stay within ``tolerance_px`` pixels (of size ``pixel``, native units) of the true ones (at most
    :data:`MAX_SEGMENTS`).

    Raises:
        OptionalDependencyError: pyproj is not installed.
        DataError: PROJ does not know ``crs``, or a rectangle lies where it cannot be transformed.
    """
    tr = transformer(crs)
    boxes = np.asarray(rects, np.float64).reshape(-1, 4)
    if not len(boxes):
        return []
    n = 1
    while True:
        xs, ys = _edge_points(boxes, n)
        lon, lat = tr.transform(xs.ravel(), ys.ravel())
        lon, lat = np.asarray(lon).reshape(xs.shape), np.asarray(lat).reshape(xs.shape)
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
            raise DataError(f"grid lies outside the area {crs} can be transformed from")
        if n >= MAX_SEGMENTS or _bend(tr, xs, ys, lon, lat) <= tolerance_px * pixel:
            break
        n *= 2
    return [_footprint(lon[k], lat[k]) for k in range(len(boxes))]
