"""Sources seen as the runtime sees them: model-size windows of patches and of a folder of spool tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic_edge import patching
from mosaic_edge.contract import Contract
from mosaic_edge.data.base import PatchDataset
from mosaic_edge.data.synthetic import SyntheticConfig, SyntheticMosaic
from mosaic_edge.data.windows import ConcatSource, SubsetSource, TileFolderSource, WindowedSource, tile_paths
from mosaic_edge.errors import DataError, UserError
from tests.support.runtime import copy_benv2_tile, write_npz_tile


def test_windowed_source_cuts_each_patch_like_the_daemon() -> None:
    src = SyntheticMosaic(SyntheticConfig(patch_size=42, n_train=3, n_val=1, n_test=1), "train")
    contract = Contract(patch_size=16)
    win = WindowedSource(src, contract)
    assert len(win) == 3 * 9  # starts 0, 16 and the flush 26 in each direction
    assert win.ids[:2] == [f"{src.ids[0]}@0,0", f"{src.ids[0]}@0,16"] and win.classes == src.classes
    whole = src.read(1)
    w = win.read(9 + 4)  # patch 1, window (16, 16)
    assert w.id == f"{whole.id}@16,16" and w.meta["window"] == {"row": 16, "col": 16, "height": 16, "width": 16}
    np.testing.assert_array_equal(w.sar["VH"], whole.sar["VH"][16:32, 16:32])
    np.testing.assert_array_equal(w.labels, whole.labels)
    same = WindowedSource(src, Contract(patch_size=42))  # patches of the model's size: one window each
    assert len(same) == 3 and same.ids == src.ids


def test_tile_windows_are_what_the_runtime_feeds_the_model(tmp_path: Path, benv2_root: Path) -> None:
    # calibration must see exactly the runtime's model inputs: tile read, 20/60 m bands resampled to the 10 m
    # grid, normalised, cut into patch windows (edge_runtime.tiles + patching)
    from mosaic_edge.edge_runtime.tiles import prepare_tile
    from mosaic_edge.tile_format import read_tile

    contract = Contract(patch_size=48)
    folder = tmp_path / "tiles"
    copy_benv2_tile(benv2_root, 0, folder / "t0")
    write_npz_tile(folder / "t1.npz", 50, 60, seed=1)
    src = TileFolderSource(folder, contract)
    assert len(src) == 9 + 4 and src.classes == contract.classes and src.split == "tiles"
    ours = PatchDataset(src, contract)
    for path, first in ((folder / "t0", 0), (folder / "t1.npz", 9)):
        prep = prepare_tile(read_tile(path), contract)
        wins = patching.windows(*prep.shape, contract.patch_size)
        runtime = patching.cut(prep.optical, wins), patching.cut(prep.sar, wins)
        for k in range(len(wins)):
            sample = ours[first + k]
            np.testing.assert_allclose(sample["optical"], runtime[0][k], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(sample["sar"], runtime[1][k], rtol=1e-6, atol=1e-6)
            assert sample["labelled"] is False


def test_tile_folder_skips_bookkeeping_and_reads_sar_only_tiles(tmp_path: Path) -> None:
    contract = Contract(patch_size=16)
    write_npz_tile(tmp_path / "a.npz", 16, 16, seed=0)
    write_npz_tile(tmp_path / "b.npz", 16, 32, seed=1, optical=False)
    (tmp_path / "a.ready").touch()
    (tmp_path / "b.reason").write_text("x")
    write_npz_tile(tmp_path / ".c.npz", 16, 16, seed=2)  # still being written
    assert [p.name for p in tile_paths(tmp_path)] == ["a.npz", "b.npz"]
    src = TileFolderSource(tmp_path, contract)
    assert src.ids == ["a@0,0", "b@0,0", "b@0,16"]
    sar_only = src.read(2)
    assert sar_only.labels is None and not any(band.any() for band in sar_only.optical.values())


def test_tile_folder_errors_name_the_problem(tmp_path: Path) -> None:
    contract = Contract(patch_size=32)
    with pytest.raises(UserError, match="no tiles"):
        TileFolderSource(tmp_path, contract)
    with pytest.raises(UserError, match="not a folder"):
        TileFolderSource(tmp_path / "missing", contract)
    write_npz_tile(tmp_path / "small.npz", 16, 16)
    with pytest.raises(DataError, match="small.npz.*smaller than"):
        TileFolderSource(tmp_path, contract)
    (tmp_path / "small.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="small"):
        TileFolderSource(tmp_path, contract)


def test_concat_and_subset_sources() -> None:
    cfg = SyntheticConfig(patch_size=12, n_train=3, n_val=2, n_test=1)
    a, b = SyntheticMosaic(cfg, "train"), SyntheticMosaic(cfg, "validation")
    both = ConcatSource([a, b])
    assert len(both) == 5 and both.ids == a.ids + b.ids
    assert both.read(3).id == b.ids[0] and both.read(2).id == a.ids[2]
    sub = SubsetSource(both, [4, 0])
    assert len(sub) == 2 and sub.ids == [b.ids[1], a.ids[0]] and sub.read(0).id == b.ids[1]
    with pytest.raises(UserError, match="no sources"):
        ConcatSource([])
