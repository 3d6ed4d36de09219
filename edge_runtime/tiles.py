"""Turning a tile read by :func:`mosaic_edge.tile_format.read_tile` into model inputs for a whole tile.

:func:`prepare_tile` brings a tile into the form its model takes (the contract's ``input_form``) and marks,
per pixel, whether its optical data is usable (absent, flagged ``cloudy``, non-finite or L2A no-data): patches
whose optical is mostly unusable are answered by the SAR head.

* ``"raw"`` (artefacts that standardise in the graph, :mod:`mosaic_edge.export.raw_inputs`): physical units as
  read -- S1 dB, S2 reflectance in its delivered dtype (uint16 stays uint16 until it is cut into the float32
  batch) -- with non-finite pixels replaced by the band mean, which the graph maps to 0 exactly as
  :mod:`mosaic_edge.data.preprocess` does on the host. Clean tiles (no NaN/inf) are not copied at all.
* ``"standardised"`` (older artefacts): the shared preprocessing of training, on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.data.preprocess import normalise_optical, normalise_sar, stack_bands
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.errors import ContractMismatchError, DataError
from mosaic_edge.tile_format import Tile, TileLimits


def check_crs(crs: str, tile_id: str) -> None:
    """Refuse a CRS that PROJ does not know (the GeoJSON could not place the tile); a no-op without pyproj."""
    from mosaic_edge.optional import available

    if available("pyproj"):
        from mosaic_edge.edge_runtime.geo_output import transformer

        try:
            transformer(crs)
        except DataError as exc:
            raise DataError(f"{tile_id}: {exc}") from exc


@dataclass
class PreparedTile:
    """Model inputs of a whole tile (in the contract's input form) plus per-pixel optical validity.

    Attributes:
        sar: [2, H, W], float (raw: dB as read, non-finite -> band mean; standardised: float32).
        optical: [12, H, W] (raw: reflectance in its delivered dtype; standardised: float32), or None when the
            tile has no optical data (the model gets zeros: no-data in raw form, the band mean standardised).
        optical_invalid: bool [H, W], or None when every pixel is usable; all True without usable optical.
        optical_usable: False when the tile has no optical data or it is flagged cloudy.
    """

    id: str
    sar: np.ndarray
    optical: np.ndarray | None
    optical_invalid: np.ndarray | None
    sar_invalid_fraction: float
    geo: GeoInfo | None
    kind: str
    input_form: str = "standardised"
    optical_usable: bool = True

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.sar.shape[1]), int(self.sar.shape[2])


def _fill_nonfinite(x: np.ndarray, mean: tuple[float, ...], nodata: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` with NaN/inf (and the ``nodata`` value) replaced by the band mean (a float32 copy only when there
    are any) and the per-pixel mask of pixels that had one (None when none did)."""
    marked = nodata is not None and np.isfinite(nodata) and bool((x == nodata).any())
    if not marked and (x.dtype.kind != "f" or np.isfinite(x).all()):
        return x, None
    bad: np.ndarray = ~np.isfinite(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    if marked:
        bad |= x == nodata
    out = np.where(bad, np.asarray(mean, np.float32)[:, None, None], x).astype(np.float32, copy=False)
    return out, np.asarray(bad.any(axis=0))


def _nodata(optical: np.ndarray) -> np.ndarray | None:
    """Pixels whose 12 bands are all 0 (L2A no-data), None when there are none."""
    if optical.dtype.kind == "u":
        if optical.min() > 0:  # no zero anywhere (the usual case): no pixel can be no-data
            return None
        mask = optical.max(axis=0) == 0
    else:
        if optical.all():
            return None
        mask = np.all(optical == 0, axis=0)
    return mask if mask.any() else None


def _raw_inputs(sar: np.ndarray, optical: np.ndarray | None, contract: Contract, tile: Tile
                ) -> tuple[np.ndarray, np.ndarray | None, float, np.ndarray | None]:
    sar, sar_bad = _fill_nonfinite(sar, contract.sar_mean, tile.sar_nodata)
    sar_fraction = 0.0 if sar_bad is None else float(sar_bad.mean())
    if optical is None:
        return sar, None, sar_fraction, None
    nodata = _nodata(optical)  # on the delivered values: a NaN band is not 0, as in the shared preprocessing
    optical, opt_bad = _fill_nonfinite(optical, contract.optical_mean, tile.optical_nodata)
    invalid = nodata if opt_bad is None else (opt_bad if nodata is None else opt_bad | nodata)
    return sar, optical, sar_fraction, invalid


def _as_nan(x: np.ndarray, nodata: float | None) -> np.ndarray:
    """``x`` with its ``nodata`` value as NaN (a float32 copy), or ``x`` itself when it has none."""
    if nodata is None or not np.isfinite(nodata) or not (x == nodata).any():
        return x
    return np.where(x == nodata, np.float32(np.nan), x.astype(np.float32))


def _standardised_inputs(sar: np.ndarray, optical: np.ndarray | None, contract: Contract, tile: Tile
                         ) -> tuple[np.ndarray, np.ndarray | None, float, np.ndarray | None]:
    s, sar_fraction = normalise_sar(_as_nan(sar, tile.sar_nodata), contract)
    if optical is None:
        return s, None, sar_fraction, None
    opt = _as_nan(np.asarray(optical), tile.optical_nodata)
    invalid = ~np.isfinite(opt).all(axis=0) | np.all(opt == 0, axis=0)
    o, _ = normalise_optical(opt, contract)
    return s, o, sar_fraction, invalid if invalid.any() else None


def prepare_tile(tile: Tile, contract: Contract, limits: TileLimits = TileLimits(), check_sar: bool = True
                 ) -> PreparedTile:
    """Bring a tile into the contract's input form; SAR-only and cloudy tiles mark all optical unusable.

    Args:
        check_sar: Apply the mostly-invalid-SAR rule (a scene's regions leave it to the whole scene).

    Raises:
        DataError: the tile is smaller than one patch, its SAR is mostly invalid (NaN/inf/nodata), or its optical
            data declares another Sentinel-2 processing level than the model's (L1C vs L2A).
    """
    if tile.optical is not None:
        try:
            contract.check_optical_product(tile.optical_product, tile.id)
        except ContractMismatchError as exc:
            raise DataError(str(exc)) from exc
    sar = stack_bands(tile.sar, contract.sar_bands, None, "sar") if isinstance(tile.sar, dict) else tile.sar
    h, w = int(sar.shape[-2]), int(sar.shape[-1])
    p = contract.patch_size
    if h < p or w < p:
        raise DataError(f"{tile.id}: tile of {h}x{w} pixels is smaller than the {p}x{p} model patch")
    optical = tile.optical
    if isinstance(optical, dict):
        optical = stack_bands(optical, contract.optical_bands, (h, w), "optical")
    if check_sar and tile.geo is not None and tile.geo.crs:
        check_crs(tile.geo.crs, tile.id)
    prep = _raw_inputs if contract.input_form == "raw" else _standardised_inputs
    sar_in, opt_in, sar_fraction, invalid = prep(sar, optical, contract, tile)
    if tile.optical_mask is not None:
        invalid = tile.optical_mask if invalid is None else invalid | tile.optical_mask
    if check_sar and sar_fraction > limits.max_invalid_fraction:
        raise DataError(f"{tile.id}: {sar_fraction:.0%} of S1 pixels are invalid (NaN/inf), "
                        f"limit {limits.max_invalid_fraction:.0%}")
    usable = optical is not None and not tile.cloudy
    if not usable:
        invalid = np.ones((h, w), bool)
    return PreparedTile(tile.id, sar_in, opt_in, invalid, sar_fraction, tile.geo, tile.kind, contract.input_form,
                        usable)
