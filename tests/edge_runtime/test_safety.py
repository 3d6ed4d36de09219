"""The INT8 safety net at run time: the drift flag in records, the borderline fallback with a runner pair whose
INT8 answers are shifted on purpose, batching of the re-runs, the flag that turns it off, metrics, order and
exactly-once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.edge_runtime import pipeline
from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
from mosaic_edge.edge_runtime.drift import check_windows
from mosaic_edge.edge_runtime.postprocess import SafetyFields, encode_tile, tile_records, tile_summary, to_jsonl
from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner, open_runner
from mosaic_edge.edge_runtime.safety import Reruns, SafetyNet, open_safety_net
from mosaic_edge.envelope import DriftCheck, sample
from mosaic_edge.fallback import FallbackPolicy, threshold_logits
from mosaic_edge.manifest import Manifest
from mosaic_edge.patching import cut
from mosaic_edge.tile_format import write_tile
from tests.edge_runtime.conftest import SAFETY_SHIFT
from tests.support.runtime import raw_tile, read_results, write_npz_tile, write_safety_export

SHIFT = SAFETY_SHIFT  # every INT8 logit of safety_export is the fp32 one +-SHIFT (alternating per class)


def _drifted_tile(path: Path, seed: int) -> Path:
    sar, opt = raw_tile(16, 16, seed)
    return write_tile(path, sar + 25.0, (opt.astype(np.float32) * 4).astype(np.uint16))  # another sensor's scale


def _fill_spool(spool: Path, n: int = 10, drifted: int = 2, size: int = 32) -> None:
    inc = spool / "incoming"
    for i in range(n):
        write_npz_tile(inc / f"t{i:02d}.npz", size, size, seed=i)
    for i in range(drifted):
        _drifted_tile(inc / f"d{i}.npz", 50 + i)


def _serve(model: Path, spool: Path, precision: str | None = None, fallback: bool = True,
           margin: float | None = None, **config) -> Daemon:
    runner = open_runner(model, kind="ort", device="cpu", precision=precision, threads=1)
    net = open_safety_net(model, runner, fallback, margin, threads=1)
    cfg = {"settle_s": 0.0, "poll_s": 0.05, "max_wait_ms": 5.0, "once": True, **config}
    daemon = Daemon(runner, spool, ServeConfig(**cfg), safety=net)
    assert daemon.run() == 0
    return daemon


def _logits(record: dict, classes) -> np.ndarray:
    p = np.clip(np.array([record["scores"][c] for c in classes]), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def _decisions(records: dict, classes) -> np.ndarray:
    return np.array([[c in {lab["name"] for lab in r["labels"]} for c in classes]
                     for tile in sorted(records) for r in records[tile]])


# ---- drift ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, stride", [((40, 44), None), ((40, 44), 12), ((32, 48), None)])
def test_drift_is_the_same_on_every_path(safety_export, contract, tmp_path, size, stride):
    """Cut raw windows, a scene cut batch by batch, and a standardised artefact's raw tile: one answer, equal to
    the envelope's check of the raw windows as the runtime prepares them (NaN -> band mean, no-data kept).
    Windows overlapping on the subsample grid, off it (stride 12), and tiling it exactly (32 x 48)."""
    net = SafetyNet(envelope=Manifest.load(safety_export).envelope)
    sar, opt = raw_tile(*size, 3)
    sar[1, 5, 8] = np.nan
    opt[:, 12, 4] = 0  # an L2A no-data pixel
    opt[:, 20:, :] = (opt[:, 20:, :] * 3).astype(np.uint16)  # part of the tile out of range
    path = write_tile(tmp_path / "t.npz", sar, opt)
    checks = {}
    for form in ("raw", "standardised"):
        c = contract.replace(input_form=form)
        for precut in (pipeline.PRECUT_MAX_BYTES, 0):
            files, tile = pipeline.read(path, "t")
            prepared = pipeline.prepare(tile, c)
            job = pipeline.cut(prepared, c, path.name, "x", stride, precut_max_bytes=precut)
            pipeline.drift(job, prepared, tile, c, net)
            checks[form, precut] = job.drift
    wins = job.windows
    filled = np.where(np.isfinite(sar), sar, np.asarray(contract.sar_mean, np.float32)[:, None, None])
    ref = net.envelope.check(cut(filled, wins), cut(opt.astype(np.float32), wins))
    assert ref.drifted.any() and not ref.drifted.all()
    for key, got in checks.items():
        for field in ("per_band", "combined", "distance", "drifted"):
            np.testing.assert_allclose(getattr(got, field), getattr(ref, field), rtol=1e-6, err_msg=str(key))


def test_drift_of_a_bigearthnet_folder_is_the_same_for_both_input_forms(safety_export, contract, tmp_path,
                                                                       benv2_root):
    """Per-band files at 10/20/60 m: a standardised artefact's check resamples them as prepare does."""
    from tests.support.runtime import copy_benv2_tile

    net = SafetyNet(envelope=Manifest.load(safety_export).envelope)
    path = copy_benv2_tile(benv2_root, 2, tmp_path / "real")
    checks = []
    for form in ("raw", "standardised"):
        c = contract.replace(input_form=form)
        _files, tile = pipeline.read(path, "real")
        prepared = pipeline.prepare(tile, c)
        job = pipeline.cut(prepared, c, path.name, "x")
        pipeline.drift(job, prepared, tile, c, net)
        checks.append(job.drift)
    assert job.n > 1
    for field in ("per_band", "combined", "distance", "drifted"):
        np.testing.assert_allclose(getattr(checks[0], field), getattr(checks[1], field), rtol=1e-6)


def test_windows_answered_by_the_sar_head_are_judged_on_sar_alone(safety_export):
    env = Manifest.load(safety_export).envelope
    sar, opt = raw_tile(16, 16, 1)
    sars = np.stack([sar, sar])
    bad = np.stack([opt, opt * 5]).astype(np.float32)  # window 1's optical is far out of range
    bad[0, :, 3, 4] = 0  # and window 0 has a no-data pixel
    x = sample(sars, bad, env.stride)
    mixed = check_windows(env, x, ["fused", "sar"])
    assert not mixed.drifted[1]  # its optical is never looked at: the SAR head answers it
    np.testing.assert_allclose(mixed.combined[1], env.check(sars[1:], None).combined[0])
    np.testing.assert_allclose(mixed.per_band[0], env.check(sars[:1], bad[:1]).per_band[0])
    assert check_windows(env, x, ["fused", "fused"]).drifted[1]
    assert check_windows(env, x, ["sar", "sar"]).per_band[:, 2:].max() == 0


def test_records_carry_the_drift_flag(safety_export, tmp_path, contract):
    spool = tmp_path / "spool"
    _fill_spool(spool, n=4, drifted=2)
    write_npz_tile(spool / "incoming" / "saronly.npz", seed=9, optical=False)
    _serve(safety_export, spool)  # fp32: drift flags only
    results = read_results(spool)
    in_range = []
    for tile, records in results.items():
        for r in records:
            d = r["drift"]
            assert set(d) == {"drifted", "beyond", "distance", "band"}
            assert r["answered_by"] == "fp32" and r["rerun"] is None
            if tile.startswith("d"):
                assert d["drifted"] and d["beyond"] > 0.5 and d["band"] in contract.sar_bands + contract.optical_bands
            else:
                in_range.append(d["drifted"])
    # like the calibration windows: flagged about as rarely as the threshold flags those (~1 %)
    assert len(in_range) == 16 + 1 and sum(in_range) <= 2
    assert all(r["drift"]["band"] in (None, *contract.sar_bands) for r in results["saronly"])


def test_records_without_an_envelope_say_so(tmp_path, contract):
    export = write_safety_export(tmp_path / "export", contract, envelope=False)
    spool = tmp_path / "spool"
    _fill_spool(spool, n=2, drifted=0)
    _serve(export, spool)
    assert all(r["drift"] is None for rs in read_results(spool).values() for r in rs)


def test_encoded_records_equal_the_dict_records(contract):
    from mosaic_edge.patching import windows

    wins = windows(32, 32, 16)
    n, rng = len(wins), np.random.default_rng(0)
    bands = (*contract.sar_bands, *contract.optical_bands)
    per_band = rng.uniform(0, 0.2, (n, len(bands)))
    per_band[0] = 0.0
    drift = DriftCheck(per_band, per_band.mean(axis=1), np.array([1.23456, np.nan, 7.0, 1e-7]),
                       np.array([False, True, False, True]))
    safety = SafetyFields("int8", drift, bands, np.array([False, True, True, False]), "fp32",
                          np.array([0, 3, 1, 2], np.uint8))
    scores = rng.uniform(0, 1, (n, contract.num_classes))
    extra = {"model_hash": "h", "runner": "ort", "precision": "int8", "input_sha256": "s", "timings_ms": {}}
    args = ("t", wins, ["fused"] * n, scores, contract, None, [0.0] * n, extra)
    records = tile_records(*args, safety=safety)
    summary = tile_summary(*args[:6], extra, safety=safety)
    assert encode_tile(*args, safety=safety)[0] == to_jsonl([summary, *records])
    assert summary["windows_drifted"] == 2 and summary["windows_rerun"] == 2
    assert [r["answered_by"] for r in records] == ["int8", "fp32", "fp32", "int8"]
    assert [r["rerun"] for r in records] == [None, "borderline+drifted", "borderline", "drifted"]
    assert records[0]["drift"] == {"drifted": False, "beyond": 0.0, "distance": 1.23, "band": None}
    assert records[1]["drift"]["distance"] is None
    assert "drift" not in tile_records(*args)[0]  # callers that give no safety fields get none


# ---- the fallback --------------------------------------------------------------------------------------------
def test_fallback_re_runs_borderline_windows_with_fp32(safety_export, tmp_path, contract):
    """INT8 logits are fp32's +-0.05: a margin of 0.06 must re-run every window whose decision could flip, so
    with the fallback every decision is fp32's; without it some differ."""
    runs = {}
    for name, precision, fallback in (("fp32", "fp32", True), ("int8", "int8", False), ("fb", "int8", True)):
        spool = tmp_path / name
        _fill_spool(spool)
        daemon = _serve(safety_export, spool, precision, fallback, batch=4)
        runs[name] = (read_results(spool), daemon)
    classes = contract.classes
    ref, plain, fb = (_decisions(runs[k][0], classes) for k in ("fp32", "int8", "fb"))
    assert (plain != ref).any()  # the shift flips decisions: the test has teeth
    assert (fb == ref).all()
    tau = threshold_logits(contract)
    counters = runs["fb"][1].metrics.counters
    n_fp32 = 0
    for tile, records in runs["fb"][0].items():
        for r, r32 in zip(records, runs["fp32"][0][tile], strict=True):
            assert r["precision"] == "int8"  # the artefact serving the tile
            if r["answered_by"] == "fp32":
                n_fp32 += 1
                assert r["scores"] == r32["scores"] and r["rerun"] in ("borderline", "drifted", "borderline+drifted")
            else:
                assert r["answered_by"] == "int8" and r["rerun"] is None and not r["drift"]["drifted"]
                assert np.abs(_logits(r, classes) - tau).min() > SHIFT + 0.01 - 1e-3  # far from every threshold
            if r["drift"]["drifted"]:
                assert r["answered_by"] == "fp32" and "drifted" in r["rerun"]
    assert 0 < n_fp32 < counters["patches"]
    assert counters["windows_rerun"] == n_fp32
    assert counters["windows_drifted"] >= 2  # the two drifted tiles (one window each) at least
    assert counters["fallback_batches"] < n_fp32  # batched, not one by one
    stop = runs["fb"][1].stop_fields()
    assert stop["windows_rerun_fraction"] == round(n_fp32 / counters["patches"], 4)


def test_no_fallback_flag_and_margin_override(safety_export, tmp_path):
    spool = tmp_path / "off"
    _fill_spool(spool, n=3, drifted=1)
    daemon = _serve(safety_export, spool, "int8", fallback=False)
    records = [r for rs in read_results(spool).values() for r in rs]
    assert {r["answered_by"] for r in records} == {"int8"} and {r["rerun"] for r in records} == {None}
    assert any(r["drift"]["drifted"] for r in records)  # drift flags stay
    assert daemon.metrics.counters["windows_rerun"] == 0 and daemon.safety.describe()["fallback"] is None
    spool = tmp_path / "margin0"
    _fill_spool(spool, n=3, drifted=1)
    daemon = _serve(safety_export, spool, "int8", margin=0.0)  # only drifted windows are re-run
    records = [r for rs in read_results(spool).values() for r in rs]
    assert {r["rerun"] for r in records} == {None, "drifted"}
    assert all((r["answered_by"] == "fp32") == r["drift"]["drifted"] for r in records)


def test_open_safety_net(safety_export, tmp_path, contract):
    def net_for(model, precision, **kw):
        return open_safety_net(model, open_runner(model, kind="ort", device="cpu", precision=precision, threads=1),
                               **kw)

    net = net_for(safety_export, "int8")
    assert net.fallback and net.envelope is not None
    assert isinstance(net.runner, OnnxRuntimeRunner) and net.runner.model_path.name == "model.onnx"
    assert net.runner.precision == "fp32" and net.policy == FallbackPolicy(SHIFT + 0.01)
    assert not net_for(safety_export, "fp32").fallback
    assert net_for(safety_export, "int8", margin=0.7).policy.margin_logit == 0.7
    trt_file = net_for(safety_export / "model.int8.onnx", "int8")  # a listed file: its own policy, fp32 beside it
    assert trt_file.fallback and trt_file.runner.model_path.name == "model.onnx"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "m.onnx").write_bytes((safety_export / "model.int8.onnx").read_bytes())
    lone = net_for(bare / "m.onnx", "int8")
    assert lone.envelope is None and not lone.fallback and "no export manifest" in lone.note
    no_policy = write_safety_export(tmp_path / "nopolicy", contract, margin=None)
    net = net_for(no_policy, "int8")
    assert not net.fallback and "no fallback policy" in net.note
    assert net_for(no_policy, "int8", margin=0.2).fallback  # a margin given on the command line enables it


class _Counting:
    """Wraps a runner and records the batch size of every call."""

    def __init__(self, inner, fail: bool = False):
        self.inner, self.calls, self.fail = inner, [], fail

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, batch):
        self.calls.append(len(batch["sar"]))
        if self.fail:
            raise RuntimeError("fallback engine lost")
        return self.inner.infer(batch)


def test_reruns_run_in_batches_of_up_to_the_batch_size(safety_export, tmp_path):
    """Windows flagged across several tiles share fallback batches; the records match a run without batching."""
    paths = [write_npz_tile(tmp_path / f"t{i}.npz", 32, 32, seed=i) for i in range(5)]
    results = {}
    for batch in (3, 1):
        with open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1) as r:
            net = open_safety_net(safety_export, r, threads=1)
            with net:
                net.runner = counting = _Counting(net.runner)
                reruns = Reruns(net, batch)
                jobs = [pipeline.load(p, p.stem, r.contract, net=net) for p in paths]
                for job in jobs:
                    pipeline.infer_job(r, job, 4, reruns)  # flags as it goes; nothing re-run yet
                assert reruns.counts["fallback_batches"] == 0 and reruns.n_pending > batch
                for _ in reruns.run(everything=True):
                    pass
                results[batch] = [pipeline.job_records(j, r) for j in jobs]
        flagged = reruns.counts["windows_rerun"]
        assert flagged > batch and sum(counting.calls) == flagged
        assert max(counting.calls) <= batch and len(counting.calls) == -(-flagged // batch)
        assert all(j.complete for j in jobs)
    strip = [[{k: v for k, v in rec.items() if k != "timings_ms"} for rec in recs] for recs in results[3]]
    assert strip == [[{k: v for k, v in rec.items() if k != "timings_ms"} for rec in recs] for recs in results[1]]


def test_reruns_wait_for_a_fuller_batch_only_until_the_deadline(safety_export):
    net = SafetyNet(policy=FallbackPolicy(100.0), runner=open_runner(safety_export, kind="ort", device="cpu",
                                                                      threads=1))
    reruns = Reruns(net, batch=8, max_wait_s=0.05)
    job = pipeline.Job("t", "t.npz", [None] * 3, ["fused"] * 3, np.zeros(3), "x")  # type: ignore[list-item]
    job.logits = {"logits": np.zeros((3, 19), np.float32), "logits_sar": np.zeros((3, 19), np.float32)}
    job.n_done = 3
    inputs = {"sar": np.zeros((3, 2, 16, 16), np.float32), "optical": np.zeros((3, 12, 16, 16), np.float32)}
    assert reruns.flag(job, job, np.arange(3), inputs) == 3 and not reruns.due()
    assert reruns.deadline() is not None and not job.complete
    reruns._first -= 0.06  # the oldest window has waited past max_wait
    assert reruns.due()
    reruns.discard(job)
    assert reruns.n_pending == 0 and reruns.deadline() is None


def test_tiles_are_handed_over_in_read_order(safety_export, tmp_path, monkeypatch):
    """A tile whose windows wait for the fallback holds back the tiles read after it: order is kept."""
    spool = tmp_path / "spool"
    _fill_spool(spool, n=8, drifted=3)
    runner = open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1)
    net = open_safety_net(safety_export, runner, threads=1)
    daemon = Daemon(runner, spool, ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=200, once=True, batch=2,
                                               readers=1), safety=net)
    queued, committed = [], []
    real_load, real_put = daemon._load_and_queue, daemon._committer.put

    def load(cand):
        queued.append(cand.tile_id)
        return real_load(cand)

    monkeypatch.setattr(daemon, "_load_and_queue", load)
    monkeypatch.setattr(daemon._committer, "put", lambda jobs: (committed.extend(j.tile_id for j in jobs),
                                                                real_put(jobs))[1])
    assert daemon.run() == 0
    assert committed == queued and len(committed) == 11
    assert daemon.metrics.counters["windows_rerun"] > 0


def test_a_failing_fallback_fails_only_its_tiles(safety_export, tmp_path):
    spool = tmp_path / "spool"
    _fill_spool(spool, n=4, drifted=2, size=16)
    runner = open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1)
    net = SafetyNet(Manifest.load(safety_export).envelope, FallbackPolicy(0.0),  # re-runs drifted windows only
                    _Counting(open_runner(safety_export, kind="ort", device="cpu", threads=1), fail=True))
    daemon = Daemon(runner, spool, ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=5, once=True), safety=net)
    assert daemon.run() == 0
    assert sorted(read_results(spool)) == [f"t{i:02d}" for i in range(4)]
    reasons = sorted(p.read_text() for p in (spool / "failed").glob("*.reason"))
    assert len(reasons) == 2 and all("fallback inference failed" in r for r in reasons)
    assert sorted(p.name for p in (spool / "done").iterdir()) == [f"t{i:02d}.npz" for i in range(4)]
    assert not list((spool / "incoming").iterdir())


def test_exactly_once_under_sigkill_with_the_fallback(safety_export, tmp_path):
    from benchmarks import crash_kill

    report = crash_kill.run(safety_export, tmp_path / "spool", tiles=120, kills=3, seed=2, precision="int8")
    summary = {k: v for k, v in report.items() if k != "rounds"}
    assert report["kills"] >= 2, report["rounds"]
    assert report["ok"], json.dumps(summary)
    assert report["lost"] == 0 and report["results"] == report["done"] == 120
    answered = {r["answered_by"] for rs in read_results(tmp_path / "spool").values() for r in rs}
    assert answered == {"int8", "fp32"}  # the fallback did run


def test_metrics_expose_the_safety_counters(safety_export, tmp_path):
    spool = tmp_path / "spool"
    _fill_spool(spool, n=3, drifted=1)
    daemon = _serve(safety_export, spool, "int8")
    text = daemon.metrics.render()
    c = daemon.metrics.counters
    for name in ("windows_drifted", "windows_borderline", "windows_rerun", "fallback_batches"):
        assert f"# TYPE mosaic_edge_{name}_total counter" in text or f"# TYPE mosaic_edge_{name} counter" in text
        assert f"mosaic_edge_{name}_total {float(c[name])}" in text
    assert c["windows_drifted"] > 0 and c["windows_rerun"] >= c["windows_drifted"]
    assert 'mosaic_edge_stage_seconds_count{stage="fallback"}' in text
    assert 'mosaic_edge_stage_seconds_count{stage="drift"} 4.0' in text


def test_predict_cli_uses_the_fallback_and_says_so(safety_export, tmp_path, capsys):
    from mosaic_edge.cli import main

    tiles = [write_npz_tile(tmp_path / f"p{i}.npz", 32, 32, seed=i) for i in range(3)]
    tiles.append(_drifted_tile(tmp_path / "d.npz", 60))
    outs = {}
    for flag in ("--fallback", "--no-fallback"):
        out = tmp_path / f"out{flag}.jsonl"
        with pytest.raises(SystemExit) as exc:
            main(["predict", *map(str, tiles), "--model", str(safety_export), "--runner", "ort", "--precision",
                  "int8", "--threads", "1", "--out", str(out), flag])
        assert exc.value.code == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        outs[flag] = [r for r in lines if r.get("type") != "tile"]  # the tile summaries left out
        summaries = [r for r in lines if r.get("type") == "tile"]
        assert len(summaries) == 4 and sum(r["windows_rerun"] for r in summaries) == sum(
            r["answered_by"] == "fp32" for r in outs[flag])
        err = capsys.readouterr().err
        drifted = sum(r["drift"]["drifted"] for r in outs[flag])
        assert f"13 windows, {drifted} drifted" in err and drifted >= 1
        rerun = sum(r["answered_by"] == "fp32" for r in outs[flag])
        assert (f"{rerun} re-run with fp32" in err) == (flag == "--fallback")
    assert {r["answered_by"] for r in outs["--no-fallback"]} == {"int8"}
    assert {r["answered_by"] for r in outs["--fallback"]} == {"int8", "fp32"}


def test_daemon_threads_use_both_runners_from_one_thread(safety_export, tmp_path):
    """Both runners are called from the inference thread only (a TensorRT runner pushes its context there)."""
    spool = tmp_path / "spool"
    _fill_spool(spool, n=3, drifted=1)
    runner = open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1)
    net = open_safety_net(safety_export, runner, threads=1)
    threads: set[str] = set()

    def recording(real):
        def infer(batch):
            threads.add(threading.current_thread().name)
            return real(batch)
        return infer

    for r in (runner, net.runner):
        r.infer = recording(r.infer)
    daemon = Daemon(runner, spool, ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=5, once=True), safety=net)
    assert daemon.run() == 0 and daemon.metrics.counters["windows_rerun"] > 0
    assert threads == {threading.current_thread().name}


def test_a_scene_streamed_in_pieces_gets_the_answers_of_the_tile_read_whole(safety_export, tmp_path, contract):
    """Drift checked piece by piece, re-runs of windows whose piece's memory is already gone: the daemon's records
    of a streamed scene equal predict's of the same scene read whole."""
    from tests.edge_runtime.test_tiles_scene import SMALL, _scene

    runner = open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1)
    _scene(tmp_path / "spool" / "incoming" / "scene")
    daemon = Daemon(runner, tmp_path / "spool", ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=5, once=True,
                                                            limits=SMALL, batch=8),
                    safety=open_safety_net(safety_export, runner, threads=1))
    assert daemon.run() == 0
    streamed = read_results(tmp_path / "spool")["scene"]
    with open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1) as r:
        net = open_safety_net(safety_export, r, threads=1)
        with net:
            (_path, whole, error), = pipeline.predict_paths(r, [tmp_path / "spool" / "done" / "scene"], 8, net=net)
    assert error is None
    whole = [rec for rec in whole if rec.get("type") != "tile"]
    strip = [{k: v for k, v in rec.items() if k != "timings_ms"} for rec in streamed]
    assert strip == [{k: v for k, v in rec.items() if k != "timings_ms"} for rec in whole]
    assert len(streamed) > 100 and all(rec["drift"] is not None for rec in streamed)
    assert {rec["answered_by"] for rec in streamed} == {"int8", "fp32"}
    assert daemon.metrics.counters["windows_rerun"] == sum(rec["answered_by"] == "fp32" for rec in streamed)


def test_predict_drops_the_queued_re_runs_of_a_scene_that_fails_part_way(safety_export, tmp_path, monkeypatch):
    """A scene whose later region cannot be read fails; the windows its earlier pieces queued for the fallback
    are dropped, not re-run and counted with the next tile."""
    from mosaic_edge.errors import DataError
    from tests.edge_runtime.test_tiles_scene import SMALL, _scene

    _scene(tmp_path / "scene")
    good = _drifted_tile(tmp_path / "good.npz", seed=5)
    real = pipeline.open_job

    def failing_after_one_piece(path, *a, **kw):
        job, units = real(path, *a, **kw)
        if Path(path).name != "scene":
            return job, units

        def pieces():
            yield next(iter(units))
            raise DataError("scene: a later region is unreadable")
        return job, pieces()

    monkeypatch.setattr(pipeline, "open_job", failing_after_one_piece)
    with open_runner(safety_export, kind="ort", device="cpu", precision="int8", threads=1) as r:
        net = open_safety_net(safety_export, r, threads=1)
        with net:
            reruns = Reruns(net, 8)
            out = list(pipeline.predict_paths(r, [tmp_path / "scene", good], 8, limits=SMALL, net=net,
                                              reruns=reruns))
    (_, none, error), (_, records, ok) = out
    assert none is None and "unreadable" in (error or "") and ok is None
    windows = [rec for rec in records if rec.get("type") != "tile"]
    assert reruns.counts["windows_rerun"] == sum(rec["answered_by"] == "fp32" for rec in windows)
