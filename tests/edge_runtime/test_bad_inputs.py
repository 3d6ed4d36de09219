"""Bad-input corpus (issue 7): every kind of broken tile ends in failed/ with a one-line reason while the
daemon keeps serving good tiles."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mosaic_edge import tile_format as tiles_mod
from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
from mosaic_edge.edge_runtime.runner import open_runner
from mosaic_edge.edge_runtime.safety import open_safety_net
from mosaic_edge.edge_runtime.spool import valid_tile_id
from tests.support.runtime import raw_tile, read_results, write_geotiff_tile, write_npz_tile


def _truncate(path: Path, keep: float = 0.4) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _tiff_bomb(path: Path) -> None:
    """A valid little TIFF whose header then claims 60000 x 60000 pixels."""
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.float32), photometric="minisblack",
                     planarconfig="separate")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        spots = [(tags[k].valueoffset, tags[k].dtype) for k in ("ImageWidth", "ImageLength")]
    with open(path, "r+b") as f:
        for offset, dtype in spots:
            f.seek(offset)
            f.write(struct.pack("<H", 60000) if int(dtype) == 3 else struct.pack("<I", 60000))


def _npz_bomb(path: Path) -> None:
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (2, 200_000, 200_000)
    with zipfile.ZipFile(path, "w") as zf, zf.open("sar.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)


def _geotiff(folder: Path, s1: np.ndarray | None = None, s2: np.ndarray | None = None) -> Path:
    from mosaic_edge.data.tiff import write_tiff

    sar, opt = raw_tile(32, 32, 0)
    write_tiff(folder / "s1.tif", sar if s1 is None else s1)
    write_tiff(folder / "s2.tif", opt if s2 is None else s2)
    return folder


def _georeferenced(folder: Path, g1: tuple | None, g2: tuple | None, crs1: str | None = "EPSG:32633",
                   crs2: str | None = "EPSG:32633", extra: dict | None = None) -> Path:
    """An S1/S2 pair with the given transforms and CRSs (None: no georeferencing); ``extra``: more files."""
    from mosaic_edge.data.tiff import GeoInfo, write_tiff

    sar, opt = raw_tile(32, 32, 0)
    write_tiff(folder / "s1.tif", sar, None if g1 is None else GeoInfo(g1, crs1))
    write_tiff(folder / "s2.tif", opt, None if g2 is None else GeoInfo(g2, crs2))
    for name, (arr, geo, nodata) in (extra or {}).items():
        write_tiff(folder / name, arr, geo, nodata=nodata)
    return folder


def _bad_nodata_tag(folder: Path) -> None:
    from mosaic_edge.data.tiff import write_tiff

    sar, opt = raw_tile(32, 32, 0)
    write_tiff(folder / "s1.tif", sar)
    tifffile.imwrite(folder / "s2.tif", opt, photometric="minisblack", planarconfig="separate",
                     extratags=[(42113, "s", 0, "abc", False)])


def _mask_off_grid(folder: Path) -> None:
    from mosaic_edge.data.tiff import GeoInfo

    coarse = GeoInfo((20.0, 0.0, 500000.0, 0.0, -20.0, 5800000.0), "EPSG:32633")
    _georeferenced(folder, GRID, GRID, extra={"scl.tif": (np.full((32, 32), 4, np.uint8), coarse, None)})


GRID = (10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0)


def _write_outside_symlink(inc: Path, name: str) -> None:
    target = write_npz_tile(inc.parent.parent / "outside" / "secret.npz")
    os.symlink(target, inc / name)


def _symlink_inside_folder(inc: Path, name: str) -> None:
    folder = _geotiff(inc / name)
    outside = inc.parent.parent / "outside" / "s2.tif"
    outside.parent.mkdir(exist_ok=True)
    shutil.move(folder / "s2.tif", outside)
    os.symlink(outside, folder / "s2.tif")


# kind -> (writer(incoming, name), entry name in incoming/, expected words in the reason)
BAD: dict[str, tuple[Callable[[Path, str], object], str, tuple[str, ...]]] = {
    "truncated_tiff": (lambda inc, n: _truncate(write_geotiff_tile(inc / n) / "s1.tif"), "trunc",
                       ("truncated",)),
    "corrupt_tiff": (lambda inc, n: (_geotiff(inc / n), (inc / n / "s2.tif").write_bytes(
        b"II*\0" + os.urandom(300))), "corrupt", ("corrupt/s2.tif",)),
    "zero_byte_npz": (lambda inc, n: (inc / n).write_bytes(b""), "zero.npz", ("unreadable .npz",)),
    "zero_byte_tif": (lambda inc, n: (_geotiff(inc / n), (inc / n / "s1.tif").write_bytes(b"")), "zerotif",
                      ("empty file",)),
    "wrong_band_count": (lambda inc, n: _geotiff(inc / n, s1=np.zeros((3, 32, 32), np.float32)), "bands3",
                         ("s1 must be [2",)),
    "wrong_dtype": (lambda inc, n: np.savez(inc / n, sar=np.zeros((2, 16, 16), np.uint8)), "dtype.npz",
                    ("dtype uint8",)),
    "wrong_dtype_s2": (lambda inc, n: np.savez(inc / n, sar=raw_tile(16, 16, 0)[0],
                                               optical=np.zeros((12, 16, 16), np.complex64)), "cplx.npz",
                       ("not a real number",)),
    "too_small": (lambda inc, n: write_npz_tile(inc / n, 8, 8), "small.npz", ("smaller than",)),
    "nan_inf": (lambda inc, n: np.savez(inc / n, sar=np.where(np.arange(256).reshape(16, 16) % 3 == 0, -12.0,
                                                              np.array([np.nan, np.inf])[:, None, None]
                                                              ).astype(np.float32)), "naninf.npz",
                ("invalid",)),
    "all_nodata": (lambda inc, n: np.savez(inc / n, sar=np.full((2, 16, 16), np.nan, np.float32),
                                           optical=np.zeros((12, 16, 16), np.uint16)), "nodata.npz",
                   ("100%",)),
    "mismatched_sizes": (lambda inc, n: _geotiff(inc / n, s2=raw_tile(24, 32, 1)[1]), "sizes", ("differ",)),
    "mismatched_crs": (lambda inc, n: write_geotiff_tile(inc / n, crs2="EPSG:4326"), "crs", ("crs",)),
    "missing_partner": (lambda inc, n: (_geotiff(inc / n), (inc / n / "s2.tif").unlink()), "lonely",
                        ("partner", "waited")),
    "npz_pickle": (lambda inc, n: np.savez(inc / n, sar=np.array([object()] * 4, dtype=object)), "pickle.npz",
                   ("python objects",)),
    "npz_wrong_keys": (lambda inc, n: np.savez(inc / n, s1=np.zeros((2, 16, 16), np.float32)), "keys.npz",
                       ("unexpected array",)),
    "npz_bomb": (lambda inc, n: _npz_bomb(inc / n), "bomb.npz", ("declares shape",)),
    "tiff_bomb": (lambda inc, n: (_geotiff(inc / n), _tiff_bomb(inc / n / "s2.tif")), "tbomb", ("exceeds",)),
    "name_dotdot": (lambda inc, n: write_npz_tile(inc / n), "a..b.npz", ("invalid tile name",)),
    "name_backslash": (lambda inc, n: write_npz_tile(inc / n), "x\\..\\y.npz", ("invalid tile name",)),
    "not_a_tile": (lambda inc, n: (inc / n).write_text("hello"), "notes.txt", ("invalid tile name",)),
    "empty_folder": (lambda inc, n: (inc / n).mkdir(), "empty", ("no tile files",)),
    "symlink_outside": (_write_outside_symlink, "link.npz", ("symlink",)),
    "symlink_in_folder": (_symlink_inside_folder, "inlink", ("symlink",)),
    "vanishes_mid_read": (lambda inc, n: _geotiff(inc / n), "vanish", ("no such file",)),
    "duplicate_id": (lambda inc, n: (write_npz_tile(inc / "dup.npz", seed=1), _geotiff(inc / n)), "dup",
                     ("duplicate tile id",)),
    # Malformed or inconsistent georeferencing (issue 16).
    "rotated_grid": (lambda inc, n: _georeferenced(inc / n, (10.0, 0.5, 500000.0, 0.5, -10.0, 5800000.0),
                                                   (10.0, 0.5, 500000.0, 0.5, -10.0, 5800000.0)), "rotated",
                     ("rotated or sheared",)),
    "missing_crs": (lambda inc, n: _georeferenced(inc / n, GRID, GRID, None, None), "nocrs", ("without a crs",)),
    "unknown_crs": (lambda inc, n: write_npz_tile(inc / n, transform=GRID, crs="EPSG:1"), "epsg1.npz",
                    ("unknown crs",)),
    "grids_disagree": (lambda inc, n: _georeferenced(inc / n, GRID, (10.0, 0.0, 500020.0, 0.0, -10.0, 5800000.0)),
                       "gridshift", ("not aligned",)),
    "one_georeferenced": (lambda inc, n: _georeferenced(inc / n, GRID, None), "halfgeo",
                          ("only s1.tif is georeferenced",)),
    "mask_off_grid": (lambda inc, n: _mask_off_grid(inc / n), "sclgrid", ("not on the s1/s2 grid",)),
    "bad_nodata_tag": (lambda inc, n: _bad_nodata_tag(inc / n), "badnodata", ("malformed gdal_nodata",)),
}


def test_corpus_has_at_least_15_kinds():
    assert len(BAD) >= 15


def test_tile_id_validation():
    for bad in ("a/b", "../x", "..", ".hidden", "a\\b", "x..y", "", "a b", "é", "t.ready", "-x"):
        assert not valid_tile_id(bad), bad
    for good in ("S2A_MSIL2A_20170613T101031_34_66", "tile-1.v2", "A"):
        assert valid_tile_id(good)


def _wait(pred, timeout=30.0):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("readers, fallback", [(1, False), (3, False), (2, True)])
def test_bad_tiles_fail_with_reasons_while_serving(tmp_path, tiny_onnx, safety_export, monkeypatch, readers,
                                                   fallback):
    """``fallback``: INT8 with the safety net (drift checks, re-runs) answers the same corpus the same way."""
    spool = tmp_path / "spool"
    inc = spool / "incoming"
    inc.mkdir(parents=True)
    real_read = tiles_mod._read_file

    def vanishing_read(path, *a, **kw):
        if Path(path).parent.name == "vanish" and Path(path).parent.exists():
            shutil.rmtree(Path(path).parent)  # the writer deletes the tile while we read it
        return real_read(path, *a, **kw)

    monkeypatch.setattr(tiles_mod, "_read_file", vanishing_read)
    cfg = ServeConfig(settle_s=0.2, poll_s=0.05, max_wait_ms=5, partner_timeout_s=0.5, readers=readers)
    if fallback:
        runner = open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1)
        daemon = Daemon(runner, spool, cfg, safety=open_safety_net(safety_export, runner, threads=1))
        assert daemon.safety.fallback
    else:
        daemon = Daemon(open_runner(tiny_onnx, kind="ort", threads=1), spool, cfg)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        for write, name, _ in BAD.values():
            write(inc, name)
        _wait(lambda: not [n for n in os.listdir(inc) if not n.startswith(".")])
        for i in range(4):  # still serving after all of that
            write_npz_tile(inc / f"good{i}.npz", seed=i)
        _wait(lambda: len(os.listdir(spool / "done")) == 5)  # 4 good + the first "dup"
    finally:
        daemon.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert not daemon._ids and not daemon._names  # every taken tile was released (no id stuck in flight)
    reasons = {p.name.removesuffix(".reason"): p.read_text() for p in (spool / "failed").glob("*.reason")}
    for kind, (_, name, words) in BAD.items():
        key = next((k for k in reasons if k.startswith(name.replace("\\", "_").replace("..", "__")
                                                       .removesuffix(".npz").removesuffix(".txt"))), None)
        assert key is not None, (kind, sorted(reasons))
        text = reasons.pop(key)
        assert text.endswith("\n") and text.count("\n") == 1, (kind, text)
        for w in words:
            assert w in text.lower(), (kind, text)
    assert not reasons, reasons
    assert set(read_results(spool)) == {"dup", "good0", "good1", "good2", "good3"}
    assert (tmp_path / "outside" / "secret.npz").is_file()  # the symlink target was neither moved nor read
    assert (spool / "failed" / "link.npz").is_symlink()
    assert daemon.metrics.counters["tiles_failed"] == len(BAD)
    if fallback:
        records = [r for rs in read_results(spool).values() for r in rs]
        assert {r["answered_by"] for r in records} <= {"int8", "fp32"} and all("drift" in r for r in records)


def test_resent_tile_is_a_duplicate(tmp_path, tiny_onnx):
    from tests.support.runtime import serve_once

    spool = tmp_path / "spool"
    write_npz_tile(spool / "incoming" / "t.npz", seed=1)
    serve_once(tiny_onnx, spool)
    first = (spool / "results" / "t.jsonl").read_bytes()
    write_npz_tile(spool / "incoming" / "t.npz", seed=1)
    serve_once(tiny_onnx, spool)
    assert "already processed" in (spool / "failed" / "t.npz.reason").read_text()
    write_npz_tile(spool / "incoming" / "t.npz", seed=2)
    serve_once(tiny_onnx, spool)
    assert "another input" in (spool / "failed" / "t.npz.1.reason").read_text()
    assert (spool / "results" / "t.jsonl").read_bytes() == first


@pytest.mark.parametrize("sparse", [True])
def test_sparse_nan_pixels_are_filled_not_failed(tmp_path, tiny_onnx, sparse):
    from tests.support.runtime import serve_once

    sar, opt = raw_tile(16, 16, 0)
    sar[0, 3, 4] = np.nan
    sar[1, 7, 7] = np.inf
    np.savez(tmp_path / "in.npz", sar=sar, optical=opt)
    (tmp_path / "spool" / "incoming").mkdir(parents=True)
    shutil.move(tmp_path / "in.npz", tmp_path / "spool" / "incoming" / "sp.npz")
    serve_once(tiny_onnx, tmp_path / "spool")
    assert list(read_results(tmp_path / "spool")) == ["sp"]
