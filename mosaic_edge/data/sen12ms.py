"""SEN12MS (Schmitt et al. 2019) with the simplified 10-class IGBP multi-labels of Schmitt & Wu (2021).

Layout::

    <root>/ROIs<id>_<season>/s1_<scene>/ROIs<id>_<season>_s1_<scene>_p<patch>.tif
        2 bands VV, VH; float32 dB
    <root>/ROIs<id>_<season>/s2_<scene>/ROIs<id>_<season>_s2_<scene>_p<patch>.tif
        13 bands B01..B12 incl. B8A and B10; uint16; all at 10 m
    <root>/ROIs<id>_<season>/lc_<scene>/ROIs<id>_<season>_lc_<scene>_p<patch>.tif
        4 bands IGBP, LCCS_LC, LCCS_LU, LCCS_SH class codes

All rasters are 256 x 256. B10 (cirrus, absent from L2A) is dropped so the optical input has the 12
:data:`~mosaic_edge.contract.S2_BANDS`. Labels: the IGBP band is mapped to the simplified scheme of Schmitt &
Wu,
"Remote sensing image classification with the SEN12MS dataset" (2021) — IGBP 1-5 Forest, 6-7 Shrubland, 8-9
Savanna, 10 Grassland, 11 Wetlands, 12 and 14 Croplands, 13 Urban/Built-up, 15 Snow/Ice, 16 Barren, 17 Water —
and a class is a label when it covers at least ``label_threshold`` of the patch. Splits come from an explicit
``split_file`` (CSV ``key,split`` with key a patch id ``ROIs1158_spring_1_p30`` or a scene
``ROIs1158_spring_1``)
or else from a deterministic hash of the scene, so all patches of a scene share a split (no spatial leakage).
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import S2_BANDS, Contract
from mosaic_edge.data.base import RawPatch
from mosaic_edge.data.benv2 import normalise_split
from mosaic_edge.data.stats import band_stats
from mosaic_edge.data.tiff import read_tiff
from mosaic_edge.errors import DataError, UserError

SEN12MS_CLASSES: tuple[str, ...] = (
    "Forest",
    "Shrubland",
    "Savanna",
    "Grassland",
    "Wetlands",
    "Croplands",
    "Urban/Built-up",
    "Snow/Ice",
    "Barren",
    "Water",
)
# IGBP code (index) -> simplified class index (Schmitt & Wu 2021, table 2); -1: no class (0 = no data).
IGBP_TO_SIMPLE = np.array([-1, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9], dtype=np.int64)
SEN12MS_S2_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
PATCH_SIZE = 256
_NAME = re.compile(r"^(ROIs\d+_[a-z]+)_s1_(\d+)_p(\d+)\.tif$")


def igbp_labels(igbp: np.ndarray, threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot float32 [10], class fractions [10]) of an IGBP class map."""
    codes = np.asarray(igbp).astype(np.int64).ravel()
    valid = (codes >= 1) & (codes < len(IGBP_TO_SIMPLE))
    counts = np.bincount(IGBP_TO_SIMPLE[codes[valid]], minlength=len(SEN12MS_CLASSES))
    fractions = counts / max(codes.size, 1)
    return (fractions >= threshold).astype(np.float32), fractions


def scene_hash_split(scene: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic split of a scene key: SHA-256 -> uniform number in [0, 1) -> train/validation/test."""
    u = int(hashlib.sha256(scene.encode()).hexdigest()[:12], 16) / float(1 << 48)
    return "train" if u < fractions[0] else "validation" if u < fractions[0] + fractions[1] else "test"


def _read_split_file(path: Path) -> dict[str, str]:
    out = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0].strip() and row[0].strip().lower() not in ("key", "id"):
                out[row[0].strip()] = normalise_split(row[1].strip())
    return out


class SEN12MS:
    """One split of SEN12MS (a :class:`~mosaic_edge.data.base.PatchSource`).

    Args:
        root: Folder holding the ``ROIs*_<season>`` folders.
        split: ``train``, ``validation`` (``val``) or ``test``.
        label_threshold: Area fraction from which a class is a label.
        split_file: CSV ``key,split``; patches whose patch id or scene is not listed are skipped.
        patch_size: Expected raster size (256 in the archive).
    """

    classes: tuple[str, ...] = SEN12MS_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        label_threshold: float = 0.1,
        split_file: str | Path | None = None,
        patch_size: int = PATCH_SIZE,
    ):
        if not 0.0 < label_threshold <= 1.0:
            raise UserError(f"label_threshold must be in (0, 1], got {label_threshold}")
        self.root = Path(root)
        self.split = normalise_split(split)
        self.label_threshold = label_threshold
        self.split_file = Path(split_file) if split_file else None
        self.patch_size = patch_size
        table = _read_split_file(self.split_file) if self.split_file else None
        self._items: list[tuple[str, Path]] = []
        for s1 in sorted(self.root.glob("ROIs*/s1_*/*.tif")):
            m = _NAME.match(s1.name)
            if not m:
                continue
            roi, scene, patch = m.groups()
            patch_id, scene_key = f"{roi}_{scene}_p{patch}", f"{roi}_{scene}"
            split_of = (
                (table.get(patch_id) or table.get(scene_key))
                if table is not None
                else scene_hash_split(scene_key)
            )
            if split_of == self.split:
                self._items.append((patch_id, s1))
        if not self._items and not any(self.root.glob("ROIs*")):
            raise UserError(f"{self.root}: not a SEN12MS root (no ROIs* folders)")

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ids(self) -> list[str]:
        return [pid for pid, _ in self._items]

    def train_source(self) -> SEN12MS:
        """The train split of the same root and options (its statistics define the contract)."""
        return SEN12MS(self.root, "train", self.label_threshold, self.split_file, self.patch_size)

    def paths(self, index: int) -> tuple[Path, Path, Path]:
        """(S1, S2, LC) files of patch ``index``."""
        _, s1 = self._items[index]
        scene_dir = s1.parent.name.replace("s1_", "", 1)
        stem = s1.name.replace("_s1_", "_s2_", 1)
        s2 = s1.parent.parent / f"s2_{scene_dir}" / stem
        lc = s1.parent.parent / f"lc_{scene_dir}" / s1.name.replace("_s1_", "_lc_", 1)
        return s1, s2, lc

    def _read(self, path: Path, bands: int, what: str) -> tuple[np.ndarray, Any]:
        if not path.is_file():
            raise DataError(f"{path}: missing {what} file (partner modality absent)")
        arr, geo = read_tiff(path)
        if arr.ndim == 2:
            arr = arr[None]
        n = self.patch_size
        if arr.shape[0] != bands:
            raise DataError(f"{path}: {arr.shape[0]} bands, expected {bands} ({what})")
        if arr.shape[1:] != (n, n):
            raise DataError(f"{path}: size {arr.shape[2]}x{arr.shape[1]}, expected {n}x{n}")
        return arr, geo

    def read(self, index: int) -> RawPatch:
        patch_id, _ = self._items[index]
        s1_path, s2_path, lc_path = self.paths(index)
        s1, geo = self._read(s1_path, 2, "S1")
        if s1.dtype.kind != "f":
            raise DataError(f"{s1_path}: dtype {s1.dtype}, expected float dB")
        s2, _ = self._read(s2_path, len(SEN12MS_S2_BANDS), "S2")
        lc, _ = self._read(lc_path, 4, "land cover")
        labels, fractions = igbp_labels(lc[0], self.label_threshold)
        optical = {b: s2[SEN12MS_S2_BANDS.index(b)] for b in S2_BANDS}  # drops B10
        roi, season = patch_id.split("_")[:2]
        return RawPatch(
            id=patch_id,
            sar={"VV": s1[0].astype(np.float32), "VH": s1[1].astype(np.float32)},
            optical=optical,
            labels=labels,
            meta={
                "roi": roi,
                "season": season,
                "split": self.split,
                "geo": geo,
                "class_fractions": dict(zip(SEN12MS_CLASSES, fractions.tolist(), strict=False)),
            },
        )


def sen12ms_contract(train: SEN12MS, max_patches: int = 256) -> Contract:
    """SEN12MS contract: 10 simplified IGBP classes, 256 px, statistics of the first patches of ``train``."""
    if train.split != "train":
        raise UserError("SEN12MS statistics must come from the train split")
    n = min(max_patches, len(train))
    if n == 0:
        raise UserError(f"{train.root}: the SEN12MS train split is empty")
    stats = band_stats(train, range(n), train.patch_size)
    return Contract(
        classes=SEN12MS_CLASSES,
        thresholds=(0.5,) * len(SEN12MS_CLASSES),
        patch_size=train.patch_size,
        sar_mean=stats.sar_mean,
        sar_std=stats.sar_std,
        optical_mean=stats.optical_mean,
        optical_std=stats.optical_std,
        dataset="sen12ms",
        stats_source=f"SEN12MS train split of {train.root.name}, first {n} of {len(train)} patches "
        "(B10 dropped)",
    )


def write_sen12ms_fixture(root: str | Path, **kw: Any) -> Path:
    """Write a small SEN12MS tree in the real format (see :mod:`mosaic_edge.data.sen12ms_fixture`)."""
    from mosaic_edge.data.sen12ms_fixture import write_sen12ms_fixture as write

    return write(root, **kw)
