"""Patch sources seen as the runtime sees them: the model-size windows of a tile on the 10 m grid.

The runtime cuts an incoming tile into ``patch_size`` windows (:mod:`mosaic_edge.patching`); a calibration set
for deployment must hold the same windows, not whole patches resampled to the model's size (a 120 px
BigEarthNet patch shrunk to a 48 px model input is a 25 m image, smoother than anything the model sees).

- :class:`WindowedSource` re-reads any :class:`~mosaic_edge.data.base.PatchSource` as windows (a source whose
  patches are the model's size gives one window per patch, i.e. itself). Windows carry their patch's labels,
  which calibration uses only to spread its draw over classes.
- :class:`TileFolderSource` reads a folder of spool tiles (``.npz`` files, GeoTIFF pairs, BigEarthNet band
  folders; :func:`mosaic_edge.tile_format.read_tile`), unlabelled.

Both yield :class:`~mosaic_edge.data.base.RawPatch` es in raw units with every band on the 10 m grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchSource, RawPatch
from mosaic_edge.data.preprocess import stack_bands
from mosaic_edge.errors import DataError, UserError
from mosaic_edge.patching import Window, windows
from mosaic_edge.tile_format import Tile, TileLimits, read_tile

# Files of a spool folder that are not tiles (markers, failure reasons, results).
_NOT_TILES = (".ready", ".reason", ".jsonl", ".geojson", ".json", ".tmp")


def grid_arrays(sar: np.ndarray | dict[str, np.ndarray], optical: np.ndarray | dict[str, np.ndarray] | None,
                contract: Contract, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``sar`` [2, H, W] and ``optical`` [12, H, W] on one 10 m grid (absent optical: zeros = no data).

    Band mappings are stacked in the contract's order; optical bands at 20/60 m are resampled to the SAR grid
    as the runtime does (:func:`~mosaic_edge.data.preprocess.stack_bands`).
    """
    s = stack_bands(sar, contract.sar_bands, None, what) if isinstance(sar, dict) else np.asarray(sar)
    h, w = int(s.shape[-2]), int(s.shape[-1])
    if optical is None:
        o = np.zeros((len(contract.optical_bands), h, w), np.uint16)
    elif isinstance(optical, dict):
        o = stack_bands(optical, contract.optical_bands, (h, w), what)
    else:
        o = np.asarray(optical)
    if o.shape[-2:] != (h, w):
        raise DataError(f"{what}: S1 grid {(h, w)} and S2 grid {o.shape[-2:]} differ")
    return s, o


def _window_patch(pid: str, sar: np.ndarray, optical: np.ndarray, win: Window, contract: Contract,
                  labels: np.ndarray | None, meta: dict) -> RawPatch:
    r, c, h, w = win.row, win.col, win.height, win.width
    return RawPatch(
        id=pid,
        sar={b: sar[i, r:r + h, c:c + w] for i, b in enumerate(contract.sar_bands)},
        optical={b: optical[i, r:r + h, c:c + w] for i, b in enumerate(contract.optical_bands)},
        labels=labels, meta={**meta, "window": win.to_dict()})


class WindowedSource:
    """Any patch source read as model-size windows (see the module doc).

    The patches of one source are assumed to share one size (true of BigEarthNet, SEN12MS and the synthetic
    benchmark); the first patch sets it and a patch of another size raises :class:`DataError`.

    Args:
        source: The patch source.
        contract: Patch size and band order of the model.
        stride: Window step (default: the patch size, as the daemon).
    """

    def __init__(self, source: PatchSource, contract: Contract, stride: int | None = None):
        self.source, self.contract = source, contract
        self.classes: tuple[str, ...] = tuple(source.classes)
        self.split: str = source.split
        self._wins: list[Window] = []
        self._grid: tuple[int, int] | None = None
        self._stride = stride
        self._cache: tuple[int, RawPatch, np.ndarray, np.ndarray] | None = None
        if len(source):
            _, sar, _ = self._patch(0)
            self._grid = (int(sar.shape[-2]), int(sar.shape[-1]))
            self._wins = windows(*self._grid, contract.patch_size, stride)

    def _patch(self, index: int) -> tuple[RawPatch, np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != index:
            raw = self.source.read(index)
            sar, opt = grid_arrays(raw.sar, raw.optical, self.contract, raw.id)
            if self._grid is not None and sar.shape[-2:] != self._grid:
                raise DataError(f"{raw.id}: patch of {sar.shape[-2:]} px in a source of {self._grid} px patches")
            self._cache = (index, raw, sar, opt)
        return self._cache[1], self._cache[2], self._cache[3]

    def __len__(self) -> int:
        return len(self.source) * len(self._wins)

    @property
    def ids(self) -> list[str]:
        one = len(self._wins) == 1
        return [pid if one else f"{pid}@{w.row},{w.col}" for pid in self.source.ids for w in self._wins]

    def read(self, index: int) -> RawPatch:
        k, j = divmod(index, len(self._wins))
        raw, sar, opt = self._patch(k)  # consecutive windows of one patch: read once, cut many
        pid = raw.id if len(self._wins) == 1 else f"{raw.id}@{self._wins[j].row},{self._wins[j].col}"
        return _window_patch(pid, sar, opt, self._wins[j], self.contract, raw.labels, raw.meta)


def tile_paths(folder: str | Path) -> list[Path]:
    """The tiles of a folder: ``*.npz`` files and sub-folders, dot-names and spool bookkeeping left out."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{folder}: not a folder of tiles")
    return sorted(p for p in root.iterdir()
                  if not p.name.startswith(".") and not p.name.endswith(_NOT_TILES)
                  and not p.is_symlink() and (p.is_dir() or p.suffix.lower() == ".npz"))


class TileFolderSource:
    """The windows of every tile in a folder of spool tiles (unlabelled; see the module doc).

    Each tile is read once here to learn its size (SAR-only folders are accepted as complete tiles) and again
    when its windows are read; the last tile read is kept, so reading windows in order decodes each tile once.

    Args:
        folder: Folder holding tiles as the spool's ``incoming/`` would.
        contract: Patch size, band order and classes of the model.
        stride: Window step (default: the patch size, as the daemon).
        limits: Tile size guards.

    Raises:
        UserError: no tile in the folder. DataError: a tile that cannot be read, naming it.
    """

    split = "tiles"

    def __init__(self, folder: str | Path, contract: Contract, stride: int | None = None,
                 limits: TileLimits = TileLimits()):
        self.folder, self.contract, self.limits = Path(folder), contract, limits
        self.classes: tuple[str, ...] = tuple(contract.classes)
        self.paths = tile_paths(folder)
        if not self.paths:
            raise UserError(f"{folder}: no tiles (.npz files or tile folders)")
        self._cache: tuple[int, Tile, np.ndarray, np.ndarray] | None = None
        self._index: list[tuple[int, Window]] = []
        for t in range(len(self.paths)):
            _, sar, _ = self._tile(t)
            h, w = int(sar.shape[-2]), int(sar.shape[-1])
            if min(h, w) < contract.patch_size:
                raise DataError(f"{self.paths[t].name}: tile of {h}x{w} px is smaller than the "
                                f"{contract.patch_size} px model patch")
            self._index += [(t, win) for win in windows(h, w, contract.patch_size, stride)]

    def _tile(self, t: int) -> tuple[Tile, np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != t:
            tile = read_tile(self.paths[t], limits=self.limits, allow_sar_only=True)
            sar, opt = grid_arrays(tile.sar, tile.optical, self.contract, tile.id)
            self._cache = (t, tile, sar, opt)
        return self._cache[1], self._cache[2], self._cache[3]

    def __len__(self) -> int:
        return len(self._index)

    @property
    def ids(self) -> list[str]:
        return [f"{self.paths[t].name.removesuffix('.npz')}@{w.row},{w.col}" for t, w in self._index]

    def read(self, index: int) -> RawPatch:
        t, win = self._index[index]
        tile, sar, opt = self._tile(t)
        return _window_patch(f"{tile.id}@{win.row},{win.col}", sar, opt, win, self.contract, None,
                             {"tile": tile.id, "cloudy": tile.cloudy})


class ConcatSource:
    """Several sources of one class list read as one (e.g. the splits of a calibration root)."""

    def __init__(self, sources: list[PatchSource], split: str = "all"):
        if not sources:
            raise UserError("no sources to concatenate")
        self.sources, self.split = sources, split
        self.classes: tuple[str, ...] = tuple(sources[0].classes)
        if any(tuple(s.classes) != self.classes for s in sources):
            raise UserError("sources with different class lists cannot be combined")
        self._starts = np.cumsum([0] + [len(s) for s in sources])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def ids(self) -> list[str]:
        return [i for s in self.sources for i in s.ids]

    def read(self, index: int) -> RawPatch:
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.sources[k].read(index - int(self._starts[k]))


class SubsetSource:
    """The patches of ``source`` at ``indices``, in that order."""

    def __init__(self, source: PatchSource, indices: list[int] | np.ndarray):
        self.source, self.indices = source, [int(i) for i in indices]
        self.classes: tuple[str, ...] = tuple(source.classes)
        self.split: str = source.split

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ids(self) -> list[str]:
        ids = self.source.ids
        return [ids[i] for i in self.indices]

    def read(self, index: int) -> RawPatch:
        return self.source.read(self.indices[index])
