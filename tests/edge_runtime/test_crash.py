"""Crash test (issues 5 and 7): SIGKILL the daemon at random points over a few hundred tiles, restart several
times; every tile ends with exactly one result, none lost. Same harness as benchmarks/crash_kill.py."""

from __future__ import annotations

import json

from benchmarks import crash_kill
from mosaic_edge.edge_runtime.spool import atomic_write
from tests.support.runtime import serve_once, write_npz_tile


def test_sigkill_restart_exactly_once(tmp_path, tiny_onnx):
    report = crash_kill.run(tiny_onnx, tmp_path / "spool", tiles=200, kills=4, seed=1)
    summary = {k: v for k, v in report.items() if k != "rounds"}
    assert report["kills"] >= 3, report["rounds"]
    assert report["ok"], json.dumps(summary)
    assert report["lost"] == 0 and report["results"] == report["done"] == 200


def test_restart_moves_committed_input_without_recomputing(tmp_path, tiny_onnx):
    """The crash window between the results rename and the input move: restart only moves the input."""
    spool = tmp_path / "spool"
    tile = write_npz_tile(spool / "incoming" / "w.npz", seed=5)
    serve_once(tiny_onnx, spool)
    committed = (spool / "results" / "w.jsonl").read_bytes()
    (spool / "done" / "w.npz").rename(tile)  # as if killed right before the move
    atomic_write(spool / "results" / ".tmp-w.jsonl-dead", b"partial")  # and a temp file of a killed write
    daemon = serve_once(tiny_onnx, spool)
    assert daemon.metrics.counters["tiles_recovered"] == 1 and daemon.metrics.counters["patches"] == 0
    assert (spool / "results" / "w.jsonl").read_bytes() == committed
    assert sorted(p.name for p in (spool / "results").iterdir()) == ["w.jsonl"]
    assert (spool / "done" / "w.npz").is_file() and not tile.exists()
