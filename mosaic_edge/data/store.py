"""The packed training store: a dataset converted once into memory-mapped arrays (written by ``mosaic-edge pack``).

Reading a BigEarthNet v2 patch from its 14 per-band GeoTIFFs costs milliseconds; a training epoch over half a
million of them is CPU-bound long before a GPU is. The store keeps every split as a few ``.npy`` arrays that
loaders gather from by index (one copy out of the page cache, no decoding)::

    <store>/store.json             provenance; written last, so its presence means "complete"
    <store>/pack.json              the packing plan (source, splits, chunking): what a resumed pack must match
    <store>/report.json            patches that could not be read and were skipped
    <store>/<split>/sar.npy        float32 [N, 2, P, P]   S1 backscatter in dB (VV, VH), NaN kept
    <store>/<split>/optical.npy    uint16 [N, 12, P, P]   S2 reflectance x 1e4 on the 10 m grid (see below)
    <store>/<split>/labels.npy     uint8 [N, C]           multi-hot in the contract's class order
    <store>/<split>/ids.txt        one patch id per line, N lines, in the reader's order
    <store>/<split>/rows.npy       int64 [n]              the packed rows (n <= N: skipped patches left out)

Values stay in raw physical units, so the normalisation is still the one shared preprocessing
(:mod:`mosaic_edge.data.preprocess`) and its statistics can change without repacking. The only transformation
is done once at pack time: the 20 m and 60 m S2 bands are resampled to the 10 m grid with
:func:`~mosaic_edge.data.preprocess.resize_bilinear` (the preprocessing's own resampling) and rounded to the
nearest integer, so a stored value is within 0.5 reflectance units (x 1e4) of what the preprocessing computes
from the raw files. ``store.json`` records the source (kind, root, reader options), the reader (class and
mosaic-edge version), the grid, the per-split counts and the contract -- classes, patch size, product level and
the normalisation statistics of the source (BigEarthNet's published ones for a BigEarthNet store, SEN12MS's own
for a SEN12MS store).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import S1_BANDS, S2_BANDS, Contract
from mosaic_edge.data.base import RawPatch
from mosaic_edge.errors import DataError, UserError

FORMAT = "mosaic-edge-store"
FORMAT_VERSION = 1
STORE_JSON, PLAN_JSON, REPORT_JSON = "store.json", "pack.json", "report.json"
ARRAYS = ("sar", "optical", "labels")
SAR_DTYPE, OPTICAL_DTYPE, LABEL_DTYPE = np.dtype("float32"), np.dtype("uint16"), np.dtype("uint8")
_SPLIT_ALIASES = {"val": "validation"}


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a store folder, finished or not (holds ``store.json`` or ``pack.json``)."""
    p = Path(path)
    return (p / STORE_JSON).is_file() or (p / PLAN_JSON).is_file()


def array_shapes(n: int, patch_size: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Shape of every per-split array for ``n`` patches."""
    p = patch_size
    return {"sar": (n, len(S1_BANDS), p, p), "optical": (n, len(S2_BANDS), p, p), "labels": (n, num_classes)}


def bytes_per_patch(patch_size: int, num_classes: int) -> int:
    """Disk bytes one patch takes in the store."""
    p2 = patch_size * patch_size
    return len(S1_BANDS) * p2 * SAR_DTYPE.itemsize + len(S2_BANDS) * p2 * OPTICAL_DTYPE.itemsize + num_classes


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a JSON object")
    return data


class PackedStore:
    """A finished store folder.

    Args:
        root: The folder ``mosaic-edge pack --out`` wrote.

    Raises:
        UserError: not a store, an unfinished one (rerun ``mosaic-edge pack`` to finish it), or a newer format.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / STORE_JSON).is_file():
            if (self.root / PLAN_JSON).is_file():
                raise UserError(f"{self.root}: an unfinished pack; rerun `mosaic-edge pack` with the same "
                                "arguments to finish it")
            raise UserError(f"{self.root}: not a packed store (no {STORE_JSON})")
        self.info = read_json(self.root / STORE_JSON)
        if self.info.get("format") != FORMAT:
            raise UserError(f"{self.root / STORE_JSON}: not a {FORMAT} description")
        if int(self.info.get("version", 0)) > FORMAT_VERSION:
            raise UserError(f"{self.root}: store format {self.info['version']} is newer than {FORMAT_VERSION}")

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.info["splits"])

    def contract(self) -> Contract:
        """Classes, patch size, product level and normalisation statistics of the packed data."""
        return Contract.from_dict(self.info["contract"])

    def open(self, split: str) -> StoreSource:
        """One split as a :class:`~mosaic_edge.data.base.PatchSource`."""
        split = _SPLIT_ALIASES.get(split, split)
        if split not in self.info["splits"]:
            raise UserError(f"{self.root}: no split {split!r} in the store (it has {list(self.splits)})")
        return StoreSource(self.root, split, self.contract())


class StoreSource:
    """One split of a packed store: a :class:`~mosaic_edge.data.base.PatchSource` plus vectorised gathers.

    The arrays are memory-mapped read-only on first use and never pickled (a loader worker reopens them), so
    handing the source to ``DataLoader`` workers copies no pixels.
    """

    def __init__(self, root: Path, split: str, contract: Contract):
        self.root, self.split = Path(root), split
        self.classes: tuple[str, ...] = tuple(contract.classes)
        self.patch_size = contract.patch_size
        folder = self.root / split
        try:
            self.rows = np.load(folder / "rows.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder / 'rows.npy'}: unreadable ({exc})") from exc
        self._all_ids: list[str] | None = None
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return int(len(self.rows))

    def arrays(self) -> dict[str, np.ndarray]:
        """The split's memory-mapped arrays (all physical rows; index them with :attr:`rows`)."""
        if self._arrays is None:
            folder = self.root / self.split
            out = {}
            for name in ARRAYS:
                try:
                    out[name] = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise DataError(f"{folder / name}.npy: unreadable ({exc})") from exc
            self._arrays = out
        return self._arrays

    @property
    def ids(self) -> list[str]:
        if self._all_ids is None:
            self._all_ids = (self.root / self.split / "ids.txt").read_text().splitlines()
        return [self._all_ids[int(r)] for r in self.rows]

    def read(self, index: int) -> RawPatch:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} patches of {self.split}")
        row = int(self.rows[index])
        a = self.arrays()
        sar, optical = a["sar"][row], a["optical"][row]
        if self._all_ids is None:
            self._all_ids = (self.root / self.split / "ids.txt").read_text().splitlines()
        return RawPatch(
            id=self._all_ids[row],
            sar={b: sar[i] for i, b in enumerate(S1_BANDS)},
            optical={b: optical[i] for i, b in enumerate(S2_BANDS)},
            labels=a["labels"][row].astype(np.float32),
            meta={"split": self.split, "store_row": row},
        )

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Raw arrays of the patches at ``indices`` (positions in this split), one vectorised copy per array.

        Returns:
            ``{"sar": float32 [n,2,P,P] dB, "optical": uint16 [n,12,P,P], "labels": uint8 [n,C]}``.
        """
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        a = self.arrays()
        return {name: np.asarray(a[name][rows]) for name in ARRAYS}

    def label_matrix(self) -> np.ndarray:
        """float32 [n, C] labels of the split without touching pixels (calibration sampling uses it)."""
        return np.asarray(self.arrays()["labels"][self.rows], dtype=np.float32)
