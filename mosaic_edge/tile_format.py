"""The spool tile formats: what a ground station writes and the runtime (and calibration) reads.

A tile is one of (README.md, "Spool convention"):

- ``<id>.npz`` (or a folder holding exactly one ``.npz``) with ``sar`` float [2, H, W] in dB (VV, VH, in
  :data:`~mosaic_edge.contract.S1_BANDS` order) and optionally ``optical`` [12, H, W] L2A reflectance x 1e4 on
  the same 10 m grid (:data:`~mosaic_edge.contract.S2_BANDS` order; uint16 as delivered, any real dtype
  accepted), ``cloudy`` (bool scalar: the optical data is unusable), ``transform`` (6 floats, the affine pixel ->
  map transform ``a b c d e f``, rasterio's order), ``crs`` (``"EPSG:<code>"``), ``scl`` (uint8 [H, W], the
  Sentinel-2 L2A scene classification on the same grid) and ``cloud_mask`` ([H, W], non-zero = optical
  unusable). Parsed without pickles
  after checking every member's declared shape and dtype (:mod:`mosaic_edge.tile_npz`). :func:`write_tile` is
  the one writer (tests, benchmarks, the profiler's synthetic tiles, tools that turn products into tiles).
- a folder with ``s1.tif`` ([2, H, W] float dB) + ``s2.tif`` ([12, H, W] on the same grid), multi-band
  GeoTIFFs, optionally with ``scl.tif`` and/or ``cloud_mask.tif`` (one band each, same grid) beside them; the
  ``GDAL_NODATA`` tag of each file marks its missing pixels. Large files (scenes) are read window by window
  (:mod:`mosaic_edge.scene`).
- a folder with BigEarthNet per-band files of one S1 and one S2 patch (``*_VV.tif``, ``*_VH.tif``,
  ``*_B01.tif`` ... at native resolution), flat or in one S1 and one S2 subfolder.

Optical pixels are unusable where ``s2.tif``'s nodata value appears in any band, where the SCL class is one of
:data:`SCL_UNUSABLE` or where the cloud mask is set; S1 pixels equal to ``s1.tif``'s nodata value count as
invalid S1 (as NaN does). A tile without optical data is classified by the SAR head: an ``.npz`` without
``optical``, a folder holding only S1 files whose ``.ready`` marker says it is complete (``allow_sar_only``), or
optical flagged ``cloudy`` or mostly invalid. A folder with S1 but no S2 and no marker raises
:class:`MissingPartnerError`, so the spool can wait. Symlinks are refused everywhere. Every problem raises
:class:`~mosaic_edge.errors.DataError` with one line.

One pass over the bytes: :func:`read_files` reads each file of a tile once into memory; its SHA-256 (the
identity of a tile for exactly-once, :meth:`TileFiles.sha256` == :func:`fingerprint`) and :func:`decode` work
on those bytes, and ``.npz`` arrays stay views into them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosaic_edge.contract import OPTICAL_PRODUCTS
from mosaic_edge.data.tiff import GeoInfo, decode_tiff_meta
from mosaic_edge.errors import DataError
from mosaic_edge.tile_bands import decode_band_tile
from mosaic_edge.tile_npz import NPZ_KEYS, parse_npz

__all__ = ["NPZ_KEYS", "SCL_UNUSABLE", "MissingPartnerError", "Tile", "TileFiles", "TileLimits", "decode",
           "fingerprint", "load_npz", "optical_mask", "read_files", "read_tile", "write_tile"]


class MissingPartnerError(DataError):
    """One modality of a tile folder is absent (it may still be arriving)."""


# Bytes per pixel a tile read whole holds: its file bytes (S1 float32 + S2 uint16: 32) and what decoding and
# preparing add (GeoTIFF arrays decoded beside the file bytes, a float32 copy where NaN are filled).
WHOLE_READ_BYTES_PER_PIXEL = 48


@dataclass(frozen=True)
class TileLimits:
    """Guards applied to every tile: a memory budget, not a pixel count.

    Attributes:
        memory_bytes: Most memory one tile read whole (its file bytes, decoded and prepared arrays) may take;
            sizes are checked from headers before anything is decoded (:attr:`max_pixels`).
        chunk_bytes: A GeoTIFF pair that decodes to more than this is a scene, read region by region
            (:mod:`mosaic_edge.scene`) in chunks of windows whose pixels take about this much.
        max_windows: Most windows of one tile (records, logits and the results file grow with them).
        max_files: Most files a tile folder may hold.
        max_invalid_fraction: A tile whose SAR is more invalid than this fails; a patch whose optical is more
            invalid than this is answered by the SAR head.
    """

    memory_bytes: int = 1 << 30
    chunk_bytes: int = 64 << 20
    max_windows: int = 250_000
    max_files: int = 64
    max_invalid_fraction: float = 0.5

    @property
    def max_pixels(self) -> int:
        """Largest H*W of a tile read whole: :attr:`memory_bytes` / :data:`WHOLE_READ_BYTES_PER_PIXEL`."""
        return self.memory_bytes // WHOLE_READ_BYTES_PER_PIXEL

    @property
    def max_file_bytes(self) -> int:
        """Largest file of a tile read whole."""
        return self.memory_bytes


# Sentinel-2 L2A scene classification (SCL) classes whose optical data is unusable: 0 no data, 1 saturated or
# defective, 3 cloud shadows, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus (ESA,
# Sentinel-2 Level-2A Algorithm Theoretical Basis Document, scene classification). Dark areas (2), vegetation
# (4), not vegetated (5), water (6), unclassified (7) and snow/ice (11) are land cover the model classifies.
SCL_UNUSABLE = (0, 1, 3, 8, 9, 10)
_SCL_LUT = np.zeros(256, bool)
_SCL_LUT[list(SCL_UNUSABLE)] = True


@dataclass
class Tile:
    """Raw data of one tile, in physical units.

    Attributes:
        sar_nodata / optical_nodata: The files' ``GDAL_NODATA`` values (None: none declared).
        optical_mask: bool [H, W], True where the SCL band or the cloud mask says the optical data is unusable;
            None when neither is supplied or nothing is masked.
    """

    id: str
    sar: np.ndarray | dict[str, np.ndarray]
    optical: np.ndarray | dict[str, np.ndarray] | None
    geo: GeoInfo | None
    cloudy: bool
    kind: str
    sar_nodata: float | None = None
    optical_nodata: float | None = None
    optical_mask: np.ndarray | None = None
    optical_product: str | None = None  # "L2A" / "L1C" when the tile says (npz key, S2 product name), else None


def optical_mask(scl: np.ndarray | None, cloud: np.ndarray | None, shape: tuple[int, int], name: str
                 ) -> np.ndarray | None:
    """Per-pixel "optical unusable" from an SCL band (classes :data:`SCL_UNUSABLE`) and/or a cloud mask
    (non-zero), both [H, W] on the tile's grid; None when neither masks anything.

    Raises:
        DataError: a mask of the wrong shape or type.
    """
    mask = None
    for arr, what in ((scl, "SCL band"), (cloud, "cloud mask")):
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != tuple(shape):
            raise DataError(f"{name}: {what} of shape {arr.shape}, expected {tuple(shape)} (the S2 grid)")
        if what == "SCL band":
            if arr.dtype.kind not in "ui" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
                raise DataError(f"{name}: SCL band must hold class numbers 0-255, got {arr.dtype}")
            m = _SCL_LUT[arr.astype(np.uint8, copy=False)]
        else:
            if arr.dtype.kind not in "buif":
                raise DataError(f"{name}: cloud mask dtype {arr.dtype} is not numeric")
            m = arr != 0
        mask = m if mask is None else mask | m
    return mask if mask is not None and mask.any() else None


def _files(path: Path, limits: TileLimits) -> list[tuple[str, str]]:
    """``(name relative to the tile, path)`` of a tile's regular files -- the file itself, or a folder's files
    up to one level deep -- in :func:`fingerprint`'s order; refuses symlinks and anything not a regular file."""
    if path.is_symlink():
        raise DataError(f"{path.name}: is a symlink (refused)")
    if path.is_file():
        return [(path.name, str(path))]
    if not path.is_dir():
        raise DataError(f"{path.name}: disappeared or is not a file or folder")
    out: list[tuple[str, str]] = []

    def add(entry: os.DirEntry, rel: str, depth: int) -> None:
        if entry.is_symlink():
            raise DataError(f"{path.name}: {rel} is a symlink (refused)")
        if entry.is_dir(follow_symlinks=False):
            if depth >= 1:
                raise DataError(f"{path.name}: folders nested deeper than one level")
            with os.scandir(entry.path) as sub:
                for child in sub:
                    add(child, f"{rel}/{child.name}", depth + 1)
        elif entry.is_file(follow_symlinks=False):
            out.append((rel, entry.path))
            if len(out) > limits.max_files:
                raise DataError(f"{path.name}: more than {limits.max_files} files")
        else:
            raise DataError(f"{path.name}: {rel} is not a regular file (refused)")

    with os.scandir(path) as entries:
        for entry in entries:
            add(entry, entry.name, 0)
    return sorted(out, key=lambda item: item[0].split("/"))


def tile_files(path: Path, limits: TileLimits) -> list[tuple[str, str]]:
    """``(name relative to the tile, path)`` of a tile's regular files in :func:`fingerprint`'s order (symlinks,
    FIFOs and deep folders refused)."""
    return _files(Path(path), limits)


def file_header(name: str) -> bytes:
    """What :func:`fingerprint` hashes before a file's bytes: its name relative to the tile, NUL-terminated."""
    return name.encode() + b"\0"


def fingerprint(path: Path) -> str:
    """SHA-256 over the relative names and bytes of a tile's files (identifies re-sent tiles).

    The same digest as :meth:`TileFiles.sha256` of the tile's files read by :func:`read_files`.
    """
    h = hashlib.sha256()
    for name, f in _files(path, TileLimits(max_files=10_000)):
        h.update(file_header(name))
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TileFiles:
    """The files of one tile, each read once into memory (:func:`read_files`).

    Attributes:
        path: The tile (file or folder).
        files: ``(name relative to the tile, bytes)`` in the order :func:`fingerprint` hashes them.
    """

    path: Path
    files: tuple[tuple[str, memoryview], ...]

    def sha256(self) -> str:
        """:func:`fingerprint` of the tile, from the bytes in memory (no second read)."""
        h = hashlib.sha256()
        for name, data in self.files:
            h.update(file_header(name))
            h.update(data)
        return h.hexdigest()


def _read_file(path: str | Path, max_bytes: int | None = None) -> memoryview:
    """All bytes of one file, read straight into one buffer (no zero-filling, no growing). A symlink or a FIFO
    swapped in after the folder was listed is refused (``O_NOFOLLOW``; ``O_NONBLOCK`` + a regular-file check).

    Raises:
        DataError: not a regular file, or larger than ``max_bytes``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{Path(path).name}: not a regular file (refused)")
        size = st.st_size
        if max_bytes is not None and size > max_bytes:
            raise DataError(f"{Path(path).name}: larger than {max_bytes} bytes, the memory budget of a tile read "
                            "whole (deliver scenes as GeoTIFF s1.tif + s2.tif, read window by window)")
        view = memoryview(np.empty(size, np.uint8).data)
        done = 0
        while done < size:
            n = os.readv(fd, [view[done:]])
            if n == 0:
                break  # the file shrank since fstat: decoding will find it truncated
            done += n
        return view[:done]
    finally:
        os.close(fd)


def read_files(path: str | Path, limits: TileLimits = TileLimits()) -> TileFiles:
    """Read every file of a tile once (symlinks refused, count and size limited).

    Raises:
        DataError: a symlink, too many or too large files, or a file that vanished while being read.
    """
    path = Path(path)
    files = []
    for name, f in _files(path, limits):
        try:
            files.append((name, _read_file(f, limits.max_file_bytes)))
        except FileNotFoundError as exc:
            raise DataError(f"{path.name}: {name}: no such file (it disappeared while being read)") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(f"{path.name}: {name} is a symlink (refused)") from exc
            raise
    return TileFiles(path, tuple(files))


def load_npz(path: Path, limits: TileLimits) -> dict[str, np.ndarray]:
    """Load an ``.npz`` safely (:mod:`mosaic_edge.tile_npz`): no pickles, sizes checked before reading."""
    path = Path(path)
    try:
        data = _read_file(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path.name}: disappeared while being read") from exc
    return parse_npz(data, path.name, limits.max_pixels)


def _geo_from_npz(arrays: dict[str, np.ndarray], name: str) -> GeoInfo | None:
    if "transform" not in arrays:
        return None
    t = np.asarray(arrays["transform"], dtype=np.float64).ravel()
    if t.size != 6 or not np.all(np.isfinite(t)):
        raise DataError(f"{name}: 'transform' must hold 6 finite numbers")
    crs = str(arrays["crs"]) if "crs" in arrays else None
    geo = GeoInfo(transform=tuple(float(v) for v in t), crs=crs)  # type: ignore[arg-type]
    geo.check(name)
    return geo


def check_arrays(sar: np.ndarray, optical: np.ndarray | None, name: str, limits: TileLimits) -> None:
    """Shapes, dtypes and size of a tile's S1 ``[2, H, W]`` (float dB) and S2 ``[12, H, W]`` arrays."""
    check_arrays_shapes(sar.shape, sar.dtype, None if optical is None else optical.shape,
                        None if optical is None else optical.dtype, name)
    if sar.shape[1] * sar.shape[2] > limits.max_pixels:
        raise DataError(f"{name}: tile of {sar.shape[1]}x{sar.shape[2]} pixels exceeds {limits.max_pixels} "
                        f"(the {limits.memory_bytes >> 20} MB memory budget of a tile read whole; deliver larger "
                        "tiles as GeoTIFF s1.tif + s2.tif, which are read window by window)")


def check_arrays_shapes(sar: tuple[int, ...], sar_dtype: np.dtype, optical: tuple[int, ...] | None,
                        optical_dtype: np.dtype | None, name: str) -> None:
    """:func:`check_arrays` from shapes and dtypes alone (headers of a scene), without the size limit."""
    if len(sar) != 3 or sar[0] != 2:
        raise DataError(f"{name}: S1 must be [2, H, W] (VV, VH), got shape {sar}")
    if sar_dtype.kind != "f":
        raise DataError(f"{name}: S1 dtype {sar_dtype}, expected float backscatter in dB")
    if optical is None or optical_dtype is None:
        return
    if len(optical) != 3 or optical[0] != 12:
        raise DataError(f"{name}: S2 must be [12, H, W], got shape {optical}")
    if optical_dtype.kind not in "uif":
        raise DataError(f"{name}: S2 dtype {optical_dtype} is not a real number type")
    if optical[1:] != sar[1:]:
        raise DataError(f"{name}: S1 size {sar[1:]} and S2 size {optical[1:]} differ")


def _npz_tile(data: memoryview, name: str, tile_id: str, limits: TileLimits) -> Tile:
    arrays = parse_npz(data, name, limits.max_pixels)
    if "sar" not in arrays:
        raise DataError(f"{name}: no 'sar' array (has {sorted(arrays)})")
    sar, optical = arrays["sar"], arrays.get("optical")
    check_arrays(sar, optical, name, limits)
    cloudy = bool(np.asarray(arrays.get("cloudy", False)).item()) if "cloudy" in arrays else False
    mask = None
    if "scl" in arrays or "cloud_mask" in arrays:
        mask = optical_mask(arrays.get("scl"), arrays.get("cloud_mask"), sar.shape[1:], name)
    product = None
    if "optical_product" in arrays:
        product = str(np.asarray(arrays["optical_product"]).item())
        if product not in OPTICAL_PRODUCTS:
            raise DataError(f"{name}: optical_product {product[:20]!r}, expected one of {list(OPTICAL_PRODUCTS)}")
    return Tile(tile_id, sar, optical, _geo_from_npz(arrays, name), cloudy, "npz", optical_mask=mask,
                optical_product=product)


def _geotiff_pair(s1: tuple[str, memoryview], s2: tuple[str, memoryview] | None, tile_id: str,
                  limits: TileLimits, masks: dict[str, tuple[str, memoryview]]) -> Tile:
    sar, g1, nd1 = decode_tiff_meta(s1[1], f"{tile_id}/{s1[0]}", max_pixels=limits.max_pixels)
    optical, g2, nd2 = (decode_tiff_meta(s2[1], f"{tile_id}/{s2[0]}", limits.max_pixels) if s2 is not None
                        else (None, None, None))
    check_arrays(sar, optical, tile_id, limits)
    geo = pair_geo(g1, g2, s2 is not None, tile_id)
    arrays = {}
    for key, (rel, data) in masks.items():
        arr, g, _ = decode_tiff_meta(data, f"{tile_id}/{rel}", limits.max_pixels)
        check_mask_grid(g, geo, f"{tile_id}/{rel}")
        arrays[key] = arr
    mask = optical_mask(arrays.get("scl"), arrays.get("cloud_mask"), sar.shape[1:], tile_id) if arrays else None
    return Tile(tile_id, sar, optical, geo, False, "geotiff", nd1, nd2, mask)


MASK_FILES = {"scl.tif": "scl", "cloud_mask.tif": "cloud_mask"}


def check_mask_grid(g: GeoInfo | None, geo: GeoInfo | None, name: str) -> None:
    """A mask file beside a georeferenced pair must be on its grid (a mask without georeferencing is taken
    pixel for pixel)."""
    if g is None:
        return
    g.check(name)
    if geo is None or not g.same_grid(geo):
        raise DataError(f"{name}: not on the S1/S2 grid (transform {list(g.transform)}, {g.crs})")


def pair_geo(g1: GeoInfo | None, g2: GeoInfo | None, has_s2: bool, tile_id: str) -> GeoInfo | None:
    """The grid of an S1/S2 pair: both georeferenced on one grid (same CRS and transform), or neither.

    Raises:
        DataError: one line saying how the georeferencing is malformed or how the two grids disagree.
    """
    for g, what in ((g1, "s1.tif"), (g2, "s2.tif")):
        if g is not None:
            g.check(f"{tile_id}/{what}")
    if has_s2 and (g1 is None) != (g2 is None):
        which = "s1.tif" if g1 is not None else "s2.tif"
        raise DataError(f"{tile_id}: only {which} is georeferenced; S1 and S2 must be on one grid")
    if g1 is not None and g2 is not None:
        if g1.crs != g2.crs:
            raise DataError(f"{tile_id}: S1 CRS {g1.crs} and S2 CRS {g2.crs} differ")
        if not g1.same_grid(g2):
            raise DataError(f"{tile_id}: S1 and S2 grids are not aligned (transforms {list(g1.transform)} and "
                            f"{list(g2.transform)} differ)")
    return g1 or g2


def decode(files: TileFiles, tile_id: str | None = None, limits: TileLimits = TileLimits(),
           allow_sar_only: bool = False) -> Tile:
    """Turn a tile's files (read once by :func:`read_files`) into raw arrays; see :func:`read_tile`."""
    path = files.path
    tile_id = tile_id or path.name.removesuffix(".npz")
    npz = [(n, d) for n, d in files.files if n.lower().endswith(".npz")]
    if path.is_file() or npz:
        if len(npz) != 1 or (path.is_file() and not path.name.lower().endswith(".npz")):
            raise DataError(f"{tile_id}: expected one .npz, found {len(npz) if path.is_dir() else 0}")
        return _npz_tile(npz[0][1], Path(npz[0][0]).name, tile_id, limits)
    names = {Path(n).name.lower(): (n, d) for n, d in files.files}
    if "s1.tif" in names or "s2.tif" in names:
        if "s1.tif" not in names:
            raise MissingPartnerError(f"{tile_id}: s2.tif without its S1 partner s1.tif")
        if "s2.tif" not in names and not allow_sar_only:
            raise MissingPartnerError(f"{tile_id}: s1.tif without its S2 partner s2.tif")
        masks = {key: names[f] for f, key in MASK_FILES.items() if f in names}
        return _geotiff_pair(names["s1.tif"], names.get("s2.tif"), tile_id, limits, masks)
    return decode_band_tile(files, tile_id, limits, allow_sar_only)


def read_tile(path: str | Path, tile_id: str | None = None, limits: TileLimits = TileLimits(),
              allow_sar_only: bool = False) -> Tile:
    """Read one tile (file or folder) into raw arrays (:func:`read_files` then :func:`decode`).

    Args:
        path: The ``.npz`` file or the tile folder.
        tile_id: Identifier for messages and outputs (defaults to the name without ``.npz``).
        limits: Size guards.
        allow_sar_only: A folder holding only S1 data is a SAR-only tile (its ``.ready`` marker says the
            writer is done) instead of a :class:`MissingPartnerError`.

    Raises:
        DataError: one line naming the problem; :class:`MissingPartnerError` when a modality is absent.
    """
    return decode(read_files(path, limits), tile_id, limits, allow_sar_only)


def write_tile(path: str | Path, sar: np.ndarray, optical: np.ndarray | None = None, *,
               cloudy: bool | None = None, transform: Sequence[float] | None = None,
               crs: str | None = None, scl: np.ndarray | None = None, cloud_mask: np.ndarray | None = None,
               optical_product: str | None = None) -> Path:
    """Write one ``.npz`` tile atomically (a dot-named temp file renamed into place).

    The temp name starts with ``.``, which the spool ignores, so a tile written straight into ``incoming/``
    is never taken half-written.

    Args:
        path: Destination ``<id>.npz``.
        sar: [2, H, W] float dB.
        optical: [12, H, W] reflectance x 1e4 on the same grid, or None for a SAR-only tile.
        cloudy: Mark the optical data as unusable.
        transform: Affine ``(a, b, c, d, e, f)`` of the grid.
        crs: ``"EPSG:<code>"`` of ``transform``.
        scl: uint8 [H, W] Sentinel-2 scene classification on the same grid.
        cloud_mask: [H, W], non-zero where the optical data is unusable.
        optical_product: Processing level of ``optical``, ``"L2A"`` or ``"L1C"`` (the runtime refuses a tile
            whose level differs from the model's).

    Raises:
        ValueError: the arrays do not have the tile shapes.
    """
    path = Path(path)
    sar = np.asarray(sar)
    if sar.ndim != 3 or sar.shape[0] != 2 or sar.dtype.kind != "f":
        raise ValueError(f"write_tile: sar must be float [2, H, W], got {sar.dtype} {sar.shape}")
    arrays: dict[str, np.ndarray] = {"sar": sar}
    if optical is not None:
        optical = np.asarray(optical)
        if optical.ndim != 3 or optical.shape[0] != 12 or optical.shape[1:] != sar.shape[1:]:
            raise ValueError(f"write_tile: optical must be [12, {sar.shape[1]}, {sar.shape[2]}], "
                             f"got {optical.shape}")
        arrays["optical"] = optical
    if cloudy is not None:
        arrays["cloudy"] = np.asarray(bool(cloudy))
    if transform is not None:
        t = np.asarray(transform, dtype=np.float64).ravel()
        if t.size != 6:
            raise ValueError(f"write_tile: transform must hold 6 numbers, got {t.size}")
        arrays["transform"] = t
    if crs is not None:
        arrays["crs"] = np.asarray(str(crs))
    if optical_product is not None:
        if optical_product not in OPTICAL_PRODUCTS:
            raise ValueError(f"write_tile: optical_product must be one of {list(OPTICAL_PRODUCTS)}")
        arrays["optical_product"] = np.asarray(optical_product)
    for key, mask in (("scl", scl), ("cloud_mask", cloud_mask)):
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != sar.shape[1:]:
                raise ValueError(f"write_tile: {key} must be [{sar.shape[1]}, {sar.shape[2]}], got {mask.shape}")
            arrays[key] = mask
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
