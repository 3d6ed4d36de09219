"""GeoTIFF reading and writing with tifffile alone (no GDAL/rasterio on the device).

Georeferencing is parsed from the GeoTIFF tags the BigEarthNet and SEN12MS archives use:

- ``ModelPixelScaleTag`` (33550) + ``ModelTiepointTag`` (33922), or ``ModelTransformationTag`` (34264), give
  the affine pixel -> map transform ``x = a*col + b*row + c``, ``y = d*col + e*row + f`` (rasterio's
  convention, pixel corners, i.e. ``PixelIsArea``; ``PixelIsPoint`` rasters are shifted by half a pixel to
  match).
- ``GeoKeyDirectoryTag`` (34735) gives the CRS: ``ProjectedCSTypeGeoKey`` (3072) or ``GeographicTypeGeoKey``
  (2048) as ``"EPSG:<code>"``.
- ``GDAL_NODATA`` (42113, ASCII) gives the value marking missing pixels (:func:`parse_nodata`;
  :func:`decode_tiff_meta` returns it).

Files without these tags read with ``geo=None``. Every failure (missing, zero-byte, truncated, corrupt, too
large) raises :class:`~mosaic_edge.errors.DataError` naming the file. Image dimensions are checked against
``MAX_PIXELS`` from the header *before* any pixel is decoded, so a crafted file cannot exhaust memory.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from mosaic_edge.data import tiff_fast
from mosaic_edge.data.tiff_fast import GDAL_NODATA, GEOKEYS, PIXEL_SCALE, TIEPOINT, TRANSFORMATION
from mosaic_edge.errors import DataError

# A BigEarthNet patch has 14 400 pixels and a full S2 tile ~120 M; 100 M pixels (per band) covers any tile
# this package processes in one piece while refusing decompression bombs.
MAX_PIXELS = 100_000_000

_KEY_MODEL_TYPE, _KEY_RASTER_TYPE, _KEY_GEOGRAPHIC, _KEY_PROJECTED = 1024, 1025, 2048, 3072
_USER_DEFINED = 32767
_PIXEL_IS_POINT = 2


@dataclass(frozen=True)
class GeoInfo:
    """Georeferencing of a raster.

    Attributes:
        transform: Affine ``(a, b, c, d, e, f)``: ``x = a*col + b*row + c``, ``y = d*col + e*row + f``, where
            (col, row) are pixel-corner coordinates.
        crs: ``"EPSG:<code>"`` or None when the file names no EPSG code.
    """

    transform: tuple[float, float, float, float, float, float]
    crs: str | None = None

    def xy(self, row: float, col: float) -> tuple[float, float]:
        """Map coordinates of pixel-corner position (row, col)."""
        a, b, c, d, e, f = self.transform
        return a * col + b * row + c, d * col + e * row + f

    def window_bounds(self, row0: int, col0: int, h: int, w: int) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the ``h`` x ``w`` window whose top-left pixel is (row0, col0)."""
        corners = [self.xy(r, c) for r in (row0, row0 + h) for c in (col0, col0 + w)]
        xs, ys = zip(*corners, strict=False)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def epsg(self) -> int | None:
        return int(self.crs.split(":")[1]) if self.crs and self.crs.upper().startswith("EPSG:") else None

    def check(self, name: str) -> None:
        """Refuse georeferencing the runtime cannot place correctly (one line naming ``name``).

        A tile's grid must be north-up (no rotation or shear terms: windows are axis-aligned rectangles of the
        map), with finite, non-zero pixel sizes, and name its CRS.

        Raises:
            DataError: a rotated/sheared, degenerate or non-finite transform, or no CRS.
        """
        a, b, c, d, e, f = self.transform
        if not all(math.isfinite(v) for v in self.transform):
            raise DataError(f"{name}: malformed georeferencing (non-finite transform {list(self.transform)})")
        if b != 0.0 or d != 0.0:
            raise DataError(f"{name}: rotated or sheared grid (transform terms b={b:g}, d={d:g}); warp it to a "
                            "north-up grid first (gdalwarp)")
        if a == 0.0 or e == 0.0:
            raise DataError(f"{name}: malformed georeferencing (pixel size {a:g} x {e:g})")
        if not self.crs:
            raise DataError(f"{name}: georeferenced without a CRS (no EPSG code in the GeoTIFF keys / 'crs')")

    def same_grid(self, other: GeoInfo) -> bool:
        """Same CRS and the same transform to within a millionth of a pixel."""
        tol = 1e-6 * max(1.0, abs(self.transform[0]))
        return self.crs == other.crs and all(abs(x - y) <= tol for x, y in zip(self.transform, other.transform,
                                                                                  strict=True))


def _parse_geo(tags: Mapping[int, Any]) -> GeoInfo | None:
    """Georeferencing from a page's tag values (tag code -> value)."""
    keys: dict[int, int] = {}
    if GEOKEYS in tags:
        gk = [int(v) for v in tags[GEOKEYS]]
        for i in range(gk[3]):
            key, loc, _count, value = gk[4 + 4 * i : 8 + 4 * i]
            if loc == 0:  # value stored inline (short); other locations hold strings/doubles we do not need
                keys[key] = value
    if TRANSFORMATION in tags:
        m = [float(v) for v in tags[TRANSFORMATION]]
        transform: tuple[float, ...] = (m[0], m[1], m[3], m[4], m[5], m[7])
    elif PIXEL_SCALE in tags and TIEPOINT in tags:
        sx, sy = (float(v) for v in tags[PIXEL_SCALE][:2])
        col, row, _k, x, y = (float(v) for v in tags[TIEPOINT][:5])
        transform = (sx, 0.0, x - col * sx, 0.0, -sy, y + row * sy)
    else:
        return None
    if keys.get(_KEY_RASTER_TYPE) == _PIXEL_IS_POINT:
        # The tiepoint refers to the pixel centre; move the origin to the pixel corner (as GDAL does).
        a, b, c, d, e, f = transform
        transform = (a, b, c - 0.5 * (a + b), d, e, f - 0.5 * (d + e))
    code = keys.get(_KEY_PROJECTED) or keys.get(_KEY_GEOGRAPHIC)
    crs = f"EPSG:{code}" if code and code != _USER_DEFINED else None
    return GeoInfo(transform=tuple(transform), crs=crs)  # type: ignore[arg-type]


def parse_nodata(tags: Mapping[int, Any], name: str) -> float | None:
    """The ``GDAL_NODATA`` value of a page's tags (NaN for "nan"), None when there is none.

    Raises:
        DataError: the tag holds something that is not a number.
    """
    text = tags.get(GDAL_NODATA)
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = str(text).strip().strip("\0").strip()
    try:
        return float(text)
    except ValueError as exc:
        raise DataError(f"{name}: malformed GDAL_NODATA tag {text!r} (not a number)") from exc


def _check_extent(path: str, size: int, tif: tifffile.TiffFile) -> None:
    """Refuse files whose strips/tiles point past the end of the file (truncated downloads)."""
    for page in tif.pages:
        offsets, counts = page.dataoffsets, page.databytecounts
        if offsets and max(o + n for o, n in zip(offsets, counts, strict=False)) > size:
            raise DataError(f"{path}: truncated TIFF (pixel data ends past the end of the {size}-byte file)")


def read_tiff(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, GeoInfo | None]:
    """Read a (Geo)TIFF.

    Args:
        path: The file.
        max_pixels: Refuse images with more pixels per band than this (checked before decoding).

    Returns:
        ``(array, geo)``: a 2-D ``[H, W]`` array for single-band files, ``[C, H, W]`` for multi-band files
        (pixel-interleaved ``[H, W, C]`` files are transposed), and the georeferencing or None.

    Raises:
        DataError: naming the file when it is missing, empty, truncated, corrupt or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    return decode_tiff(data, str(path), max_pixels)


def decode_tiff(data: Any, name: str, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, GeoInfo | None]:
    """:func:`read_tiff` of a file's bytes already in memory (any bytes-like; ``name`` goes into messages).

    The common layouts are decoded by :mod:`mosaic_edge.data.tiff_fast`, everything else by tifffile.
    """
    array, geo, _ = decode_tiff_meta(data, name, max_pixels)
    return array, geo


def decode_tiff_meta(data: Any, name: str, max_pixels: int = MAX_PIXELS
                     ) -> tuple[np.ndarray, GeoInfo | None, float | None]:
    """:func:`decode_tiff` plus the file's ``GDAL_NODATA`` value (None when it has none)."""
    if len(data) == 0:
        raise DataError(f"{name}: empty file (0 bytes)")
    try:
        fast = tiff_fast.decode(data, name, max_pixels)
        if fast is not None:
            array, tags = fast
            return array, _parse_geo(tags), parse_nodata(tags, name)
    except DataError:
        raise
    except (struct.error, ValueError, IndexError, TypeError, OverflowError) as exc:
        raise DataError(f"{name}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        with tifffile.TiffFile(io.BytesIO(bytes(data)), name=name) as tif:
            if not tif.series:
                raise DataError(f"{name}: TIFF holds no image")
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            if h * w > max_pixels or int(np.prod(shape)) > 16 * max_pixels:
                raise DataError(f"{name}: image of shape {shape} exceeds the {max_pixels}-pixel limit")
            _check_extent(name, len(data), tif)
            page = tif.pages[0]
            tags = {tag.code: tag.value for tag in page.tags.values()}
            geo, nodata = _parse_geo(tags), parse_nodata(tags, name)
            array = series.asarray()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types (struct, zlib, ValueError...) on bad files
        raise DataError(f"{name}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 3 and axes.endswith("S"):
        array = np.moveaxis(array, -1, 0)
    elif array.ndim > 3:
        array = array.reshape(-1, h, w)
    return np.ascontiguousarray(array), geo, nodata


def _geo_tags(geo: GeoInfo) -> list[tuple[int, str, int, Any, bool]]:
    a, b, c, d, e, f = geo.transform
    tags: list[tuple[int, str, int, Any, bool]] = []
    if b == 0.0 and d == 0.0 and a > 0 and e < 0:
        tags.append((PIXEL_SCALE, "d", 3, (a, -e, 0.0), False))
        tags.append((TIEPOINT, "d", 6, (0.0, 0.0, 0.0, c, f, 0.0), False))
    else:
        matrix = (a, b, 0.0, c, d, e, 0.0, f, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        tags.append((TRANSFORMATION, "d", 16, matrix, False))
    keys = [(_KEY_RASTER_TYPE, 1)]
    code = geo.epsg
    if code is not None:
        geographic = 4000 <= code < 5000
        keys.insert(0, (_KEY_MODEL_TYPE, 2 if geographic else 1))
        keys.append((_KEY_GEOGRAPHIC if geographic else _KEY_PROJECTED, code))
    directory = [1, 1, 0, len(keys)]
    for key, value in sorted(keys):
        directory += [key, 0, 1, value]
    tags.append((GEOKEYS, "H", len(directory), tuple(directory), False))
    return tags


def write_tiff(
    path: str | Path, array: np.ndarray, geo: GeoInfo | None = None, compress: bool = True,
    nodata: float | None = None, tile: int | None = None,
) -> Path:
    """Write a 2-D ``[H, W]`` or band-sequential ``[C, H, W]`` array as a (Geo)TIFF.

    Args:
        path: Output file (parents are created).
        array: Pixel data; multi-band arrays are stored planar (one plane per band).
        geo: Georeferencing to store as GeoTIFF tags, or None.
        compress: Deflate-compress the pixel data (as the BigEarthNet archive does).
        nodata: Value to record in the ``GDAL_NODATA`` tag.
        tile: Write square tiles of this size (a multiple of 16) instead of strips, as a Cloud-Optimized GeoTIFF
            stores its full-resolution image.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"write_tiff: expected [H, W] or [C, H, W], got shape {array.shape}")
    tags = _geo_tags(geo) if geo is not None else []
    if nodata is not None:
        text = "nan" if np.isnan(nodata) else f"{nodata:.17g}"
        tags.append((GDAL_NODATA, "s", 0, text, False))
    tifffile.imwrite(
        path,
        array,
        photometric="minisblack",
        compression="zlib" if compress else None,
        extratags=tags or None,
        metadata=None,
        planarconfig="separate" if array.ndim == 3 else None,
        tile=(tile, tile) if tile else None,
    )
    return path
