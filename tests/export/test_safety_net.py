"""Export of the INT8 safety net: calibration from deployment data (--calib-data), the envelope and fallback
policy in the manifest, the trade-off in the report; and the gate set topped up when the export data is small."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from mosaic_edge.errors import UserError  # noqa: E402
from mosaic_edge.export.calib_data import open_calibration_source  # noqa: E402
from mosaic_edge.export.gate import GATE_MIN_PATCHES  # noqa: E402
from mosaic_edge.export.pipeline import INT8_CPU, INT8_TRT, ExportConfig, run_export  # noqa: E402
from mosaic_edge.manifest import Manifest  # noqa: E402
from tests.support.runtime import write_npz_tile  # noqa: E402


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of spool tiles as a field station would collect: 3 tiles of 48 x 48 px (4 windows of 24 px)."""
    folder = tmp_path_factory.mktemp("tiles")
    for i in range(3):
        write_npz_tile(folder / f"tile{i}.npz", 48, 48, seed=10 + i)
    (folder / "tile0.ready").touch()
    return folder


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiles: Path,
               benv2_root: Path) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("calib-data")
    lines: list[str] = []
    run_export(tiny_checkpoint, out, ExportConfig(int8=True, calib_method="minmax", calib_size=40,
                                                  calib_data=(str(tiles), str(benv2_root)), eval_limit=64,
                                                  parity_limit=8, max_map_drop_pts=5.0), progress=lines.append)
    return out, lines


def test_calib_data_is_drawn_across_sources_and_reported(calibrated: tuple[Path, list[str]],
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    out, lines = calibrated
    report = json.loads((out / "report.json").read_text())
    sources = {d["source"]: (d["available"], d["drawn"]) for d in report["calibration"]["sources"]}
    # 12 tile windows (all taken), the rest from the 24 real pairs cut into 25 windows of 24 px each
    tiles = next(iter(sources))
    assert tiles.endswith("(tiles)") and sources == {tiles: (12, 12), "benv2-mini": (600, 28)}
    assert report["calibration"]["n"] == 40
    md = (out / "report.md").read_text()
    assert "## Calibration set" in md and "| benv2-mini | 600 | 28 |" in md
    manifest = Manifest.load(out)
    assert manifest.calibration["sources"] == report["calibration"]["sources"]
    # ONNX Runtime's print()/logging chatter replaced by one line of ours
    assert not any("Collecting tensor data" in line for line in lines)
    assert any(line.startswith("INT8: minmax calibration on 40 patches") for line in lines)


def test_manifest_carries_envelope_ranges_and_fallback_policy(calibrated: tuple[Path, list[str]]) -> None:
    out, _ = calibrated
    m = Manifest.load(out)
    env = m.envelope
    assert env is not None and env.n_windows == 40 and env.bands[:2] == ("VV", "VH")
    lo, hi = env.bounds()
    assert (lo[:2] > -60).all() and (hi[:2] < 20).all()  # dB, not standardised values
    assert (hi[2:] > 100).all()  # reflectance x 1e4
    # the quantized tensor fed by the ``sar`` input -- in a raw-input artefact its standardised form -- itself,
    # or its fp16 Cast on the TensorRT fp16 base
    sar_tensor = {}
    for name in (INT8_TRT, INT8_CPU):
        graph = onnx.load(str(out / name)).graph
        casts = [n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] == "sar_standardised"]
        sar_tensor[name] = casts[0] if casts else "sar_standardised"
        art = m.artefacts[name]
        assert art.fallback is not None and art.fallback.margin_logit >= 0
        assert sar_tensor[name] in art.calibrated_ranges and "sar" not in art.calibrated_ranges
        assert all(lo < hi for lo, hi in art.calibrated_ranges.values())
    assert m.artefacts["model.onnx"].fallback is None and not m.artefacts["model.onnx"].calibrated_ranges
    trt = m.artefacts[INT8_TRT].calibrated_ranges[sar_tensor[INT8_TRT]]
    assert trt[0] == pytest.approx(-trt[1] * 128 / 127, rel=1e-6)  # symmetric int8: zero point 0


def test_report_shows_the_fallback_trade_off(calibrated: tuple[Path, list[str]]) -> None:
    out, _ = calibrated
    report = json.loads((out / "report.json").read_text())
    fb = report["fallback"]
    assert fb["png"] == "fallback.png" and (out / "fallback.png").stat().st_size > 1000
    assert fb["tuning_sets"][0] == "synthetic-validation" and len(fb["tuning_sets"]) == 3
    for name in (INT8_TRT, INT8_CPU):
        art = fb["artefacts"][name]
        margin = art["policy"]["margin_logit"]
        assert art["set_by"] in fb["tuning_sets"]
        for set_name, rows in art["tables"].items():
            assert [r["rerun_fraction"] for r in rows] == sorted(r["rerun_fraction"] for r in rows)
            chosen = [r for r in rows if r["margin_logit"] == margin]
            assert len(chosen) == 1 and chosen[0]["agreement"] >= fb["target_agreement"], set_name
        # the margin is the largest of the per-set minima: on the set that decided it, every smaller one misses
        assert all(r["agreement"] < fb["target_agreement"] for r in art["tables"][art["set_by"]]
                   if r["margin_logit"] < margin)
        val = art["sets"]["synthetic-validation"]
        assert val["agreement"] >= fb["target_agreement"] and val["agreement"] >= val["int8_agreement"]
        # checked on the test part, and on windows of each calibration source: the 12 tile windows all went
        # into the calibration set (in-sample), 572 real windows were left for a held-out check
        names = set(art["sets"])
        assert {"synthetic-test", "benv2-mini (held-out windows)"} <= names
        assert any(n.endswith("(tiles) (calibration windows)") for n in names)
        assert art["sets"]["benv2-mini (held-out windows)"]["n"] == 256
    md = (out / "report.md").read_text()
    assert "## Borderline fallback" in md and "(chosen)" in md and "| margin (logit) | re-run | agreement |" in md


def test_gate_set_is_topped_up_with_synthetic_patches_when_the_source_is_small(
        tmp_path: Path, tiny_checkpoint: Path, benv2_root: Path) -> None:
    result = run_export(tiny_checkpoint, tmp_path, ExportConfig(int8=True, calib_method="minmax", calib_size=8,
                                                                data=str(benv2_root), parity_limit=8))
    gate = result.report["gate"]
    assert gate["n"] == GATE_MIN_PATCHES
    real = {k: v for k, v in gate["composition"].items() if k.startswith("benv2-mini/")}
    assert real == {"benv2-mini/validation": 6, "benv2-mini/test": 6}
    assert gate["composition"]["synthetic/validation"] + gate["composition"]["synthetic/test"] == 288
    md = (tmp_path / "report.md").read_text()
    assert "6 from benv2-mini/validation" in md and "from synthetic/test" in md
    # the calibration set came from the 6 real training pairs: said as a warning, in the report too
    assert any("only 6 patches" in w for w in result.warnings)
    assert result.report["warnings"] == list(result.warnings)


def test_calib_data_refuses_what_it_cannot_open(tmp_path: Path, contract) -> None:
    with pytest.raises(UserError, match="neither 'synthetic' nor an existing folder"):
        open_calibration_source(str(tmp_path / "nope"), contract)
    with pytest.raises(UserError, match="no tiles"):
        open_calibration_source(str(tmp_path), contract)
    with pytest.raises(UserError, match="exclude each other"):
        ExportConfig(calib_file="c.npz", calib_data=("synthetic",))
    name, src = open_calibration_source("synthetic", contract)
    assert name == "synthetic" and len(src) == 3000 and np.isfinite(src.read(0).sar["VV"]).all()


def test_cli_calibrates_on_tiles_and_prints_progress_and_warnings(tmp_path: Path, tiny_checkpoint: Path,
                                                                  tiles: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    from mosaic_edge.cli import main

    out = tmp_path / "out"
    try:
        main(["export", str(tiny_checkpoint), "--out", str(out), "--int8", "--calib-method", "minmax",
              "--calib-data", str(tiles), "--eval-limit", "32", "--max-map-drop", "5"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    captured = capfd.readouterr()
    err = captured.err.splitlines()
    assert any(line.startswith("INT8: minmax calibration on 12 patches") for line in err)
    assert "warning: calibration set: only 12 patches" in captured.err  # and the gate on 32 patches:
    assert "warning: INT8 gate inconclusive" in captured.err
    assert "Collecting tensor data" not in captured.out + captured.err
    assert "Please consider" not in captured.out + captured.err
    report = json.loads((out / "report.json").read_text())
    assert [d["drawn"] for d in report["calibration"]["sources"]] == [12]
