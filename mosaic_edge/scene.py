"""Scenes: GeoTIFF pairs too large to hold whole, read region by region in bounded memory.

A Sentinel-2 tile is 10,980 x 10,980 px: 14 bands take ~3.9 GB as delivered. A tile folder whose ``s1.tif`` +
``s2.tif`` would decode to more than :attr:`~mosaic_edge.tile_format.TileLimits.chunk_bytes` is a *scene*:
:func:`open_scene` parses the headers only (tifffile), and :meth:`Scene.region` decodes just the strips or tiles
(a tiled / Cloud-Optimized GeoTIFF's full-resolution image) that intersect a region, read with ``pread`` from
the open files, into a :class:`~mosaic_edge.tile_format.Tile` of that region -- nodata values, SCL band and
cloud mask included -- so the runtime prepares and cuts it exactly as a small tile.

Exactly-once needs the SHA-256 of every byte of the tile folder (:func:`~mosaic_edge.tile_format.fingerprint`):
:class:`StreamingHash` reads the files in 1 MB blocks, a share at a time as the regions go by, so memory
stays bounded and the digest is ready with the last region. The files stay open from the headers to the
digest; a file whose size or modification time changes meanwhile fails the tile (re-sent tiles are renamed
into ``incoming/``, never rewritten in place).

Supported: one image per file (the first IFD; a COG's overviews are ignored), strips or tiles, uncompressed,
Deflate or Zstandard, with or without horizontal differencing (predictor 2), chunky or planar samples. LZW,
JPEG and the floating-point predictor need the optional ``imagecodecs`` package (tifffile uses it when
installed); without it such a file fails with a one-line reason.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from mosaic_edge.data.tiff import GeoInfo, _parse_geo, parse_nodata
from mosaic_edge.errors import DataError
from mosaic_edge.tile_format import file_header

BLOCK = 1 << 20


def _open(path: str, name: str) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise DataError(f"{name}: no such file (it disappeared while being read)") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{name}: not a regular file (refused)")
    return fd


class Raster:
    """One GeoTIFF opened for region reads (see the module docstring).

    Attributes:
        shape: ``(bands, height, width)``.
        dtype: The stored sample type (native byte order after decoding).
        geo: Georeferencing or None; nodata: the ``GDAL_NODATA`` value or None.
        file_bytes: Size of the file.

    Raises:
        DataError: not a TIFF, a layout this reader does not take, or pixel data past the end of the file.
    """

    def __init__(self, path: str, name: str):
        self.name = name
        self.fd = _open(path, name)
        try:
            self._parse()
        except BaseException:
            os.close(self.fd)
            raise

    def _parse(self) -> None:
        name = self.name
        st = os.fstat(self.fd)
        self.file_bytes, self.signature = st.st_size, (st.st_size, st.st_mtime_ns)
        try:
            fh = os.fdopen(os.dup(self.fd), "rb")
            with tifffile.TiffFile(fh, name=name) as tif:
                page = tif.pages.first
                tags = {tag.code: tag.value for tag in page.tags.values()}
                self.geo, self.nodata = _parse_geo(tags), parse_nodata(tags, name)
                self._layout(page)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types on corrupt headers
            raise DataError(f"{name}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc

    def _layout(self, page: Any) -> None:
        name = self.name
        if page.dtype is None or page.imagedepth != 1 or page.is_subsampled:
            raise DataError(f"{name}: unsupported TIFF layout (sample type {page.sampleformat}/{page.bitspersample} "
                            f"bits, depth {page.imagedepth})")
        h, w, spp = int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel)
        self.shape = (spp, h, w)
        self.dtype = np.dtype(page.dtype).newbyteorder("=")
        self.planar = spp > 1 and int(page.planarconfig) == 2
        if page.is_tiled:
            self.seg = (int(page.tilelength), int(page.tilewidth))
        else:
            self.seg = (min(int(page.rowsperstrip), h), w)
        self.grid = (-(-h // self.seg[0]), -(-w // self.seg[1]))
        self.offsets = np.asarray(page.dataoffsets, np.int64)
        self.counts = np.asarray(page.databytecounts, np.int64)
        planes = spp if self.planar else 1
        if len(self.offsets) != planes * self.grid[0] * self.grid[1] or len(self.counts) != len(self.offsets):
            raise DataError(f"{name}: unreadable TIFF ({len(self.offsets)} segments for a {h}x{w} image)")
        if len(self.offsets) and int((self.offsets + self.counts).max()) > self.file_bytes:
            raise DataError(f"{name}: truncated TIFF (pixel data ends past the end of the "
                            f"{self.file_bytes}-byte file)")
        self._decode = page.decode  # tifffile's decoder for this page's codec, predictor and layout
        self._tiled = bool(page.is_tiled)

    @property
    def decoded_bytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[bands, h, w]`` of the region whose top-left pixel is (r0, c0), decoding only the strips or
        tiles that intersect it.

        Raises:
            DataError: a corrupt segment (named by index).
        """
        bands = self.shape[0]
        out = np.empty((bands, h, w), self.dtype)
        sh, sw = self.seg
        per_plane = self.grid[0] * self.grid[1]
        for plane in range(bands if self.planar else 1):
            for tr in range(r0 // sh, (r0 + h - 1) // sh + 1):
                for tc in range(c0 // sw, (c0 + w - 1) // sw + 1):
                    idx = plane * per_plane + tr * self.grid[1] + tc
                    self._copy(out, idx, plane, tr * sh, tc * sw, r0, c0, h, w)
        return out

    def _copy(self, out: np.ndarray, idx: int, plane: int, top: int, left: int, r0: int, c0: int, h: int,
              w: int) -> None:
        count = int(self.counts[idx])
        try:
            data = os.pread(self.fd, count, int(self.offsets[idx])) if count else None
            if data is not None and len(data) < count:
                raise DataError(f"{self.name}: truncated TIFF (segment {idx} ends past the end of the file)")
            seg, _index, _shape = self._decode(data, idx, jpegtables=None, _fullsize=self._tiled)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise many types on corrupt data
            raise DataError(f"{self.name}: unreadable TIFF (segment {idx}: {type(exc).__name__}: {exc})") from exc
        y0, y1 = max(r0, top), min(r0 + h, top + self.seg[0], self.shape[1])
        x0, x1 = max(c0, left), min(c0 + w, left + self.seg[1], self.shape[2])
        dst = out[:, y0 - r0:y1 - r0, x0 - c0:x1 - c0] if not self.planar else out[plane, y0 - r0:y1 - r0,
                                                                                   x0 - c0:x1 - c0]
        if seg is None:  # a sparse (empty) segment: GDAL reads it as nodata, else 0
            dst[...] = self.nodata if self.nodata is not None and np.isfinite(self.nodata) else 0
            return
        part = seg[0, y0 - top:y1 - top, x0 - left:x1 - left, :]  # [rows, cols, contig samples]
        if self.planar or self.shape[0] == 1:
            dst[...] = part[..., 0]
        else:
            dst[...] = np.moveaxis(part, -1, 0)

    def unchanged(self) -> bool:
        st = os.fstat(self.fd)
        return (st.st_size, st.st_mtime_ns) == self.signature

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StreamingHash:
    """:func:`~mosaic_edge.tile_format.fingerprint` of a tile's files computed a share at a time (1 MB reads).

    Args:
        files: ``(name relative to the tile, path)`` in fingerprint order.
    """

    def __init__(self, files: list[tuple[str, str]], tile: str):
        self._h = hashlib.sha256()
        self._files = [(rel, _open(p, f"{tile}/{rel}")) for rel, p in files]
        self._sizes = [os.fstat(fd).st_size for _, fd in self._files]
        self.total = sum(self._sizes)
        self.done = 0
        self._k, self._pos = 0, -1  # file being hashed, offset in it (-1: its name not hashed yet)

    def advance(self, fraction: float) -> None:
        """Hash until at least ``fraction`` of all bytes are in (1.0: everything)."""
        goal = self.total if fraction >= 1.0 else int(self.total * fraction)
        while self._k < len(self._files) and (self.done < goal or fraction >= 1.0):
            rel, fd = self._files[self._k]
            if self._pos < 0:
                self._h.update(file_header(rel))
                self._pos = 0
            block = os.pread(fd, BLOCK, self._pos)
            if block:
                self._h.update(block)
                self._pos += len(block)
                self.done += len(block)
            if not block or self._pos >= self._sizes[self._k]:
                if os.fstat(fd).st_size != self._sizes[self._k] or self._pos != self._sizes[self._k]:
                    raise DataError(f"{rel}: changed size while being read")
                self._k, self._pos = self._k + 1, -1

    def hexdigest(self) -> str:
        self.advance(1.0)
        return self._h.hexdigest()

    def close(self) -> None:
        for _, fd in self._files:
            os.close(fd)
        self._files = []


@dataclass
class Scene:
    """An open S1/S2 GeoTIFF pair (plus masks) read region by region; see the module docstring."""

    tile_id: str
    s1: Raster
    s2: Raster | None
    masks: dict[str, Raster]
    geo: GeoInfo | None
    hasher: StreamingHash
    closed: bool = field(default=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.s1.shape[1], self.s1.shape[2]

    @property
    def bytes_per_pixel(self) -> int:
        """Decoded bytes of one pixel over all files (masks included)."""
        rasters = [self.s1, *([self.s2] if self.s2 else []), *self.masks.values()]
        return sum(r.shape[0] * r.dtype.itemsize for r in rasters)

    def region(self, r0: int, c0: int, h: int, w: int) -> Any:
        """The :class:`~mosaic_edge.tile_format.Tile` of pixels [r0, r0+h) x [c0, c0+w)."""
        from mosaic_edge.tile_format import Tile, optical_mask

        sar = self.s1.read(r0, c0, h, w)
        optical = self.s2.read(r0, c0, h, w) if self.s2 is not None else None
        arrays = {k: r.read(r0, c0, h, w)[0] for k, r in self.masks.items()}
        mask = optical_mask(arrays.get("scl"), arrays.get("cloud_mask"), (h, w), self.tile_id) if arrays else None
        return Tile(self.tile_id, sar, optical, self.geo, False, "geotiff", self.s1.nodata,
                    None if self.s2 is None else self.s2.nodata, mask)

    def finish(self) -> str:
        """The tile's SHA-256 (the rest of the streaming hash), after checking no file changed meanwhile."""
        digest = self.hasher.hexdigest()
        for r in (self.s1, self.s2, *self.masks.values()):
            if r is not None and not r.unchanged():
                raise DataError(f"{r.name}: changed while being read")
        return digest

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for r in (self.s1, self.s2, *self.masks.values()):
                if r is not None:
                    r.close()
            self.hasher.close()


def open_scene(path: Path, tile_id: str, files: list[tuple[str, str]], limits: Any,
               allow_sar_only: bool) -> Scene | None:
    """Open a tile folder as a scene when it is an ``s1.tif`` (+ ``s2.tif``) pair that decodes to more than
    ``limits.chunk_bytes``; None for anything else (read whole instead).

    Args:
        files: The folder's ``(relative name, path)`` in fingerprint order (symlinks already refused).

    Raises:
        DataError / MissingPartnerError: what reading the pair whole would raise for the same problem.
    """
    from mosaic_edge.tile_format import MASK_FILES, MissingPartnerError, check_arrays_shapes, check_mask_grid, pair_geo

    names = {Path(rel).name.lower(): p for rel, p in files}
    if "s1.tif" not in names or any(rel.lower().endswith(".npz") for rel, _ in files):
        return None
    if "s2.tif" not in names and not allow_sar_only:
        return None  # the whole-tile reader says which partner is missing
    if sum(os.stat(p).st_size for p in names.values()) < limits.chunk_bytes // 4:
        return None  # compressed files this small cannot be a scene worth streaming (a cheap first test)
    opened: list[Raster] = []
    try:
        s1 = Raster(names["s1.tif"], f"{tile_id}/s1.tif")
        opened.append(s1)
        s2 = Raster(names["s2.tif"], f"{tile_id}/s2.tif") if "s2.tif" in names else None
        if s2 is not None:
            opened.append(s2)
        masks = {}
        for fname, key in MASK_FILES.items():
            if fname in names:
                masks[key] = Raster(names[fname], f"{tile_id}/{fname}")
                opened.append(masks[key])
        decoded = sum(r.decoded_bytes for r in opened)
        if decoded <= limits.chunk_bytes:
            for r in opened:
                r.close()
            return None
        check_arrays_shapes(s1.shape, s1.dtype, None if s2 is None else s2.shape, None if s2 is None else s2.dtype,
                            tile_id)
        geo = pair_geo(s1.geo, None if s2 is None else s2.geo, s2 is not None, tile_id)
        for key, r in masks.items():
            check_mask_grid(r.geo, geo, r.name)
            if r.shape[0] != 1 or r.shape[1:] != s1.shape[1:]:
                raise DataError(f"{r.name}: {key} of shape {r.shape}, expected one band of {s1.shape[1:]}")
        if s2 is None and not allow_sar_only:
            raise MissingPartnerError(f"{tile_id}: s1.tif without its S2 partner s2.tif")
        hasher = StreamingHash(files, tile_id)
    except BaseException:
        for r in opened:
            r.close()
        raise
    return Scene(tile_id, s1, s2, masks, geo, hasher)
