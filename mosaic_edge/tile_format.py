"""The ``.npz`` tile format of the spool: what a ground station writes and the runtime reads.

One tile is one ``<id>.npz`` holding (README.md, "Spool convention"):

- ``sar``: float [2, H, W], Sentinel-1 backscatter in dB, bands in :data:`~mosaic_edge.contract.S1_BANDS` order;
- ``optical`` (optional): [12, H, W] Sentinel-2 L2A reflectance x 1e4 on the same 10 m grid, bands in
  :data:`~mosaic_edge.contract.S2_BANDS` order (uint16 as delivered; any real dtype is accepted);
- ``cloudy`` (optional): bool scalar, the optical data is not usable (the SAR head answers);
- ``transform`` (optional): 6 floats, the affine pixel -> map transform ``a b c d e f`` (rasterio's order);
- ``crs`` (optional): ``"EPSG:<code>"``.

:func:`write_tile` is the one writer (tests, benchmarks, the profiler's synthetic tiles, tools that turn
products into tiles); the reader is :func:`mosaic_edge.edge_runtime.tiles.read_tile`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NPZ_KEYS = frozenset({"sar", "optical", "cloudy", "transform", "crs"})


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
