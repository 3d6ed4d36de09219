"""TensorRT engine builder, tested against a call-recording stand-in of tensorrt (no TensorRT here).

What is checked without TensorRT: profile shapes, the strongly typed flag, version gates (packaging.version),
per-node parser errors, workspace limit, timing cache round trip, the manifest, and the install-route error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from mosaic_edge.errors import OptionalDependencyError, UserError
from mosaic_edge.export.trt import (
    BatchRange,
    EngineManifest,
    build_engine,
    check_build_supported,
    guess_precision,
    manifest_path,
    profile_shapes,
)
from tests.support import fake_trt


@pytest.fixture
def trt10(monkeypatch: pytest.MonkeyPatch):
    mod = fake_trt.make_trt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    p = tmp_path / "model.int8.onnx"
    p.write_bytes(b"onnx-bytes")
    return p


def test_profile_shapes_batch_axis_only() -> None:
    shapes = profile_shapes({"sar": (-1, 2, 120, 120), "optical": (-1, 12, 120, 120)}, BatchRange(1, 8, 32))
    assert shapes["sar"] == ((1, 2, 120, 120), (8, 2, 120, 120), (32, 2, 120, 120))
    assert shapes["optical"][2] == (32, 12, 120, 120)


@pytest.mark.parametrize(
    ("shape", "match"), [((-1, 2, -1, 120), "dynamic non-batch"), ((4, 2, 8, 8), "fixed batch")]
)
def test_profile_shapes_refuses(shape: tuple, match: str) -> None:
    with pytest.raises(UserError, match=match):
        profile_shapes({"sar": shape}, BatchRange(1, 8, 32))


@pytest.mark.parametrize("bad", [(0, 1, 1), (4, 2, 8), (1, 8, 4)])
def test_batch_range_validated(bad: tuple) -> None:
    with pytest.raises(UserError):
        BatchRange(*bad)


def test_missing_tensorrt_names_the_install_routes(onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails like an absent package
    with pytest.raises(OptionalDependencyError) as info:
        build_engine(onnx_file, onnx_file.with_suffix(".engine"))
    msg = str(info.value)
    assert "mosaic-edge[trt]" in msg and "JetPack" in msg


def test_build_int8_strongly_typed_with_profile_workspace_and_timing_cache(
    trt10, onnx_file: Path, tmp_path: Path
) -> None:
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"old")
    out = tmp_path / "e" / "model.engine"
    m = build_engine(
        onnx_file,
        out,
        precision="int8",
        min_batch=1,
        opt_batch=4,
        max_batch=16,
        workspace_mb=256,
        timing_cache=tc,
        gpu_name="Orin",
    )
    b = trt10.last_builder
    assert b.network.flags == 1 << int(trt10.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert b.config.flags == set()  # strongly typed: no precision flags
    assert b.config.pool[trt10.MemoryPoolType.WORKSPACE] == 256 << 20
    assert b.config.profiles[0].shapes["optical"] == ((1, 12, 8, 8), (4, 12, 8, 8), (16, 12, 8, 8))
    assert tc.read_bytes() == b"old+tuned"  # read, handed to the builder, written back
    assert out.read_bytes().startswith(b"ENGINE:")
    assert m.trt_version == "10.3.0" and m.gpu_name == "Orin" and m.precision == "int8" and m.strongly_typed
    assert m.profile["sar"] == [[1, 2, 8, 8], [4, 2, 8, 8], [16, 2, 8, 8]]
    on_disk = EngineManifest.from_json(manifest_path(out).read_text())
    assert on_disk == m and len(m.model_sha256) == 64 and len(m.engine_sha256) == 64
    assert set(json.loads(m.to_json())) >= {"model_sha256", "trt_version", "gpu_name", "precision", "profile"}


def test_fp16_from_fp32_onnx_uses_the_fp16_flag_on_trt10(trt10, onnx_file: Path, tmp_path: Path) -> None:
    m = build_engine(onnx_file, tmp_path / "x.engine", precision="fp16", onnx_precision="fp32")
    assert trt10.last_builder.network.flags == 0 and not m.strongly_typed
    assert trt10.last_builder.config.flags == {trt10.BuilderFlag.FP16}


def test_legacy_calib_cache_path_on_trt10(trt10, onnx_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "calib.cache"
    cache.write_text("TRT-100300-EntropyCalibration2\nsar: 3f000000\n")
    build_engine(onnx_file, tmp_path / "x.engine", precision="int8", calib_cache=cache)
    cfg = trt10.last_builder.config
    assert trt10.BuilderFlag.INT8 in cfg.flags and trt10.last_builder.network.flags == 0
    assert cfg.int8_calibrator.read_calibration_cache() == cache.read_bytes()
    assert cfg.int8_calibrator.get_batch(["sar"]) is None  # replays the cache, never calibrates
    assert cfg.calibration_profile is cfg.profiles[0]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"calib_cache": "c"}, "legacy calibration cache"),
        ({"onnx_precision": "fp32"}, "fp16 build of an fp32 ONNX"),
    ],
)
def test_trt11_refuses_weak_typing_before_building(
    kw: dict, match: str, onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt11 = fake_trt.make_trt("11.0.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt11)
    precision = "int8" if "calib_cache" in kw else "fp16"
    with pytest.raises(UserError, match=match):
        build_engine(onnx_file, tmp_path / "x.engine", precision=precision, **kw)
    assert trt11.calls == []


def test_trt11_strongly_typed_int8_builds(
    onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt11 = fake_trt.make_trt("11.0.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt11)
    m = build_engine(onnx_file, tmp_path / "x.engine", precision="int8")
    assert m.strongly_typed and trt11.calls[-1] == ("build_serialized_network", 2)


def test_version_gate_compares_versions_not_strings() -> None:
    # "9.x" > "11.0" as strings; packaging.version gets it right
    check_build_supported(Version("9.2.0"), "int8", "fp32", Path("calib.cache"))
    check_build_supported(Version("10.13.0"), "fp16", "fp32", None)
    with pytest.raises(UserError):
        check_build_supported(Version("11.0.0"), "fp16", "fp32", None)
    with pytest.raises(UserError, match="Q/DQ"):
        check_build_supported(Version("10.3.0"), "int8", "fp32", None)
    with pytest.raises(UserError, match="precision"):
        check_build_supported(Version("10.3.0"), "int4", "int4", None)


def test_parser_errors_are_reported_per_node(trt10, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"bad model")
    with pytest.raises(UserError) as info:
        build_engine(bad, tmp_path / "x.engine", precision="fp32")
    msg = str(info.value)
    assert "node 3 '/enc/Foo' (FooOp): no importer for FooOp" in msg
    assert "node 7 '/head/Bar' (BarOp): unsupported attribute" in msg


def test_failed_build_is_a_clear_error(trt10, onnx_file: Path, tmp_path: Path) -> None:
    trt10.Builder.fail = True
    with pytest.raises(UserError, match="failed to build"):
        build_engine(onnx_file, tmp_path / "x.engine", precision="int8")
    assert not (tmp_path / "x.engine").exists()


def test_guess_precision() -> None:
    assert guess_precision("out/model.int8.onnx") == "int8"
    assert guess_precision("out/model.fp16.onnx") == "fp16"
    assert guess_precision("out/model.onnx") == "fp32"
    assert guess_precision("out/model.onnx", calib_cache="calib.cache") == "int8"
    with pytest.raises(UserError, match="CPU INT8"):
        guess_precision("out/model.int8-cpu.onnx")


def test_cli_without_tensorrt_prints_install_route(
    onnx_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mosaic_edge.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(SystemExit) as info:
        main(["build-engine", str(onnx_file)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "mosaic-edge[trt]" in err and "JetPack" in err and "Traceback" not in err


def test_cli_builds_with_fake_tensorrt(trt10, onnx_file: Path, tmp_path: Path, capsys) -> None:
    from mosaic_edge.cli import main

    out = tmp_path / "m.engine"
    with pytest.raises(SystemExit) as info:
        main(["build-engine", str(onnx_file), "--out", str(out), "--max-batch", "4", "--opt-batch", "2"])
    assert info.value.code == 0
    assert out.is_file() and manifest_path(out).is_file()
    assert "int8" in capsys.readouterr().out
    assert trt10.last_builder.config.profiles[0].shapes["sar"][2] == (4, 2, 8, 8)
