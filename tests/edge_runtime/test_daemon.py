"""The spool daemon end to end on CPU: synthetic + real BigEarthNet tiles, a corrupted tile, SAR-only tiles,
results compared with a direct runner call, disk-full retries, graceful SIGTERM, and `predict`."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from mosaic_edge.data.benv2 import BigEarthNetV2
from mosaic_edge.data.preprocess import preprocess
from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner, Runner
from mosaic_edge.edge_runtime.spool import atomic_write
from tests.support.runtime import (
    copy_benv2_tile,
    raw_tile,
    read_results,
    serve_once,
    write_geotiff_tile,
    write_npz_tile,
)

N_BENV2 = 3


def _direct_scores(model: Path, contract, sar, optical, head="logits") -> np.ndarray:
    """Scores of one patch from a direct runner call, the inputs prepared by hand in the model's input form."""
    if contract.input_form == "raw":  # physical units; the graph standardises
        inputs = {"sar": np.asarray(sar, np.float32)[None], "optical": np.asarray(optical, np.float32)[None]}
    else:
        pre = preprocess(sar, optical, contract, size=sar.shape[-2:] if isinstance(sar, np.ndarray) else None)
        inputs = {"sar": pre.sar[None], "optical": pre.optical[None]}
    with OnnxRuntimeRunner(model) as r:
        out = r.infer(inputs)
    return expit(out[head][0].astype(np.float64))


def test_end_to_end_synthetic_and_real_tiles(tmp_path, tiny_onnx, contract, benv2_root):
    inc = tmp_path / "spool" / "incoming"
    for i in range(6):
        write_npz_tile(inc / f"syn{i}.npz", seed=i)
    (inc / "syn0.npz.ready").touch()
    write_npz_tile(inc / "big.npz", 40, 40, seed=9)
    write_npz_tile(inc / "saronly.npz", seed=10, optical=False)
    write_geotiff_tile(inc / "geo", 32, 48, seed=11)
    for i in range(N_BENV2):
        copy_benv2_tile(benv2_root, i, inc / f"benv2-{i}")
    bad = write_geotiff_tile(inc / "corrupt", seed=12)
    data = (bad / "s2.tif").read_bytes()
    (bad / "s2.tif").write_bytes(data[: len(data) // 3])  # truncated download
    daemon = serve_once(tiny_onnx, tmp_path / "spool", batch=8)
    spool = tmp_path / "spool"

    res = read_results(spool)
    expected = {f"syn{i}" for i in range(6)} | {"big", "saronly", "geo"}
    expected |= {f"benv2-{i}" for i in range(N_BENV2)}
    assert set(res) == expected
    assert sorted(os.listdir(spool / "failed")) == ["corrupt", "corrupt.reason"]
    reason = (spool / "failed" / "corrupt.reason").read_text()
    assert reason.count("\n") == 1 and "s2.tif" in reason and "truncated" in reason
    assert os.listdir(spool / "incoming") == []
    counters = daemon.metrics.counters
    assert counters["tiles_done"] == len(expected) and counters["tiles_failed"] == 1

    # Single-patch synthetic tiles: scores equal a direct runner call on the shared preprocessing.
    for i in range(6):
        (rec,) = res[f"syn{i}"]
        sar, opt = raw_tile(16, 16, i)
        want = _direct_scores(tiny_onnx, contract, sar, opt)
        np.testing.assert_allclose([rec["scores"][c] for c in contract.classes], want, atol=2e-6)
        assert rec["head"] == "fused" and rec["window"] == {"row": 0, "col": 0, "height": 16, "width": 16}
        assert len(rec["model_hash"]) == 64 and rec["runner"] == "ort"
        assert set(rec["timings_ms"]) >= {"read", "verify", "prepare", "cut", "queue", "infer"}
    (rec,) = res["saronly"]
    sar, _ = raw_tile(16, 16, 10)
    want = _direct_scores(tiny_onnx, contract, sar, np.zeros((12, 16, 16), np.float32), "logits_sar")
    assert rec["head"] == "sar"
    np.testing.assert_allclose([rec["scores"][c] for c in contract.classes], want, atol=2e-6)
    assert [r["window"]["col"] for r in res["big"]] == [0, 16, 24] * 3
    assert res["geo"][0]["crs"] == "EPSG:32633" and (spool / "results" / "geo.geojson").is_file()
    assert not (spool / "results" / "syn1.geojson").exists()

    # Real BigEarthNet v2 tiles (120 px, per-band folders) cut into 16 px windows: each equals a direct run.
    src = BigEarthNetV2(benv2_root, "train")
    starts = [0, 16, 32, 48, 64, 80, 96, 104]
    for i in range(N_BENV2):
        recs = res[f"benv2-{i}"]
        assert len(recs) == 64 and {r["head"] for r in recs} == {"fused"}
        raw = src.read(i)
        pre = preprocess(raw.sar, raw.optical, contract, size=(120, 120))
        sar = np.stack([pre.sar[:, r:r + 16, c:c + 16] for r in starts for c in starts])
        opt = np.stack([pre.optical[:, r:r + 16, c:c + 16] for r in starts for c in starts])
        with OnnxRuntimeRunner(tiny_onnx) as r:
            want = expit(r.infer({"sar": sar, "optical": opt})["logits"].astype(np.float64))
        got = np.array([[rec["scores"][c] for c in contract.classes] for rec in recs])
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_predict_cli_matches_daemon(tmp_path, tiny_onnx):
    from typer.testing import CliRunner

    from mosaic_edge.cli import app

    inc = tmp_path / "spool" / "incoming"
    tiles = [write_npz_tile(inc / f"p{i}.npz", 16, 40, seed=20 + i) for i in range(2)]
    copies = [tmp_path / t.name for t in tiles]
    for t, c in zip(tiles, copies, strict=True):
        c.write_bytes(t.read_bytes())
    out = tmp_path / "pred.jsonl"
    args = ["predict", *map(str, copies), "--model", str(tiny_onnx), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    serve_once(tiny_onnx, tmp_path / "spool")
    daemon_recs = [json.loads(line) for p in sorted((tmp_path / "spool" / "results").glob("*.jsonl"))
                   for line in p.read_text().splitlines()]  # tile summary + windows, per tile
    pred_recs = [json.loads(line) for line in out.read_text().splitlines()]
    strip = [lambda r: {k: v for k, v in r.items() if k != "timings_ms"}]
    assert [strip[0](r) for r in pred_recs] == [strip[0](r) for r in daemon_recs]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    result = CliRunner().invoke(app, ["predict", str(bad), "--model", str(tiny_onnx)])
    assert result.exit_code == 1


def test_disk_full_pauses_and_loses_nothing(tmp_path, tiny_onnx):
    spool = tmp_path / "spool"
    for i in range(5):
        write_npz_tile(spool / "incoming" / f"d{i}.npz", seed=i)
    calls = {"n": 0}

    def full_then_ok(path, data):
        calls["n"] += 1
        if calls["n"] <= 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        atomic_write(path, data)

    from mosaic_edge.edge_runtime.runner import open_runner
    from mosaic_edge.edge_runtime.spool import Spool

    cfg = ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=5, once=True, disk_retry_s=0.01)
    daemon = Daemon(open_runner(tiny_onnx, kind="ort"), Spool(spool, 0, writer=full_then_ok), cfg)
    assert daemon.run() == 0
    assert set(read_results(spool)) == {f"d{i}" for i in range(5)}
    assert daemon.metrics.counters["disk_full_retries"] == 4
    assert os.listdir(spool / "failed") == [] and os.listdir(spool / "incoming") == []


def test_inference_does_not_wait_for_result_writes(tmp_path, tiny_onnx):
    """Writes block until every tile is inferred: that finishes only if inference never waits on the disk."""
    import threading

    from mosaic_edge.edge_runtime.runner import open_runner
    from mosaic_edge.edge_runtime.spool import Spool

    spool, n = tmp_path / "spool", 4
    for i in range(n):
        write_npz_tile(spool / "incoming" / f"w{i}.npz", seed=i)
    runner = open_runner(tiny_onnx, kind="ort", threads=1)
    all_inferred, inferred, waits = threading.Event(), [], []
    infer = runner.infer

    def counting_infer(batch):
        out = infer(batch)
        inferred.append(len(batch["sar"]))
        if len(inferred) == n:
            all_inferred.set()
        return out

    def slow_disk(path, data):
        waits.append(all_inferred.wait(10))  # the first write holds the writer until inference is done
        atomic_write(path, data, sync_dir=False)

    runner.infer = counting_infer
    cfg = ServeConfig(batch=1, settle_s=0, poll_s=0.05, max_wait_ms=5, once=True, write_queue=n)
    assert Daemon(runner, Spool(spool, 0, writer=slow_disk), cfg).run() == 0
    assert waits == [True] * n and inferred == [1] * n
    assert set(read_results(spool)) == {f"w{i}" for i in range(n)}


class _BrokenEngineRunner(Runner):
    kind = "fake"

    def _activate(self) -> None:
        raise RuntimeError("engine file is corrupt and could not be rebuilt")


def test_unloadable_model_is_a_clear_exit_not_a_crash(tmp_path, contract, caplog):
    daemon = Daemon(_BrokenEngineRunner(contract), tmp_path / "spool", ServeConfig(once=True))
    assert daemon.run() == 2
    assert "cannot load the model" in caplog.text


def _serve_cmd(model: Path, spool: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mosaic_edge", "serve", "--model", str(model), "--spool", str(spool),
            "--runner", "ort", "--settle-s", "0", "--poll-s", "0.05", "--threads", "1", *extra]


def test_sigterm_is_graceful(tmp_path, tiny_onnx):
    spool = tmp_path / "spool"
    proc = subprocess.Popen(_serve_cmd(tiny_onnx, spool), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (spool / "incoming").is_dir() and time.time() < deadline:
            time.sleep(0.05)
        for i in range(20):
            write_npz_tile(spool / "incoming" / f".w{i}.npz", seed=i).rename(spool / "incoming" / f"s{i}.npz")
        while len(os.listdir(spool / "done")) < 5 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines[-1]["msg"] == "stopped"
    done = {p.removesuffix(".npz") for p in os.listdir(spool / "done")}
    left = {p.removesuffix(".npz") for p in os.listdir(spool / "incoming")}
    assert done | left == {f"s{i}" for i in range(20)} and not done & left
    assert set(read_results(spool)) == done  # nothing moved without its result


@pytest.mark.parametrize("batch", [1, 5])
def test_batching_respects_batch_size(tmp_path, tiny_onnx, batch):
    spool = tmp_path / "spool"
    for i in range(7):
        write_npz_tile(spool / "incoming" / f"b{i}.npz", seed=i)
    daemon = serve_once(tiny_onnx, spool, batch=batch, max_wait_ms=200)
    c = daemon.metrics.counters
    assert c["patches"] == 7 and c["tiles_done"] == 7
    assert c["batches"] >= -(-7 // batch)


def test_real_exported_model_serves_benv2_tiles(tmp_path, real_tiny_export, benv2_root):
    """The export stage's artefact (manifest + ONNX with contract metadata) via open_runner and the daemon."""
    from mosaic_edge.edge_runtime.runner import open_runner

    spool = tmp_path / "spool"
    copy_benv2_tile(benv2_root, 1, spool / "incoming" / "real")
    write_npz_tile(spool / "incoming" / "syn.npz", 24, 24, seed=4)
    serve_once(real_tiny_export, spool, batch=16)
    res = read_results(spool)
    assert len(res["real"]) == 25 and len(res["syn"]) == 1
    runner = open_runner(real_tiny_export, kind="ort", device="cpu")
    assert runner.model_path.name == "model.onnx" and res["syn"][0]["model_hash"] == runner.model_hash
    assert runner.contract.input_form == "raw"  # exports standardise in the graph by default
    sar, opt = raw_tile(24, 24, 4)
    want = _direct_scores(runner.model_path, runner.contract, sar, opt)
    got = [res["syn"][0]["scores"][c] for c in runner.contract.classes]
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("inotify_importable", [True, False])
def test_new_tiles_are_noticed_with_inotify_or_polling(tmp_path, tiny_onnx, monkeypatch, inotify_importable):
    import threading

    from mosaic_edge.edge_runtime.runner import open_runner
    from mosaic_edge.edge_runtime.spool import IncomingWatcher

    if not inotify_importable:
        monkeypatch.setitem(sys.modules, "inotify_simple", None)  # import fails -> polling fallback
    spool = tmp_path / "spool"
    daemon = Daemon(open_runner(tiny_onnx, kind="ort", threads=1), spool,
                    ServeConfig(settle_s=0.5, poll_s=0.2, max_wait_ms=5))
    assert (IncomingWatcher(tmp_path, True).ino is not None) == inotify_importable
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.time() + 30
        while not (spool / "incoming").is_dir():
            time.sleep(0.02)
        tile = write_npz_tile(spool / "incoming" / "late.npz")  # no marker: taken after settle_s quiet time
        time.sleep(0.2)
        assert tile.exists()  # not yet settled
        while not (spool / "done" / "late.npz").exists():
            assert time.time() < deadline
            time.sleep(0.02)
        write_npz_tile(spool / "incoming" / "marked.npz")
        (spool / "incoming" / "marked.npz.ready").touch()  # marker: taken at once
        while not (spool / "done" / "marked.npz").exists():
            assert time.time() < deadline
            time.sleep(0.02)
        assert not (spool / "incoming" / "marked.npz.ready").exists()
    finally:
        daemon.stop()
        thread.join(30)
    assert set(read_results(spool)) == {"late", "marked"}


def test_raw_and_standardised_exports_of_one_model_give_the_same_results(tmp_path, real_tiny_export, benv2_root):
    """The host hands each artefact the form its contract names; a raw export answers like the standardised one."""
    import shutil

    from mosaic_edge.export.raw_inputs import standardised_names
    from mosaic_edge.manifest import Manifest

    std = tmp_path / "std"
    shutil.copytree(real_tiny_export, std)
    manifest = Manifest.load(std)
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(std / "model.onnx"))  # strip the prologue: the graph as export checked it
    inner = standardised_names(manifest.contract)
    keep = [n for n in proto.graph.node if not n.name.startswith("raw_inputs/")]
    for node in keep:
        for i, name in enumerate(node.input):
            node.input[i] = next((k for k, v in inner.items() if v == name), name)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    from mosaic_edge.export.onnx_export import set_contract_metadata

    set_contract_metadata(proto, manifest.contract.replace(input_form="standardised"))
    onnx.save(proto, str(std / "model.onnx"))
    Manifest.create(manifest.contract.replace(input_form="standardised"), std).with_artefact(
        "model.onnx", "fp32", "any").save()
    results = {}
    for name, model in (("raw", real_tiny_export), ("std", std)):
        spool = tmp_path / f"spool-{name}"
        copy_benv2_tile(benv2_root, 3, spool / "incoming" / "real")
        sar, opt = raw_tile(48, 48, 9)
        sar[0, 5, 5] = np.nan
        opt[:, 7, 7] = 0
        from mosaic_edge.tile_format import write_tile

        write_tile(spool / "incoming" / "syn.npz", sar, opt)
        serve_once(model, spool, batch=7, readers=2)
        results[name] = read_results(spool)
    for tile in ("real", "syn"):
        raw = np.array([[r["scores"][c] for c in sorted(r["scores"])] for r in results["raw"][tile]])
        ref = np.array([[r["scores"][c] for c in sorted(r["scores"])] for r in results["std"][tile]])
        np.testing.assert_allclose(raw, ref, atol=2e-6)
        assert [r["head"] for r in results["raw"][tile]] == [r["head"] for r in results["std"][tile]]
