"""Cutting a tile into model patches.

Windows start every ``stride`` pixels; when the tile size is not ``patch + k * stride`` one more window is
placed flush with the far edge, so every pixel is covered and no window reads outside the tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosaic_edge.data.tiff import GeoInfo
from mosaic_edge.errors import UserError


@dataclass(frozen=True)
class Window:
    """A patch's position in its tile, in pixels (row/col of the top-left pixel, height, width)."""

    row: int
    col: int
    height: int
    width: int

    def to_dict(self) -> dict[str, int]:
        return {"row": self.row, "col": self.col, "height": self.height, "width": self.width}

    def bounds(self, geo: GeoInfo | None) -> tuple[float, float, float, float] | None:
        """``(minx, miny, maxx, maxy)`` in the tile's CRS, or None without georeferencing."""
        return None if geo is None else geo.window_bounds(self.row, self.col, self.height, self.width)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def windows(height: int, width: int, patch: int, stride: int | None = None) -> list[Window]:
    """All patch windows of a ``height`` x ``width`` tile, row-major.

    Args:
        height, width: Tile size in pixels (each >= ``patch``).
        patch: Model patch size.
        stride: Step between windows (default ``patch``: no overlap); 1 <= stride <= patch.
    """
    stride = patch if stride is None else stride
    if not 1 <= stride <= patch:
        raise UserError(f"stride must be between 1 and the patch size {patch}, got {stride}")
    if height < patch or width < patch:
        raise UserError(f"tile {height}x{width} is smaller than the {patch}x{patch} patch")
    rows, cols = _starts(height, patch, stride), _starts(width, patch, stride)
    return [Window(r, c, patch, patch) for r in rows for c in cols]


def cut(array: np.ndarray, wins: list[Window]) -> np.ndarray:
    """Stack the windows of a [C, H, W] array into [len(wins), C, h, w] (a copy, contiguous)."""
    return np.stack([array[:, w.row:w.row + w.height, w.col:w.col + w.width] for w in wins])


def cut_into(out: np.ndarray, array: np.ndarray | None, wins: list[Window]) -> None:
    """Copy the windows of a [C, H, W] array into the rows of ``out`` [len(wins), C, h, w], casting to
    ``out``'s dtype on the way (one pass per window, no intermediate copy); ``array`` None writes zeros."""
    if array is None:
        out[...] = 0
        return
    for k, w in enumerate(wins):
        out[k] = array[:, w.row:w.row + w.height, w.col:w.col + w.width]


def invalid_fractions(mask: np.ndarray | None, wins: list[Window]) -> np.ndarray:
    """Fraction of True pixels of a bool [H, W] mask inside each window (``mask`` None: all False).

    One summed-area table for the whole tile, so a scene of many windows costs one pass over the mask.
    """
    if mask is None or not wins:
        return np.zeros(len(wins), np.float64)
    if len(wins) == 1:
        w = wins[0]
        return np.array([mask[w.row:w.row + w.height, w.col:w.col + w.width].mean()], np.float64)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    r0 = np.fromiter((w.row for w in wins), np.intp, len(wins))
    c0 = np.fromiter((w.col for w in wins), np.intp, len(wins))
    r1 = r0 + np.fromiter((w.height for w in wins), np.intp, len(wins))
    c1 = c0 + np.fromiter((w.width for w in wins), np.intp, len(wins))
    counts = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return counts / ((r1 - r0) * (c1 - c0))
