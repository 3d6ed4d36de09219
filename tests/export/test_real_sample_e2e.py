"""A new user's path on the real sample, default flags only: train on BigEarthNet -> export --int8 --fp16 ->
serve --once on the sample's 24 tiles -> a result for every tile -> profile the export on those tiles (the one
CPU end-to-end test of every stage)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from mosaic_edge.cli import main  # noqa: E402
from mosaic_edge.manifest import Manifest  # noqa: E402
from tests.support.runtime import REPO_ROOT, read_results  # noqa: E402


def _cli(*argv: str) -> None:
    try:
        main(list(argv))
    except SystemExit as exc:  # typer's standalone mode exits 0 on success
        assert exc.code in (0, None), f"mosaic-edge {argv[0]} exited {exc.code}"


@pytest.mark.slow
def test_train_on_real_sample_then_export_and_serve_with_default_flags(tmp_path: Path, benv2_root: Path) -> None:
    run = tmp_path / "runs" / "real"
    _cli("train", "--data", str(benv2_root), "--arch", "tiny", "--epochs", "2", "--out", str(run))
    _cli("export", str(run / "model.pt"), "--int8", "--fp16", "--out", str(run / "export"))

    report = json.loads((run / "export" / "report.json").read_text())
    assert report["export"]["data"]["data"] == str(benv2_root)  # checked against BigEarthNet, not synthetic
    gate = report["gate"]
    assert gate["set"] == "benv2-mini-validation+test" and gate["n"] >= 300 and gate["passed"]
    assert gate["composition"]["benv2-mini/validation"] == 6 and gate["composition"]["benv2-mini/test"] == 6
    assert report["calibration"]["sources"] == [{"source": "benv2-mini-train", "available": 6, "drawn": 6}]
    assert all(p["passed"] for p in report["export"]["parity"] if p["precision"] != "int8")
    manifest = Manifest.load(run / "export")
    assert manifest.envelope is not None and manifest.fallback_policy("model.int8-cpu.onnx") is not None

    spool = tmp_path / "spool"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benv2_to_spool.py"), str(benv2_root),
                    str(spool)], check=True, capture_output=True)
    _cli("serve", "--model", str(run / "export"), "--spool", str(spool), "--once", "--runner", "ort")
    results = read_results(spool)
    assert len(results) == 24 and all(records for records in results.values())
    assert not list((spool / "failed").glob("*")) and not list((spool / "incoming").glob("*"))
    served = {r["precision"] for records in results.values() for r in records}
    assert served == {"fp32"}  # ONNX Runtime's default precision

    prof = tmp_path / "profile"
    _cli("profile", str(run / "export"), "--runner", "ort", "--precision", "fp32,int8", "--batch", "2",
         "--iterations", "2", "--warmup", "1", "--rounds", "1", "--tiles", str(spool / "done"), "--out", str(prof))
    doc = json.loads((prof / "profile.json").read_text())
    rows = {(c["precision"], c["batch"]): c for c in doc["configurations"]}
    assert set(rows) == {("fp32", 2), ("int8", 2)}
    assert rows[("int8", 2)]["artefact"] == "model.int8-cpu.onnx"  # ONNX Runtime on CPU: the CPU INT8 artefact
    for row in rows.values():
        assert row["throughput_tiles_s"] > 0 and row["end_to_end"]["p50_ms"] > 0
    assert (prof / "profile.png").is_file()
