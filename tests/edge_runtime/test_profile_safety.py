"""``mosaic-edge profile`` with the INT8 safety net: the drift stage, INT8 measured without and with its fallback,
the share re-run and the throughput cost."""

from __future__ import annotations

import json

import pytest

from mosaic_edge.cli import main
from mosaic_edge.edge_runtime.profile_report import render_table, validate_profile
from mosaic_edge.edge_runtime.profile_run import ProfileConfig, run_profile
from tests.support.runtime import tiny_contract, write_npz_tile, write_safety_export


@pytest.fixture(scope="module")
def safety_profile_export(tmp_path_factory):
    return write_safety_export(tmp_path_factory.mktemp("safety_profile_export"), tiny_contract(), margin=0.06,
                               shift=0.05)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiles")
    for i in range(6):
        write_npz_tile(folder / f"t{i}.npz", 32, 32, seed=i)
    return folder


def test_int8_is_measured_without_and_with_its_fallback(safety_profile_export, tiles, tmp_path):
    doc = run_profile(ProfileConfig(model=safety_profile_export, precisions=("fp32", "int8"), batches=(2,),
                                    iterations=4, warmup=1, rounds=2, threads=1, tiles=tiles), tmp_path)
    validate_profile(doc)
    configs = doc["configurations"]
    assert [(c["precision"], c["fallback"]) for c in configs] == [("fp32", False), ("int8", False), ("int8", True)]
    for c in configs:
        assert c["stages"]["drift"]["p50_ms"] > 0  # the export has an envelope: every configuration checks drift
        assert c["safety"]["windows"] > 0 and 0 <= c["safety"]["drifted_fraction"] <= 1
    plain, fb = configs[1], configs[2]
    assert plain["stages"]["fallback"]["p50_ms"] < fb["stages"]["fallback"]["p50_ms"]
    assert "rerun_fraction" not in plain["safety"] and plain["safety"]["fallback"] is None
    assert 0 < fb["safety"]["rerun_fraction"] <= 1 and fb["safety"]["fallback"]["precision"] == "fp32"
    assert fb["safety"]["throughput_cost"] == pytest.approx(fb["throughput_tiles_s"] / plain["throughput_tiles_s"])
    table = render_table(doc)
    assert "int8+fp32" in table
    line = next(ln for ln in table.splitlines() if ln.startswith("safety net ort int8+fp32 batch 2"))
    assert f"{100 * fb['safety']['rerun_fraction']:.1f}% re-run with fp32" in line
    assert f"throughput {fb['safety']['throughput_cost']:.2f}x of int8 without the fallback" in line


def test_no_fallback_profiles_int8_alone(safety_profile_export, tiles, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["profile", str(safety_profile_export), "--precision", "int8", "--batch", "1", "--iterations", "2",
              "--warmup", "0", "--rounds", "1", "--threads", "1", "--tiles", str(tiles), "--no-fallback",
              "--out", str(out)])
    assert exc.value.code == 0
    doc = json.loads((out / "profile.json").read_text())
    assert [c["fallback"] for c in doc["configurations"]] == [False]
    assert doc["settings"]["fallback"] is False
