"""SEN12MS (Schmitt et al. 2019) with the simplified 10-class IGBP multi-labels of Schmitt & Wu (2021).

Layout::

    <root>/ROIs<id>_<season>/s1_<scene>/ROIs<id>_<season>_s1_<scene>_p<patch>.tif
        2 bands VV, VH; float32 dB
    <root>/ROIs<id>_<season>/s2_<scene>/ROIs<id>_<season>_s2_<scene>_p<patch>.tif
        13 bands B01..B12 incl. B8A and B10; uint16 Level-1C top-of-atmosphere reflectance x 1e4; all at 10 m
    <root>/ROIs<id>_<season>/lc_<scene>/ROIs<id>_<season>_lc_<scene>_p<patch>.tif
        4 bands IGBP, LCCS_LC, LCCS_LU, LCCS_SH class codes

All rasters are 256 x 256. B10 (cirrus) is dropped so the optical input has the 12
:data:`~mosaic_edge.contract.S2_BANDS`; the S2 data stay Level-1C, which the contract records
(``optical_product="L1C"``), so a SEN12MS model is never mixed with BigEarthNet's Level-2A data. Labels: the IGBP
band is mapped to the simplified scheme of Schmitt & Wu, "Remote sensing image classification with the SEN12MS
dataset" (2021) -- IGBP 1-5 Forest, 6-7 Shrubland, 8-9 Savanna, 10 Grassland, 11 Wetlands, 12 and 14 Croplands,
13 Urban/Built-up, 15 Snow/Ice, 16 Barren, 17 Water -- and a class is a label when it covers at least
``label_threshold`` of the patch.

Splits: without split files, a deterministic hash of the scene (80 / 10 / 10 %), so all patches of a scene share a
split (no spatial leakage). With split files (:func:`read_split_files`): the SEN12MS toolbox's lists
(``splits/SEN12MS_holdOutScenes.txt``: the hold-out scenes, i.e. the official test set;
``splits/ValidationScenes.txt``; ``test_list.txt`` / ``val_list.txt`` of patch files), each given as
``SPLIT=PATH``, or CSV files ``key,split``. Normalisation statistics come from a seeded random sample of the train
split spread over all its scenes and seasons (:func:`stats_sample`).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
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


# A key in a split list: a scene folder (``ROIs1158_spring/s1_63``), a patch file of any modality
# (``ROIs1158_spring_s2_124_p100.tif``), a patch id (``ROIs1158_spring_124_p100``) or a scene key
# (``ROIs1158_spring_124``).
_SCENE_DIR = re.compile(r"(ROIs\d+_[a-z]+)/(?:s1|s2|lc)_(\d+)/?$")
_PATCH_FILE = re.compile(r"^(ROIs\d+_[a-z]+)_(?:s1|s2|lc)_(\d+)_p(\d+)(?:\.tif)?$")
_PATCH_ID = re.compile(r"^(ROIs\d+_[a-z]+)_(\d+)_p(\d+)$")
_SCENE_KEY = re.compile(r"^(ROIs\d+_[a-z]+)_(\d+)$")
# Share of the scenes not named by a split list that go to validation when no validation list is given.
VAL_SCENE_FRACTION = 0.1


def split_key(text: str, where: str = "") -> str:
    """Normalise one split-list entry to a patch id (``ROIs1158_spring_124_p100``) or a scene key
    (``ROIs1158_spring_124``); :class:`DataError` when it is neither."""
    t = text.strip().replace("\\", "/")
    m = _SCENE_DIR.search(t)
    if m:
        return f"{m.group(1)}_{m.group(2)}"
    name = t.rsplit("/", 1)[-1]
    m = _PATCH_FILE.match(name) or _PATCH_ID.match(name)
    if m:
        return f"{m.group(1)}_{m.group(2)}_p{m.group(3)}"
    if _SCENE_KEY.match(name):
        return name
    raise DataError(f"{where}: {text.strip()!r} is not a SEN12MS scene, patch file or patch id")


@dataclass(frozen=True)
class SplitTable:
    """Split assignment read from split files.

    Attributes:
        keys: Patch id or scene key -> split.
        exhaustive: True when a CSV was given: patches it does not name are left out. Otherwise (lists only)
            unnamed scenes are train, and also validation (:data:`VAL_SCENE_FRACTION` of them, by scene hash)
            when no list names validation scenes.
    """

    keys: dict[str, str]
    exhaustive: bool

    @cached_property
    def names_validation(self) -> bool:
        return "validation" in self.keys.values()

    def split_of(self, patch_id: str, scene_key: str) -> str | None:
        found = self.keys.get(patch_id) or self.keys.get(scene_key)
        if found or self.exhaustive:
            return found
        if self.names_validation:  # asked per patch: the scan of every key is done once
            return "train"
        frac = (1.0 - VAL_SCENE_FRACTION, VAL_SCENE_FRACTION, 0.0)
        return scene_hash_split(scene_key, frac)


def split_file_entry(entry: str) -> tuple[str | None, Path]:
    """``("train" | "validation" | "val" | "test", PATH)`` of a ``SPLIT=PATH`` entry, ``(None, PATH)`` of a CSV."""
    head, sep, tail = entry.partition("=")
    split = head.strip().lower()
    if sep and split in ("train", "validation", "val", "test"):
        return split, Path(tail)
    return None, Path(entry)


def read_split_files(entries: str | Path | Sequence[str | Path]) -> SplitTable:
    """Read split files: ``SPLIT=PATH`` (a list, one key per line, as in the SEN12MS toolbox) or ``PATH`` (a
    CSV ``key,split``). Keys: see :func:`split_key`. Pickled lists (``*.pkl``) are refused (never unpickle
    downloaded files): use the toolbox's ``.txt`` lists."""
    items = [entries] if isinstance(entries, (str, Path)) else list(entries)
    keys: dict[str, str] = {}
    exhaustive = False
    for item in items:
        head, path = split_file_entry(str(item))
        if path.suffix.lower() == ".pkl":
            raise UserError(f"{path}: pickled split lists are not read; use the toolbox's .txt lists")
        if not path.is_file():
            raise UserError(f"split file {path} does not exist")
        if head is not None:  # a list of one split
            split = normalise_split(head)
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    keys[split_key(line, f"{path}:{n}")] = split
            continue
        exhaustive = True
        with open(path, newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if len(row) >= 2 and row[0].strip() and row[0].strip().lower() not in ("key", "id"):
                    keys[split_key(row[0], f"{path}:{n}")] = normalise_split(row[1].strip())
    return SplitTable(keys, exhaustive)


class SEN12MS:
    """One split of SEN12MS (a :class:`~mosaic_edge.data.base.PatchSource`).

    Args:
        root: Folder holding the ``ROIs*_<season>`` folders.
        split: ``train``, ``validation`` (``val``) or ``test``.
        label_threshold: Area fraction from which a class is a label.
        split_file: Split files (:func:`read_split_files`); None: the scene hash.
        patch_size: Expected raster size (256 in the archive).
    """

    classes: tuple[str, ...] = SEN12MS_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        label_threshold: float = 0.1,
        split_file: str | Path | Sequence[str | Path] | None = None,
        patch_size: int = PATCH_SIZE,
    ):
        if not 0.0 < label_threshold <= 1.0:
            raise UserError(f"label_threshold must be in (0, 1], got {label_threshold}")
        self.root = Path(root)
        self.split = normalise_split(split)
        self.label_threshold = label_threshold
        self.split_file = split_file or None
        self.patch_size = patch_size
        table = read_split_files(split_file) if split_file else None
        self._items: list[tuple[str, Path]] = []
        for s1 in sorted(self.root.glob("ROIs*/s1_*/*.tif")):
            m = _NAME.match(s1.name)
            if not m:
                continue
            roi, scene, patch = m.groups()
            patch_id, scene_key = f"{roi}_{scene}_p{patch}", f"{roi}_{scene}"
            split_of = table.split_of(patch_id, scene_key) if table is not None else scene_hash_split(scene_key)
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


def scene_of(patch_id: str) -> str:
    """Scene key ``ROIs1158_spring_124`` of a patch id ``ROIs1158_spring_124_p100``."""
    return patch_id.rsplit("_p", 1)[0]


def stats_sample(ids: Sequence[str], size: int, seed: int = 0) -> np.ndarray:
    """A seeded random sample of ``size`` positions of ``ids`` spread over every scene (and so every season).

    Scenes are visited in a seeded random order, taking one random patch of each per round, until ``size``
    patches are drawn: with at least as many draws as scenes every scene contributes, and no scene contributes
    more than one patch above any other. Returns sorted positions.
    """
    rng = np.random.default_rng(seed)
    by_scene: dict[str, list[int]] = {}
    for i, pid in enumerate(ids):
        by_scene.setdefault(scene_of(pid), []).append(i)
    queues = [list(rng.permutation(v)) for _, v in sorted(by_scene.items())]
    order = rng.permutation(len(queues))
    picked: list[int] = []
    while len(picked) < min(size, len(ids)):
        for q in order:
            if queues[q] and len(picked) < size:
                picked.append(int(queues[q].pop()))
    return np.sort(np.asarray(picked, dtype=np.int64))


def sen12ms_contract(train: SEN12MS, max_patches: int = 256, seed: int = 0) -> Contract:
    """SEN12MS contract: 10 simplified IGBP classes, 256 px, Level-1C, statistics of a seeded sample of ``train``.

    The sample (:func:`stats_sample`) covers every scene and season of the train split, so the statistics do not
    describe the first scene of the first season only.
    """
    if train.split != "train":
        raise UserError("SEN12MS statistics must come from the train split")
    if len(train) == 0:
        raise UserError(f"{train.root}: the SEN12MS train split is empty")
    ids = train.ids
    sample = stats_sample(ids, max_patches, seed)
    stats = band_stats(train, sample, train.patch_size)
    scenes = {scene_of(ids[i]) for i in sample}
    seasons = {ids[i].split("_")[1] for i in sample}
    return Contract(
        classes=SEN12MS_CLASSES,
        thresholds=(0.5,) * len(SEN12MS_CLASSES),
        patch_size=train.patch_size,
        sar_mean=stats.sar_mean,
        sar_std=stats.sar_std,
        optical_mean=stats.optical_mean,
        optical_std=stats.optical_std,
        dataset="sen12ms",
        optical_product="L1C",
        stats_source=f"SEN12MS train split of {train.root.name}: {len(sample)} of {len(train)} patches drawn "
        f"from {len(scenes)} scenes in {len(seasons)} seasons (seed {seed}; B10 dropped; Level-1C)",
    )
