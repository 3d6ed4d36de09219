"""The packed store: what `mosaic-edge pack` writes, how it reads back, skipped patches, disk check, resumption."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.cli import main
from mosaic_edge.contract import S2_BANDS
from mosaic_edge.data import pack as pack_mod
from mosaic_edge.data.base import PatchDataset
from mosaic_edge.data.benv2 import benv2_contract
from mosaic_edge.data.pack import pack_dataset, to_grid
from mosaic_edge.data.sources import DataSpec, contract_for, detect_kind, open_source
from mosaic_edge.data.store import STORE_JSON, PackedStore
from mosaic_edge.data.synthetic import SyntheticConfig, synthetic_contract
from mosaic_edge.errors import UserError

SMALL = SyntheticConfig(n_train=12, n_val=4, n_test=4, patch_size=24, stats_samples=8)
SMALL_SPEC = DataSpec("synthetic", dataclasses.asdict(SMALL))


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "syn"
    pack_dataset(SMALL_SPEC, out, workers=0, chunk_size=5)
    return out


def test_store_reads_back_the_source_on_its_grid(synthetic_store: Path) -> None:
    assert detect_kind(synthetic_store) == "store"
    store = PackedStore(synthetic_store)
    assert store.splits == ("train", "validation", "test")
    assert store.contract() == synthetic_contract(SMALL) == contract_for(synthetic_store)
    src, raw_src = open_source(synthetic_store, "train"), open_source("synthetic", "train", config=SMALL)
    assert len(src) == 12 and src.ids == raw_src.ids
    for i in (0, 7, 11):
        got, want = src.read(i), raw_src.read(i)
        sar, optical = to_grid(want, 24)
        np.testing.assert_array_equal(np.stack([got.sar["VV"], got.sar["VH"]]), sar)
        np.testing.assert_array_equal(np.stack([got.optical[b] for b in S2_BANDS]), optical)
        np.testing.assert_array_equal(got.labels, want.labels)
        # 10 m bands are stored exactly; resampled bands within 0.5 units of the float resampling
        np.testing.assert_array_equal(got.optical["B02"], want.optical["B02"])
    g = src.gather(np.array([3, 0, 3]))
    assert g["sar"].shape == (3, 2, 24, 24) and g["optical"].dtype == np.uint16 and g["labels"].shape == (3, 19)
    np.testing.assert_array_equal(g["sar"][1], np.stack([src.read(0).sar["VV"], src.read(0).sar["VH"]]))
    np.testing.assert_array_equal(g["optical"][0], g["optical"][2])
    np.testing.assert_array_equal(src.label_matrix()[3], raw_src.read(3).labels)


def test_store_samples_preprocess_like_the_raw_source(synthetic_store: Path) -> None:
    contract = synthetic_contract(SMALL)
    a = PatchDataset(open_source(synthetic_store, "test"), contract)
    b = PatchDataset(open_source("synthetic", "test", config=SMALL), contract)
    worst = min(contract.optical_std)
    for i in range(len(a)):
        x, y = a[i], b[i]
        np.testing.assert_array_equal(x["sar"], y["sar"])
        # the only difference: resampled S2 rounded to whole reflectance units at pack time (<= 0.5 / std)
        assert np.abs(x["optical"] - y["optical"]).max() <= 0.5 / worst + 1e-6
        np.testing.assert_array_equal(x["labels"], y["labels"])


def test_store_refuses_reader_options_and_knows_its_provenance(synthetic_store: Path) -> None:
    with pytest.raises(UserError, match="no reader options"):
        open_source(synthetic_store, "train", label_threshold=0.2)
    info = json.loads((synthetic_store / STORE_JSON).read_text())
    assert info["source"]["kind"] == "synthetic" and info["source"]["options"]["n_train"] == 12
    assert info["source"]["reader"].endswith("SyntheticMosaic") and info["source"]["mosaic_edge_version"]
    assert info["splits"]["train"] == {"total": 12, "packed": 12, "skipped": 0}
    assert "align_corners=False" in info["grid"]["resampling"]
    assert not (synthetic_store / "train" / "chunks").exists()
    with pytest.raises(UserError, match="already a packed store"):
        pack_dataset(DataSpec(str(synthetic_store)), synthetic_store.parent / "again")


def test_benv2_store_keeps_published_statistics_and_skips_a_corrupt_patch(benv2_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ben"
    shutil.copytree(benv2_root, root)
    src, val = open_source(root, "train"), open_source(root, "validation")
    bad = next(src.folders(2)[1].glob("*_B05.tif"))
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated band file
    shutil.rmtree(val.folders(1)[0])  # a pair whose S1 folder is missing
    out = tmp_path / "store"
    with open(os.devnull, "w") as quiet:
        summary = pack_dataset(DataSpec(str(root)), out, workers=2, chunk_size=2, progress=quiet)
    assert summary.counts == {"train": 5, "validation": 5, "test": 6}
    assert [(s["split"], s["index"], s["id"]) for s in summary.skipped] == [
        ("train", 2, src.ids[2]), ("validation", 1, val.ids[1])]
    assert "2 skipped" in summary.line()
    report = json.loads((out / "report.json").read_text())["skipped"]
    assert "B05" in report[0]["error"] and "missing S1" in report[1]["error"]
    store = PackedStore(out)
    assert store.contract() == benv2_contract() and store.contract().optical_product == "L2A"
    packed = store.open("train")
    assert packed.ids == [i for j, i in enumerate(src.ids) if j != 2]
    want = src.read(3)
    np.testing.assert_array_equal(packed.read(2).sar["VH"], want.sar["VH"])  # index 3 of the raw split
    np.testing.assert_array_equal(packed.read(2).labels, want.labels)


def test_disk_space_is_checked_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pack_mod.shutil, "disk_usage", lambda p: usage._replace(free=10_000_000))
    with pytest.raises(UserError, match="not enough disk space"):
        pack_dataset(SMALL_SPEC, tmp_path / "s", workers=0)
    assert not any((tmp_path / "s").iterdir())  # nothing written but the (empty) store folder


def test_resume_packs_only_missing_chunks_and_refuses_other_data(tmp_path: Path) -> None:
    out = tmp_path / "s"
    ref = tmp_path / "ref"
    pack_dataset(SMALL_SPEC, ref, workers=0, chunk_size=4)
    seen: list[tuple[str, int]] = []

    def stop_after_three(marker: dict) -> None:
        seen.append((marker["split"], marker["chunk"]))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(UserError, match="interrupted"):
        pack_dataset(SMALL_SPEC, out, workers=0, chunk_size=4, on_chunk=stop_after_three)
    assert not (out / STORE_JSON).exists()
    with pytest.raises(UserError, match="unfinished pack"):
        PackedStore(out)
    other = DataSpec("synthetic", {**SMALL_SPEC.options, "seed": 5})
    with pytest.raises(UserError, match="unfinished pack of other data"):
        pack_dataset(other, out, workers=0, chunk_size=4)
    again: list[tuple[str, int]] = []
    summary = pack_dataset(SMALL_SPEC, out, workers=0, chunk_size=4, on_chunk=lambda m: again.append(m["chunk"]))
    assert summary.chunks_done_before == 3 and summary.chunks_total == 5 and len(again) == 2
    for split in ("train", "validation", "test"):
        for name in ("sar", "optical", "labels"):
            assert np.array_equal(np.load(out / split / f"{name}.npy"), np.load(ref / split / f"{name}.npy"))
    assert pack_dataset(SMALL_SPEC, out, workers=0).already_complete
    with pytest.raises(UserError, match="finished store of other data"):
        pack_dataset(other, out, workers=0)


def test_pack_survives_kill_9_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "mosaic_edge", "pack", "synthetic", "--out", str(out), "--n-train", "600",
           "--n-val", "6", "--n-test", "6", "--patch-size", "60", "--chunk-size", "10", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    markers = out / "train" / "chunks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(markers.glob("*.json"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker, mid-way
    proc.wait()
    done_before = len(list(markers.glob("*.json")))
    assert 3 <= done_before < 60 and not (out / STORE_JSON).exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "packed 612 patches" in res.stdout and "resumed:" in res.stdout
    src = open_source(out, "train")
    raw = open_source("synthetic", "train", n_train=600, n_val=6, n_test=6, patch_size=60)
    for i in (0, 5 * done_before, 10 * done_before + 3, 599):  # before, at and after the kill
        i = min(i, 599)
        np.testing.assert_array_equal(src.read(i).sar["VV"], raw.read(i).sar["VV"])
        np.testing.assert_array_equal(src.read(i).labels, raw.read(i).labels)


def test_pack_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["pack", "synthetic", "--out", str(tmp_path / "s"), "--n-train", "4", "--n-val", "2", "--n-test", "2",
              "--patch-size", "12", "--workers", "0"])
    assert exc.value.code == 0
    assert "packed 8 patches (train 4, validation 2, test 2)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["pack", str(tmp_path / "s"), "--out", str(tmp_path / "t")])
    assert exc.value.code == 2 and "already a packed store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["pack", "synthetic", "--out", str(tmp_path / "u"), "--split-file", "x.csv"])
    assert exc.value.code == 2 and "do not apply to synthetic" in capsys.readouterr().err


def test_sen12ms_store_keeps_its_own_statistics_split_and_threshold(tmp_path: Path) -> None:
    from mosaic_edge.data.sen12ms import SEN12MS, sen12ms_contract
    from tests.support.sen12ms import write_sen12ms_fixture

    root = write_sen12ms_fixture(tmp_path / "sen", scenes=2, patches=2)
    holdout = tmp_path / "holdout.txt"
    holdout.write_text("ROIs1158_spring/s1_2\n")
    options = {"label_threshold": 0.3, "split_file": [f"test={holdout}"]}
    out = tmp_path / "store"
    pack_dataset(DataSpec(str(root), options), out, workers=0)
    store = PackedStore(out)
    want = sen12ms_contract(SEN12MS(root, "train", **options))
    assert store.contract() == want and want.optical_product == "L1C" and want.dataset == "sen12ms"
    assert store.info["source"]["options"] == options
    test = store.open("test")
    assert test.ids == ["ROIs1158_spring_2_p0", "ROIs1158_spring_2_p1"]
    np.testing.assert_array_equal(test.label_matrix(), np.stack([r.labels for r in (
        SEN12MS(root, "test", **options).read(i) for i in range(2))]))
