"""BigEarthNet per-band tile folders, decoded from files already in memory.

A tile folder holding one S1 patch (``*_VV.tif``, ``*_VH.tif``) and one S2 patch (``*_B01.tif`` ...
``*_B12.tif`` at native resolution), flat or in one S1 and one S2 subfolder. Bands are found, sized and typed
exactly as the training reader :func:`mosaic_edge.data.benv2.read_benv2_patch` does (with ``patch_size=None``:
the grid is B02's), but from the bytes :func:`mosaic_edge.tile_format.read_files` read once; a test holds the
two to the same arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mosaic_edge.contract import OPTICAL_PRODUCTS, S1_BANDS, S2_BANDS, S2_GSD
from mosaic_edge.data.benv2 import band_file_name, check_band
from mosaic_edge.data.tiff import decode_tiff
from mosaic_edge.errors import DataError

if TYPE_CHECKING:
    from mosaic_edge.tile_format import Tile, TileFiles, TileLimits


def _split(rel: str) -> tuple[str, str]:
    """``(folder, file name)`` of a path relative to the tile (folder "" for the tile folder itself)."""
    folder, _, name = rel.rpartition("/")
    return folder, name


def _stem(name: str) -> str:
    return name.rpartition(".")[0] if "." in name else name


class _Folder:
    """The files of one sub-folder of a tile (or of the tile folder itself, for a flat tile)."""

    def __init__(self, files: TileFiles, folder: str):
        self.label = files.path / folder if folder else files.path
        self.name = self.label.name
        self.files = {name: (rel, d) for rel, d in files.files for f, name in [_split(rel)] if f == folder}

    def read(self, band: str, what: str, shape: tuple[int, int] | None, kinds: str,
             max_pixels: int) -> tuple[np.ndarray, Any]:
        """The band's array, its file chosen and checked as the training reader does."""
        rel, data = self.files[band_file_name(self.files, self.name, band, what, self.label)]
        label = self.label / _split(rel)[1]
        arr, geo = decode_tiff(data, str(label), max_pixels)
        check_band(arr, shape, kinds, label)
        return arr, geo


def decode_band_tile(files: TileFiles, tile_id: str, limits: TileLimits, allow_sar_only: bool) -> Tile:
    """The :class:`~mosaic_edge.tile_format.Tile` of a per-band folder (``sar``/``optical`` band dicts).

    Raises:
        DataError: no band files, several patches, a missing/ambiguous/mis-sized band;
            :class:`~mosaic_edge.tile_format.MissingPartnerError` when one modality is absent.
    """
    from mosaic_edge.tile_format import MissingPartnerError, Tile, check_arrays

    names = [n for n, _ in files.files]
    vv = [n for n in names if _stem(_split(n)[1]).upper().endswith("_VV")]
    b02 = [n for n in names if _stem(_split(n)[1]).upper().endswith("_B02")]
    if not vv and not b02:
        raise DataError(f"{tile_id}: no tile files (.npz, s1.tif+s2.tif, or per-band *_VV.tif/*_B02.tif)")
    if len(vv) > 1 or len(b02) > 1:
        raise DataError(f"{tile_id}: more than one S1 or S2 patch in the folder")
    if not vv:
        raise MissingPartnerError(f"{tile_id}: S2 band files without the S1 partner (*_VV.tif, *_VH.tif)")
    max_pixels = limits.max_pixels
    if not b02:
        if not allow_sar_only:
            raise MissingPartnerError(f"{tile_id}: S1 band files without the S2 partner (*_B02.tif ...)")
        data = dict(files.files)
        sar = {}
        for band in S1_BANDS:
            match = [n for n in names if _stem(_split(n)[1]).upper().endswith(f"_{band}")]
            if len(match) != 1:
                raise DataError(f"{tile_id}: S1 band {band} missing or ambiguous")
            sar[band], _ = decode_tiff(data[match[0]], f"{tile_id}/{match[0]}", max_pixels)
        if sar["VV"].shape != sar["VH"].shape:
            raise DataError(f"{tile_id}: S1 bands VV and VH differ in size")
        arr = np.stack([sar["VV"], sar["VH"]])
        check_arrays(arr, None, tile_id, limits)
        return Tile(tile_id, arr, None, None, False, "benv2")
    s1, s2 = _Folder(files, _split(vv[0])[0]), _Folder(files, _split(b02[0])[0])
    ref, geo = s2.read("B02", "S2", None, "uif", max_pixels)
    if geo is not None:
        geo.check(f"{s2.label.name}/B02")
    if ref.shape[0] % 6 or ref.shape[1] % 6:
        raise DataError(f"{s2.label}: B02 has shape {ref.shape}; expected a 2-D grid divisible by 6 (60 m)")
    grid = (int(ref.shape[0]), int(ref.shape[1]))
    optical = {}
    for band in S2_BANDS:
        f = S2_GSD[band] // 10
        optical[band] = ref if band == "B02" else s2.read(band, "S2", (grid[0] // f, grid[1] // f), "uif",
                                                         max_pixels)[0]
    sar = {band: s1.read(band, "S1", grid, "f", max_pixels)[0].astype(np.float32, copy=False)
           for band in S1_BANDS}
    return Tile(tile_id, sar, optical, geo, False, "benv2", optical_product=product_level(b02[0]))


def product_level(name: str) -> str | None:
    """Sentinel-2 processing level named in a product / patch name (``S2A_MSIL2A_...`` -> ``"L2A"``), else None."""
    upper = name.upper()
    found = [level for level in OPTICAL_PRODUCTS if f"MSI{level}" in upper]
    return found[0] if len(found) == 1 else None
