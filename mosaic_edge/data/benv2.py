"""BigEarthNet v2.0 (reBEN) in its official Zenodo layout.

Layout (Clasen et al. 2024, arXiv 2407.03653; Zenodo record 10891137)::

    <root>/metadata.parquet                                              one row per S1/S2 pair
    <root>/metadata_for_patches_with_snow_cloud_or_shadow.parquet        optional, excluded by default
    <root>/BigEarthNet-S2/<S2 product>/<patch_id>/<patch_id>_<BAND>.tif  12 bands, uint16 L2A x 1e4
    <root>/BigEarthNet-S1/<S1 product>/<s1_name>/<s1_name>_<VV|VH>.tif   float32 dB, 120 x 120

with ``S2 product = "_".join(patch_id.split("_")[:-2])`` and ``S1 product =
"_".join(s1_name.split("_")[:-3])``;
the two modalities are paired through the ``s1_name`` column. Splits are the ``split`` column values
``train`` / ``validation`` / ``test`` (``val`` is accepted as an alias). Labels are multi-hot in
:data:`~mosaic_edge.contract.BENV2_CLASSES` order.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import BENV2_CLASSES, S1_BANDS, S2_BANDS, S2_GSD, Contract
from mosaic_edge.data.base import RawPatch
from mosaic_edge.data.tiff import read_tiff
from mosaic_edge.errors import DataError, UserError
from mosaic_edge.optional import require

METADATA = "metadata.parquet"
SNOW_CLOUD_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
S1_DIR, S2_DIR = "BigEarthNet-S1", "BigEarthNet-S2"
SPLITS = ("train", "validation", "test")
PATCH_SIZE = 120  # pixels on the 10 m grid
_CLASS_INDEX = {name: i for i, name in enumerate(BENV2_CLASSES)}


def normalise_split(split: str) -> str:
    """Map ``val`` to the official ``validation``; reject unknown split names."""
    split = {"val": "validation"}.get(split, split)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return split


def s2_product(patch_id: str) -> str:
    return "_".join(patch_id.split("_")[:-2])


def s1_product(s1_name: str) -> str:
    return "_".join(s1_name.split("_")[:-3])


def labels_to_multihot(names: list[str], where: str = "") -> np.ndarray:
    """Multi-hot float32 [19] in official class order; unknown names raise :class:`DataError`."""
    out = np.zeros(len(BENV2_CLASSES), np.float32)
    for name in names:
        if name not in _CLASS_INDEX:
            raise DataError(f"{where}: unknown BigEarthNet v2 class {name!r}")
        out[_CLASS_INDEX[name]] = 1.0
    return out


def band_file_name(names: Collection[str], folder: str, band: str, what: str, label: object) -> str:
    """Which of the file ``names`` of folder ``folder`` holds ``band``: ``<folder>_<band>.tif``, else the only
    ``*_<band>.tif`` / ``*_<band>.TIF`` (``label`` names the folder in the error)."""
    exact = f"{folder}_{band}.tif"
    if exact in names:
        return exact
    found = sorted(n for n in names if n.endswith(f"_{band}.tif")) + sorted(
        n for n in names if n.endswith(f"_{band}.TIF"))
    if len(found) != 1:
        state = "missing" if not found else f"ambiguous ({len(found)} files)"
        raise DataError(f"{label}: {what} band {band} {state}")
    return found[0]


def check_band(arr: np.ndarray, shape: tuple[int, int] | None, dtype_kind: str, label: object) -> None:
    """A band file's array is one 2-D band of ``shape`` (None: any) with a dtype of kind ``dtype_kind``."""
    if arr.ndim != 2:
        raise DataError(f"{label}: expected one band, got an array of shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise DataError(f"{label}: size {arr.shape[1]}x{arr.shape[0]}, expected {shape[1]}x{shape[0]}")
    if arr.dtype.kind not in dtype_kind:
        raise DataError(f"{label}: dtype {arr.dtype} is not a {'float' if dtype_kind == 'f' else 'numeric'} type")


def _band_file(folder: Path, band: str, what: str) -> Path:
    with os.scandir(folder) as entries:
        names = {e.name for e in entries if e.is_file() and not e.name.startswith(".")}  # as a glob sees them
    return folder / band_file_name(names, folder.name, band, what, folder)


def _read_band(path: Path, shape: tuple[int, int], dtype_kind: str) -> tuple[np.ndarray, Any]:
    arr, geo = read_tiff(path)
    check_band(arr, shape, dtype_kind, path)
    return arr, geo


def read_benv2_patch(
    s1_dir: str | Path, s2_dir: str | Path, patch_size: int | None = PATCH_SIZE, patch_id: str | None = None
) -> RawPatch:
    """Read one S1/S2 pair from two per-band folders (``*_VV.tif``, ``*_B02.tif``, ...).

    Args:
        s1_dir: Folder of the S1 bands (float32 dB).
        s2_dir: Folder of the 12 S2 bands at native resolution.
        patch_size: Expected size of the 10 m grid (120 for BigEarthNet); 20 m and 60 m bands must be
            ``patch_size * 10 / gsd``. None infers the grid from ``B02`` (runtime tiles of any size; both
            sides must be divisible by 6).
        patch_id: Identifier of the patch (defaults to the S2 folder name).

    Returns:
        A :class:`RawPatch` without labels; ``meta["geo"]`` holds the georeferencing of ``B02`` (or None).

    Raises:
        DataError: naming the folder or file when a modality, a band, or the right size/dtype is missing.
    """
    s1_dir, s2_dir = Path(s1_dir), Path(s2_dir)
    for folder, what in ((s1_dir, "S1"), (s2_dir, "S2")):
        if not folder.is_dir():
            raise DataError(f"{folder}: missing {what} folder (partner modality absent)")
    if patch_size is None:
        ref, _ = read_tiff(_band_file(s2_dir, "B02", "S2"))
        if ref.ndim != 2 or ref.shape[0] % 6 or ref.shape[1] % 6:
            raise DataError(f"{s2_dir}: B02 has shape {ref.shape}; expected a 2-D grid divisible by 6 (60 m)")
        grid = (int(ref.shape[0]), int(ref.shape[1]))
    else:
        grid = (patch_size, patch_size)
    optical, geo = {}, None
    for band in S2_BANDS:
        f = S2_GSD[band] // 10
        arr, band_geo = _read_band(_band_file(s2_dir, band, "S2"), (grid[0] // f, grid[1] // f), "uif")
        optical[band] = arr
        if band == "B02":
            geo = band_geo
    sar = {}
    for band in S1_BANDS:
        arr, _ = _read_band(_band_file(s1_dir, band, "S1"), grid, "f")
        sar[band] = arr.astype(np.float32, copy=False)
    return RawPatch(id=patch_id or s2_dir.name, sar=sar, optical=optical, labels=None, meta={"geo": geo})


# The name the team spec uses for the runtime entry point.
read_benv2_patch_dirs = read_benv2_patch


class BigEarthNetV2:
    """One split of BigEarthNet v2.0 in the official layout (a :class:`~mosaic_edge.data.base.PatchSource`).

    Args:
        root: Folder holding ``metadata.parquet``, ``BigEarthNet-S1/`` and ``BigEarthNet-S2/``.
        split: ``train``, ``validation`` (or ``val``) or ``test``.
        include_snow_cloud: Also read the pairs of ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``.
    """

    classes: tuple[str, ...] = BENV2_CLASSES

    def __init__(self, root: str | Path, split: str = "train", include_snow_cloud: bool = False):
        pq = require("pyarrow.parquet", extra="data")
        self.root = Path(root)
        self.split = normalise_split(split)
        meta_path = self.root / METADATA
        if not meta_path.is_file():
            raise UserError(f"{self.root}: not a BigEarthNet v2 root (no {METADATA})")
        tables = [meta_path]
        if include_snow_cloud:
            extra = self.root / SNOW_CLOUD_METADATA
            if not extra.is_file():
                raise UserError(f"{extra}: include_snow_cloud=True but the file does not exist")
            tables.append(extra)
        self._rows: list[dict[str, Any]] = []
        for path in tables:
            try:
                rows = pq.read_table(path).to_pylist()
            except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError on bad files
                raise DataError(f"{path}: unreadable parquet ({exc})") from exc
            for row in rows:
                missing = {"patch_id", "labels", "split", "s1_name"} - set(row)
                if missing:
                    raise DataError(f"{path}: missing columns {sorted(missing)}")
                if row["split"] == self.split:
                    row["_source"] = path.name
                    self._rows.append(row)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def ids(self) -> list[str]:
        return [r["patch_id"] for r in self._rows]

    def folders(self, index: int) -> tuple[Path, Path]:
        """(S1 folder, S2 folder) of pair ``index``."""
        row = self._rows[index]
        s1 = self.root / S1_DIR / s1_product(row["s1_name"]) / row["s1_name"]
        s2 = self.root / S2_DIR / s2_product(row["patch_id"]) / row["patch_id"]
        return s1, s2

    def read(self, index: int) -> RawPatch:
        row = self._rows[index]
        s1, s2 = self.folders(index)
        patch = read_benv2_patch(s1, s2, PATCH_SIZE, patch_id=row["patch_id"])
        patch.labels = labels_to_multihot(list(row["labels"]), f"{row['_source']} row {row['patch_id']}")
        patch.meta.update(
            {
                "split": row["split"],
                "country": row.get("country"),
                "s1_name": row["s1_name"],
                "contains_seasonal_snow": bool(row.get("contains_seasonal_snow", False)),
                "contains_cloud_or_shadow": bool(row.get("contains_cloud_or_shadow", False)),
            }
        )
        return patch


def benv2_contract(**changes: Any) -> Contract:
    """The BigEarthNet v2 contract: 19 classes, 120 px, the published train-split statistics (defaults)."""
    return Contract(dataset="benv2", **changes)
