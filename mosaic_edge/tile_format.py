"""The spool tile formats: what a ground station writes and the runtime (and calibration) reads.

A tile is one of (README.md, "Spool convention"):

- ``<id>.npz`` (or a folder holding exactly one ``.npz``) with ``sar`` float [2, H, W] in dB (VV, VH, in
  :data:`~mosaic_edge.contract.S1_BANDS` order) and optionally ``optical`` [12, H, W] L2A reflectance x 1e4 on
  the same 10 m grid (:data:`~mosaic_edge.contract.S2_BANDS` order; uint16 as delivered, any real dtype
  accepted), ``cloudy`` (bool scalar: the optical data is unusable), ``transform`` (6 floats, the affine pixel ->
  map transform ``a b c d e f``, rasterio's order) and ``crs`` (``"EPSG:<code>"``). Parsed without pickles
  after checking every member's declared shape and dtype (:mod:`mosaic_edge.tile_npz`). :func:`write_tile` is
  the one writer (tests, benchmarks, the profiler's synthetic tiles, tools that turn products into tiles).
- a folder with ``s1.tif`` ([2, H, W] float dB) + ``s2.tif`` ([12, H, W] on the same grid), multi-band
  GeoTIFFs.
- a folder with BigEarthNet per-band files of one S1 and one S2 patch (``*_VV.tif``, ``*_VH.tif``,
  ``*_B01.tif`` ... at native resolution), flat or in one S1 and one S2 subfolder.

A tile without optical data is classified by the SAR head: an ``.npz`` without ``optical``, a folder holding
only S1 files whose ``.ready`` marker says it is complete (``allow_sar_only``), or optical flagged ``cloudy``
or mostly invalid. A folder with S1 but no S2 and no marker raises :class:`MissingPartnerError`, so the spool
can wait. Symlinks are refused everywhere. Every problem raises :class:`~mosaic_edge.errors.DataError` with
one line.

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

from mosaic_edge.data.tiff import GeoInfo, decode_tiff
from mosaic_edge.errors import DataError
from mosaic_edge.tile_bands import decode_band_tile
from mosaic_edge.tile_npz import NPZ_KEYS, parse_npz

__all__ = ["NPZ_KEYS", "MissingPartnerError", "Tile", "TileFiles", "TileLimits", "decode", "fingerprint",
           "load_npz", "read_files", "read_tile", "write_tile"]


class MissingPartnerError(DataError):
    """One modality of a tile folder is absent (it may still be arriving)."""


@dataclass(frozen=True)
class TileLimits:
    """Guards applied to every tile.

    Attributes:
        max_pixels: Largest H*W of a tile (checked from headers before decoding).
        max_files: Most files a tile folder may hold.
        max_invalid_fraction: A tile whose SAR is more invalid than this fails; a patch whose optical is more
            invalid than this is answered by the SAR head.
    """

    max_pixels: int = 25_000_000
    max_files: int = 64
    max_invalid_fraction: float = 0.5

    @property
    def max_file_bytes(self) -> int:
        """Largest file of a tile: 16 float64 bands of ``max_pixels`` plus headers."""
        return 16 * 8 * self.max_pixels + (1 << 20)


@dataclass
class Tile:
    """Raw data of one tile, in physical units."""

    id: str
    sar: np.ndarray | dict[str, np.ndarray]
    optical: np.ndarray | dict[str, np.ndarray] | None
    geo: GeoInfo | None
    cloudy: bool
    kind: str


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


def fingerprint(path: Path) -> str:
    """SHA-256 over the relative names and bytes of a tile's files (identifies re-sent tiles).

    The same digest as :meth:`TileFiles.sha256` of the tile's files read by :func:`read_files`.
    """
    h = hashlib.sha256()
    for name, f in _files(path, TileLimits(max_files=10_000)):
        h.update(name.encode() + b"\0")
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
            h.update(name.encode() + b"\0")
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
            raise DataError(f"{Path(path).name}: larger than {max_bytes} bytes")
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
    return GeoInfo(transform=tuple(float(v) for v in t), crs=crs)  # type: ignore[arg-type]


def check_arrays(sar: np.ndarray, optical: np.ndarray | None, name: str, limits: TileLimits) -> None:
    """Shapes, dtypes and size of a tile's S1 ``[2, H, W]`` (float dB) and S2 ``[12, H, W]`` arrays."""
    if sar.ndim != 3 or sar.shape[0] != 2:
        raise DataError(f"{name}: S1 must be [2, H, W] (VV, VH), got shape {sar.shape}")
    if sar.dtype.kind != "f":
        raise DataError(f"{name}: S1 dtype {sar.dtype}, expected float backscatter in dB")
    if sar.shape[1] * sar.shape[2] > limits.max_pixels:
        raise DataError(f"{name}: tile of {sar.shape[1]}x{sar.shape[2]} pixels exceeds {limits.max_pixels}")
    if optical is None:
        return
    if optical.ndim != 3 or optical.shape[0] != 12:
        raise DataError(f"{name}: S2 must be [12, H, W], got shape {optical.shape}")
    if optical.dtype.kind not in "uif":
        raise DataError(f"{name}: S2 dtype {optical.dtype} is not a real number type")
    if optical.shape[1:] != sar.shape[1:]:
        raise DataError(f"{name}: S1 size {sar.shape[1:]} and S2 size {optical.shape[1:]} differ")


def _npz_tile(data: memoryview, name: str, tile_id: str, limits: TileLimits) -> Tile:
    arrays = parse_npz(data, name, limits.max_pixels)
    if "sar" not in arrays:
        raise DataError(f"{name}: no 'sar' array (has {sorted(arrays)})")
    sar, optical = arrays["sar"], arrays.get("optical")
    check_arrays(sar, optical, name, limits)
    cloudy = bool(np.asarray(arrays.get("cloudy", False)).item()) if "cloudy" in arrays else False
    return Tile(tile_id, sar, optical, _geo_from_npz(arrays, name), cloudy, "npz")


def _geotiff_pair(s1: tuple[str, memoryview], s2: tuple[str, memoryview] | None, tile_id: str,
                  limits: TileLimits) -> Tile:
    sar, g1 = decode_tiff(s1[1], f"{tile_id}/{s1[0]}", max_pixels=limits.max_pixels)
    optical, g2 = decode_tiff(s2[1], f"{tile_id}/{s2[0]}", limits.max_pixels) if s2 is not None else (None, None)
    check_arrays(sar, optical, tile_id, limits)
    if g1 is not None and g2 is not None:
        if g1.crs != g2.crs:
            raise DataError(f"{tile_id}: S1 CRS {g1.crs} and S2 CRS {g2.crs} differ")
        if not np.allclose(g1.transform, g2.transform, rtol=0, atol=1e-6 * max(1.0, abs(g1.transform[0]))):
            raise DataError(f"{tile_id}: S1 and S2 grids are not aligned (transforms differ)")
    return Tile(tile_id, sar, optical, g1 or g2, False, "geotiff")


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
        return _geotiff_pair(names["s1.tif"], names.get("s2.tif"), tile_id, limits)
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
               crs: str | None = None) -> Path:
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
