"""The spool tile formats: what a ground station writes and the runtime (and calibration) reads.

A tile is one of (README.md, "Spool convention"):

- ``<id>.npz`` (or a folder holding exactly one ``.npz``) with ``sar`` float [2, H, W] in dB (VV, VH, in
  :data:`~mosaic_edge.contract.S1_BANDS` order) and optionally ``optical`` [12, H, W] L2A reflectance x 1e4 on
  the same 10 m grid (:data:`~mosaic_edge.contract.S2_BANDS` order; uint16 as delivered, any real dtype
  accepted), ``cloudy`` (bool scalar: the optical data is unusable), ``transform`` (6 floats, the affine pixel ->
  map transform ``a b c d e f``, rasterio's order) and ``crs`` (``"EPSG:<code>"``). Loaded with
  ``allow_pickle=False`` after checking every member's declared shape and dtype. :func:`write_tile` is the one
  writer (tests, benchmarks, the profiler's synthetic tiles, tools that turn products into tiles).
- a folder with ``s1.tif`` ([2, H, W] float dB) + ``s2.tif`` ([12, H, W] on the same grid), multi-band
  GeoTIFFs.
- a folder with BigEarthNet per-band files of one S1 and one S2 patch (``*_VV.tif``, ``*_VH.tif``,
  ``*_B01.tif`` ... at native resolution), flat or in one S1 and one S2 subfolder.

A tile without optical data is classified by the SAR head: an ``.npz`` without ``optical``, a folder holding
only S1 files whose ``.ready`` marker says it is complete (``allow_sar_only``), or optical flagged ``cloudy``
or mostly invalid. A folder with S1 but no S2 and no marker raises :class:`MissingPartnerError`, so the spool
can wait. Symlinks are refused everywhere. Every problem raises :class:`~mosaic_edge.errors.DataError` with
one line.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosaic_edge.data.tiff import GeoInfo, read_tiff
from mosaic_edge.errors import DataError

NPZ_KEYS = frozenset({"sar", "optical", "cloudy", "transform", "crs"})


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


@dataclass
class Tile:
    """Raw data of one tile, in physical units."""

    id: str
    sar: np.ndarray | dict[str, np.ndarray]
    optical: np.ndarray | dict[str, np.ndarray] | None
    geo: GeoInfo | None
    cloudy: bool
    kind: str


def _files(path: Path, limits: TileLimits) -> list[Path]:
    """Regular files of a tile (the file itself or a folder up to one level deep); refuses symlinks."""
    if path.is_symlink():
        raise DataError(f"{path.name}: is a symlink (refused)")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path.name}: disappeared or is not a file or folder")
    out = []
    for root, dirs, files in os.walk(path, followlinks=False):
        depth = len(Path(root).relative_to(path).parts)
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink():
                raise DataError(f"{path.name}: {p.relative_to(path)} is a symlink (refused)")
        if depth >= 1 and dirs:
            raise DataError(f"{path.name}: folders nested deeper than one level")
        out += [Path(root) / f for f in files]
        if len(out) > limits.max_files:
            raise DataError(f"{path.name}: more than {limits.max_files} files")
    return sorted(out)


def fingerprint(path: Path) -> str:
    """SHA-256 over the relative names and bytes of a tile's files (identifies re-sent tiles)."""
    h = hashlib.sha256()
    for f in _files(path, TileLimits(max_files=10_000)):
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def load_npz(path: Path, limits: TileLimits) -> dict[str, np.ndarray]:
    """Load an ``.npz`` safely: no pickles, member sizes checked from their headers before reading."""
    fmt = np.lib.format
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if key not in NPZ_KEYS:
                    raise DataError(f"{path.name}: unexpected array {key!r} (allowed: {sorted(NPZ_KEYS)})")
                with zf.open(info) as fh:
                    version = fmt.read_magic(fh)
                    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _fortran, dtype = reader(fh)
                    if dtype.hasobject:
                        raise DataError(f"{path.name}: array {key!r} holds Python objects (pickles refused)")
                    if int(np.prod(shape, dtype=np.int64)) > 16 * limits.max_pixels:
                        raise DataError(f"{path.name}: array {key!r} declares shape {shape}, over the limit")
                with zf.open(info) as fh:
                    out[key] = fmt.read_array(fh, allow_pickle=False)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path.name}: disappeared while being read") from exc
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise many types on corrupt archives
        raise DataError(f"{path.name}: unreadable .npz ({type(exc).__name__}: {exc})") from exc
    return out


def _geo_from_npz(arrays: dict[str, np.ndarray], name: str) -> GeoInfo | None:
    if "transform" not in arrays:
        return None
    t = np.asarray(arrays["transform"], dtype=np.float64).ravel()
    if t.size != 6 or not np.all(np.isfinite(t)):
        raise DataError(f"{name}: 'transform' must hold 6 finite numbers")
    crs = str(arrays["crs"]) if "crs" in arrays else None
    return GeoInfo(transform=tuple(float(v) for v in t), crs=crs)  # type: ignore[arg-type]


def _check_arrays(sar: np.ndarray, optical: np.ndarray | None, name: str, limits: TileLimits) -> None:
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


def _read_npz_tile(path: Path, tile_id: str, limits: TileLimits) -> Tile:
    arrays = load_npz(path, limits)
    if "sar" not in arrays:
        raise DataError(f"{path.name}: no 'sar' array (has {sorted(arrays)})")
    sar, optical = arrays["sar"], arrays.get("optical")
    _check_arrays(sar, optical, path.name, limits)
    cloudy = bool(np.asarray(arrays.get("cloudy", False)).item()) if "cloudy" in arrays else False
    return Tile(tile_id, sar, optical, _geo_from_npz(arrays, path.name), cloudy, "npz")


def _read_geotiff_pair(s1: Path, s2: Path | None, tile_id: str, limits: TileLimits) -> Tile:
    sar, g1 = read_tiff(s1, max_pixels=limits.max_pixels)
    optical, g2 = read_tiff(s2, max_pixels=limits.max_pixels) if s2 is not None else (None, None)
    _check_arrays(sar, optical, tile_id, limits)
    if g1 is not None and g2 is not None:
        if g1.crs != g2.crs:
            raise DataError(f"{tile_id}: S1 CRS {g1.crs} and S2 CRS {g2.crs} differ")
        if not np.allclose(g1.transform, g2.transform, rtol=0, atol=1e-6 * max(1.0, abs(g1.transform[0]))):
            raise DataError(f"{tile_id}: S1 and S2 grids are not aligned (transforms differ)")
    return Tile(tile_id, sar, optical, g1 or g2, False, "geotiff")


def read_tile(path: str | Path, tile_id: str | None = None, limits: TileLimits = TileLimits(),
              allow_sar_only: bool = False) -> Tile:
    """Read one tile (file or folder) into raw arrays.

    Args:
        path: The ``.npz`` file or the tile folder.
        tile_id: Identifier for messages and outputs (defaults to the name without ``.npz``).
        limits: Size guards.
        allow_sar_only: A folder holding only S1 data is a SAR-only tile (its ``.ready`` marker says the
            writer is done) instead of a :class:`MissingPartnerError`.

    Raises:
        DataError: one line naming the problem; :class:`MissingPartnerError` when a modality is absent.
    """
    path = Path(path)
    tile_id = tile_id or path.name.removesuffix(".npz")
    files = _files(path, limits)
    try:
        npz = [f for f in files if f.suffix.lower() == ".npz"]
        if path.is_file() or npz:
            if len(npz) != 1:
                raise DataError(f"{tile_id}: expected one .npz, found {len(npz) if path.is_dir() else 0}")
            return _read_npz_tile(npz[0], tile_id, limits)
        names = {f.name.lower(): f for f in files}
        if "s1.tif" in names or "s2.tif" in names:
            if "s1.tif" not in names:
                raise MissingPartnerError(f"{tile_id}: s2.tif without its S1 partner s1.tif")
            if "s2.tif" not in names and not allow_sar_only:
                raise MissingPartnerError(f"{tile_id}: s1.tif without its S2 partner s2.tif")
            return _read_geotiff_pair(names["s1.tif"], names.get("s2.tif"), tile_id, limits)
        return _read_band_tile(files, tile_id, limits, allow_sar_only)
    except FileNotFoundError as exc:
        raise DataError(f"{tile_id}: a file disappeared while being read ({Path(exc.filename or '').name})") \
            from exc


def _read_band_tile(files: list[Path], tile_id: str, limits: TileLimits, allow_sar_only: bool) -> Tile:
    from mosaic_edge.data.benv2 import read_benv2_patch  # the training reader: same band handling

    vv = [f for f in files if f.stem.upper().endswith("_VV")]
    b02 = [f for f in files if f.stem.upper().endswith("_B02")]
    if not vv and not b02:
        raise DataError(f"{tile_id}: no tile files (.npz, s1.tif+s2.tif, or per-band *_VV.tif/*_B02.tif)")
    if len(vv) > 1 or len(b02) > 1:
        raise DataError(f"{tile_id}: more than one S1 or S2 patch in the folder")
    if not vv:
        raise MissingPartnerError(f"{tile_id}: S2 band files without the S1 partner (*_VV.tif, *_VH.tif)")
    if not b02:
        if not allow_sar_only:
            raise MissingPartnerError(f"{tile_id}: S1 band files without the S2 partner (*_B02.tif ...)")
        sar = {}
        for band in ("VV", "VH"):
            match = [f for f in files if f.stem.upper().endswith(f"_{band}")]
            if len(match) != 1:
                raise DataError(f"{tile_id}: S1 band {band} missing or ambiguous")
            sar[band], _ = read_tiff(match[0], max_pixels=limits.max_pixels)
        arr = np.stack([sar["VV"], sar["VH"]]) if sar["VV"].shape == sar["VH"].shape else None
        if arr is None:
            raise DataError(f"{tile_id}: S1 bands VV and VH differ in size")
        _check_arrays(arr, None, tile_id, limits)
        return Tile(tile_id, arr, None, None, False, "benv2")
    raw = read_benv2_patch(vv[0].parent, b02[0].parent, patch_size=None, patch_id=tile_id)
    return Tile(tile_id, raw.sar, raw.optical, raw.meta.get("geo"), False, "benv2")


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
