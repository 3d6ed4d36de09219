"""``mosaic-edge profile`` on CPU with ONNX Runtime on a tiny export: JSON schema, stage sums, PNG, table."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.cli import main
from mosaic_edge.edge_runtime.profile_report import (
    CONFIG_KEYS,
    STAT_KEYS,
    accuracy_for,
    plot_profile,
    render_table,
    validate_profile,
)
from mosaic_edge.edge_runtime.profiling import STAGES


def _report(export: Path) -> None:
    """A report.json shaped like the export stage's (export/report.py build_report)."""
    row = {"precision": "int8", "target": "cpu", "macro_map": 0.61, "micro_map": 0.70,
           "macro_map_delta_pts": -0.4, "agreement": 0.98, "max_prob_diff": 0.03, "per_class_ap": {}}
    ref = {**row, "precision": "fp32", "target": "any", "macro_map": 0.614, "macro_map_delta_pts": 0.0,
           "agreement": 1.0, "max_prob_diff": 0.0}
    report = {"schema": 1, "gate": {"set": "synthetic-test", "passed": True},
              "datasets": {"synthetic-test": {"n": 64, "artefacts": {"model.onnx": ref,
                                                                      "model.int8-cpu.onnx": row}}}}
    (export / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def profiled(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    export = tmp_path_factory.mktemp("export_with_report")
    shutil.copytree(tiny_export, export, dirs_exist_ok=True)
    _report(export)
    out = tmp_path_factory.mktemp("profile_out")
    with pytest.raises(SystemExit) as exc:  # typer exits 0 after a command
        main(["profile", str(export), "--runner", "ort", "--batch", "1,3", "--precision", "fp32,int8",
              "--iterations", "4", "--warmup", "1", "--threads", "1", "--out", str(out)])
    assert exc.value.code == 0
    return json.loads((out / "profile.json").read_text()), out


def test_profile_json_schema(profiled):
    doc, out = profiled
    validate_profile(doc)
    assert doc["stages"] == list(STAGES)
    configs = doc["configurations"]
    assert [(c["precision"], c["batch"]) for c in configs] == [("fp32", 1), ("fp32", 3), ("int8", 1),
                                                                ("int8", 3)]
    for c in configs:
        assert set(CONFIG_KEYS) <= set(c)
        assert c["runner"] == "ort"
        assert len(c["artefact_sha256"]) == 64
        for stage in STAGES:
            assert set(STAT_KEYS) <= set(c["stages"][stage])
        assert c["end_to_end"]["n"] == 4
        assert c["throughput_tiles_s"] > 0 and c["throughput"]["tiles"] == 4 * c["batch"]
        assert c["environment"]["runner"]["threads"] == 1
        assert c["power"] is None and c["energy_per_tile_mj"] is None  # no tegrastats here
    # the CPU runner takes the CPU INT8 artefact, never the TensorRT Q/DQ one
    picked = {c["precision"]: c["artefact"] for c in configs}
    assert picked == {"fp32": "model.onnx", "int8": "model.int8-cpu.onnx"}
    assert configs[2]["accuracy"]["sets"]["synthetic-test"]["macro_map_delta_pts"] == -0.4
    env = doc["environment"]
    assert env["versions"]["onnxruntime"] and env["cpu"]["usable_threads"] >= 1
    assert doc["settings"]["iterations"] == 4
    assert (out / "profile.png").stat().st_size > 1000 and doc["png"] == "profile.png"


def test_stage_times_add_up_to_end_to_end(profiled):
    doc, _ = profiled
    for c in doc["configurations"]:
        samples = c["samples_ms"]
        totals = np.asarray(samples["end_to_end"])
        staged = np.sum([samples[s] for s in STAGES], axis=0)
        # stages are disjoint slices of the iteration: never more than it ...
        assert np.all(staged <= totals * 1.001 + 1e-3)
        # ... and only bookkeeping outside them (median: a loaded machine may preempt any one iteration)
        gap = float(np.median(totals - staged))
        assert gap <= max(1.0, 0.05 * float(np.median(totals))), (c["precision"], c["batch"], totals, staged)
        # host-resident ORT: no copies
        assert c["stages"]["h2d"]["p99_ms"] == 0.0 and c["stages"]["d2h"]["p99_ms"] == 0.0
        # every host stage is a pipeline function timed as itself
        assert all(c["stages"][s]["p50_ms"] > 0 for s in ("read", "verify", "prepare", "cut", "postprocess"))
        assert c["stages"]["inference"]["p50_ms"] > 0 and c["stages"]["write"]["p50_ms"] > 0


def test_table_lists_every_configuration(profiled, capsys):
    doc, _ = profiled
    table = render_table(doc)
    lines = table.splitlines()
    assert "e2e p50" in lines[1] and "tiles/s" in lines[1] and "interleaved in 4 rounds" in lines[0]
    assert sum(1 for ln in lines if ln.split()[:1] == ["ort"]) == 8  # medians, then the p10-p90 spread
    spread = lines[lines.index(next(ln for ln in lines if ln.startswith("spread"))) + 3:][:4]
    assert all(len(ln.split()) == 3 + len(STAGES) + 2 for ln in spread)
    assert "model.int8-cpu.onnx" in table and "-0.40" in table


def test_configurations_take_turns_in_rounds(tiny_export, tmp_path, monkeypatch):
    """Rounds interleave the configurations, so drifting load cannot favour the one that ran first."""
    from mosaic_edge.edge_runtime import runner as runner_mod
    from mosaic_edge.edge_runtime.profile_run import ProfileConfig, run_profile

    calls: list[str] = []
    real_open = runner_mod.open_runner

    def logging_open(*args, **kw):
        r = real_open(*args, **kw)
        real_infer = r.infer
        r.infer = lambda batch: (calls.append(r.precision), real_infer(batch))[1]
        return r

    monkeypatch.setattr(runner_mod, "open_runner", logging_open)
    doc = run_profile(ProfileConfig(model=tiny_export, precisions=("fp32", "int8"), batches=(1,),
                                    iterations=4, warmup=0, rounds=2, threads=1), tmp_path)
    blocks = [p for i, p in enumerate(calls) if i == 0 or calls[i - 1] != p]
    # round 1: fp32 then int8; round 2 starts with int8 (the order rotates), then fp32 again
    assert blocks == ["fp32", "int8", "fp32"]
    for c in doc["configurations"]:
        assert c["end_to_end"]["n"] == 4 and len(c["throughput"]["rounds_tiles_s"]) == 2
        assert c["stages"]["read"]["p10_ms"] <= c["stages"]["read"]["p90_ms"]


def test_png_is_skipped_with_a_note_without_matplotlib(profiled, tmp_path, monkeypatch):
    doc, _ = profiled
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    note = plot_profile(doc, tmp_path / "p.png")
    assert note is not None and "mosaic-edge[plot]" in note
    assert not (tmp_path / "p.png").exists()


def test_schema_validation_rejects_broken_documents(profiled):
    doc, _ = profiled
    broken = json.loads(json.dumps(doc))
    del broken["configurations"][1]["throughput_tiles_s"]
    with pytest.raises(ValueError, match="configuration 1"):
        validate_profile(broken)
    broken = json.loads(json.dumps(doc))
    broken["configurations"][0]["stages"]["read"]["p90_ms"] = -1.0
    with pytest.raises(ValueError, match="read"):
        validate_profile(broken)


def test_accuracy_lookup_without_report(tiny_export):
    assert accuracy_for(tiny_export, "model.onnx") is None


def test_user_errors_exit_2(tiny_export, tmp_path, capsys):
    for args in (["--batch", "1,x"], ["--precision", "fp8"], ["--runner", "tpu"]):
        with pytest.raises(SystemExit) as exc:
            main(["profile", str(tiny_export), *args, "--out", str(tmp_path)])
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # one file cannot be compared across precisions
        main(["profile", str(tiny_export / "model.onnx"), "--precision", "fp32,int8",
              "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "mosaic-edge: error:" in capsys.readouterr().err


class _TrtLike:
    """Stands in for the TensorRT runner: no ``model_path``, reports CUDA-event copy/device times."""

    kind = "trt"

    def __init__(self, inner, precision):
        self.inner, self.precision = inner, precision
        self.contract, self.model_hash = inner.contract, inner.model_hash
        self.last_timings = None

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        self.inner.__exit__(*exc)

    def input_buffers(self, rows):
        return self.inner.input_buffers(rows)

    def infer(self, batch):
        out = self.inner.infer(batch)
        time.sleep(0.001)  # a device call outlasts its copies; the tiny ONNX model alone can take < 0.07 ms
        self.last_timings = {"h2d_ms": 0.05, "d2h_ms": 0.02, "device_ms": 0.1}
        return out

    def describe(self):
        return {"kind": self.kind, "precision": self.precision}


def test_trt_path_splits_copies_and_names_the_tensorrt_artefact(tiny_export, tmp_path, monkeypatch):
    from mosaic_edge.edge_runtime import runner as runner_mod
    from mosaic_edge.edge_runtime.profile_run import ProfileConfig, run_profile

    real_open = runner_mod.open_runner

    def fake_open(model, kind="auto", precision=None, **kw):
        assert kind == "trt"
        return _TrtLike(real_open(model, kind="ort", precision="fp32", threads=1), precision)

    monkeypatch.setattr(runner_mod, "open_runner", fake_open)
    doc = run_profile(ProfileConfig(model=tiny_export, runner="trt", precisions=("int8",), batches=(2,),
                                    iterations=3, warmup=1), tmp_path)
    validate_profile(doc)
    (cfg,) = doc["configurations"]
    assert cfg["runner"] == "trt" and cfg["artefact"] == "model.int8.onnx"  # the TensorRT Q/DQ one
    assert cfg["stages"]["h2d"]["p50_ms"] == pytest.approx(0.05)
    assert cfg["stages"]["d2h"]["p50_ms"] == pytest.approx(0.02)
    assert cfg["device"]["p50_ms"] == pytest.approx(0.1)
    assert not any("no copy or device times" in n for n in doc["notes"])


def test_synthetic_profile_tiles_are_benchmark_patches_not_noise(tmp_path):
    from mosaic_edge.contract import S2_BANDS
    from mosaic_edge.edge_runtime.profile_run import write_synthetic_tiles
    from mosaic_edge.tile_format import read_tile

    paths = write_synthetic_tiles(tmp_path / "a", patch=16, n=3, seed=1)  # 16 px: generated at 18, cropped
    again = write_synthetic_tiles(tmp_path / "b", patch=16, n=3, seed=1)
    for p, q in zip(paths, again, strict=True):
        assert p.read_bytes() == q.read_bytes()  # deterministic
    tile = read_tile(paths[0])
    assert tile.sar.shape == (2, 16, 16) and tile.optical.shape == (12, 16, 16) and tile.optical.dtype == np.uint16
    assert -40 < float(tile.sar.mean()) < 0  # backscatter in dB
    nir, red = S2_BANDS.index("B08"), S2_BANDS.index("B04")
    means = tile.optical.reshape(12, -1).mean(1)
    assert means[nir] != means[red] and means.std() > 50  # land-cover spectra, not one noise level
