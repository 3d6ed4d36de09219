"""Write patches in the official BigEarthNet v2.0 layout (used by ``mosaic-edge synth`` and test fixtures).

The written tree reads back with :class:`~mosaic_edge.data.benv2.BigEarthNetV2` unchanged; see that module for
the layout. Pixels are stored exactly (S2 uint16, S1 float32), so a round trip is bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import BENV2_CLASSES, S1_BANDS, S2_BANDS
from mosaic_edge.data.base import PatchSource, RawPatch
from mosaic_edge.data.benv2 import METADATA, S1_DIR, S2_DIR, normalise_split, s1_product, s2_product
from mosaic_edge.data.tiff import write_tiff
from mosaic_edge.optional import require

# Synthetic acquisitions: one S2 product (tile) and one S1 product per split, so splits never share a folder.
_TILES = {"train": "33SYA", "validation": "33SYB", "test": "33SYC"}
_S2_PRODUCT = "S2A_MSIL2A_20240615T101031_N9999_R022_T{tile}"
_S1_PRODUCT = "S1A_IW_GRDH_1SDV_20240614T165043"


def synthetic_names(split: str, index: int) -> tuple[str, str]:
    """(patch_id, s1_name) of patch ``index`` of ``split`` following the official naming scheme."""
    tile = _TILES[normalise_split(split)]
    row, col = divmod(index, 100)
    patch_id = f"{_S2_PRODUCT.format(tile=tile)}_{row}_{col}"
    s1_name = f"{_S1_PRODUCT}_{tile}_{row}_{col}"
    return patch_id, s1_name


def write_benv2_pair(
    root: str | Path, patch: RawPatch, patch_id: str, s1_name: str, compress: bool = True
) -> None:
    """Write the 12 S2 and 2 S1 band files of one pair under ``root``."""
    root = Path(root)
    s2_dir = root / S2_DIR / s2_product(patch_id) / patch_id
    s1_dir = root / S1_DIR / s1_product(s1_name) / s1_name
    geo = patch.meta.get("geo")
    for band in S2_BANDS:
        write_tiff(
            s2_dir / f"{patch_id}_{band}.tif", patch.optical[band], _scaled(geo, patch, band), compress
        )
    for band in S1_BANDS:
        write_tiff(s1_dir / f"{s1_name}_{band}.tif", patch.sar[band].astype(np.float32), geo, compress)


def _scaled(geo: Any, patch: RawPatch, band: str) -> Any:
    """Georeferencing of a coarser band: same origin, pixel size scaled by the size ratio to the 10 m grid."""
    if geo is None:
        return None
    ratio = patch.sar["VV"].shape[0] / patch.optical[band].shape[0]
    a, b, c, d, e, f = geo.transform
    return type(geo)((a * ratio, b * ratio, c, d * ratio, e * ratio, f), geo.crs)


def write_metadata(root: str | Path, rows: list[dict[str, Any]], name: str = METADATA) -> Path:
    """Write ``rows`` (official columns) as a parquet file under ``root``."""
    pa = require("pyarrow", extra="data")
    pq = require("pyarrow.parquet", extra="data")
    path = Path(root) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_source_layout(
    sources: Iterable[PatchSource], root: str | Path, compress: bool = True, country: str = "Synthetia"
) -> Path:
    """Write every patch of the given split sources (BENV2 classes) in the official layout; return root."""
    root = Path(root)
    rows = []
    for source in sources:
        if tuple(source.classes) != BENV2_CLASSES:
            raise ValueError("only sources with the 19 BigEarthNet v2 classes can be written in its layout")
        for i in range(len(source)):
            patch = source.read(i)
            patch_id, s1_name = synthetic_names(source.split, i)
            write_benv2_pair(root, patch, patch_id, s1_name, compress)
            labels = patch.labels if patch.labels is not None else np.zeros(len(BENV2_CLASSES))
            rows.append(
                {
                    "patch_id": patch_id,
                    "labels": [BENV2_CLASSES[c] for c in np.flatnonzero(labels > 0.5)],
                    "split": source.split,
                    "country": country,
                    "s1_name": s1_name,
                    "s2v1_name": f"S2A_MSIL2A_20240615T101031_{patch_id.split('_', 6)[-1]}",
                    "contains_seasonal_snow": bool(patch.meta.get("contains_seasonal_snow", False)),
                    "contains_cloud_or_shadow": bool(patch.meta.get("contains_cloud_or_shadow", False)),
                }
            )
    write_metadata(root, rows)
    return root
