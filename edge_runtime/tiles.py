"""Turning a tile read by :func:`mosaic_edge.tile_format.read_tile` into model-ready arrays.

:func:`prepare_tile` normalises a tile with the preprocessing shared with training and marks, per pixel,
whether its optical data is usable (absent, flagged ``cloudy``, non-finite or L2A no-data): patches whose
optical is mostly unusable are answered by the SAR head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.data.preprocess import preprocess, stack_bands
from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.errors import DataError
from mosaic_edge.tile_format import Tile, TileLimits


@dataclass
class PreparedTile:
    """Normalised model inputs of a whole tile plus per-pixel optical validity."""

    id: str
    sar: np.ndarray  # float32 [2, H, W]
    optical: np.ndarray  # float32 [12, H, W]; zeros (band means) when absent
    optical_invalid: np.ndarray  # bool [H, W]; all True when there is no usable optical data
    sar_invalid_fraction: float
    geo: GeoInfo | None
    kind: str

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.sar.shape[1]), int(self.sar.shape[2])


def prepare_tile(tile: Tile, contract: Contract, limits: TileLimits = TileLimits()) -> PreparedTile:
    """Normalise a tile with the shared preprocessing; SAR-only tiles get band-mean (zero) optical input.

    Raises:
        DataError: the tile is smaller than one patch or its SAR is mostly invalid (NaN/inf, all no-data).
    """
    sar = stack_bands(tile.sar, contract.sar_bands, None, "sar") if isinstance(tile.sar, dict) else tile.sar
    h, w = int(sar.shape[-2]), int(sar.shape[-1])
    p = contract.patch_size
    if h < p or w < p:
        raise DataError(f"{tile.id}: tile of {h}x{w} pixels is smaller than the {p}x{p} model patch")
    if tile.optical is None:
        optical = np.zeros((len(contract.optical_bands), h, w), np.float32)
    elif isinstance(tile.optical, dict):
        optical = stack_bands(tile.optical, contract.optical_bands, (h, w), "optical")
    else:
        optical = tile.optical
    pre = preprocess(sar, optical, contract)
    if pre.sar_invalid_fraction > limits.max_invalid_fraction:
        raise DataError(f"{tile.id}: {pre.sar_invalid_fraction:.0%} of S1 pixels are invalid (NaN/inf), "
                        f"limit {limits.max_invalid_fraction:.0%}")
    if tile.optical is None or tile.cloudy:
        invalid = np.ones((h, w), bool)
    else:
        opt = np.asarray(optical)
        invalid = ~np.isfinite(opt).all(axis=0) | np.all(opt == 0, axis=0)
    return PreparedTile(tile.id, pre.sar, pre.optical, invalid, pre.sar_invalid_fraction, tile.geo, tile.kind)
