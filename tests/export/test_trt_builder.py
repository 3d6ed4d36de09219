"""TensorRT engine builder against the strict stand-in of TensorRT 8.6, 10.3 and 11.1 (tests/support/fake_trt.py).

Checked without TensorRT: network and builder flags per release (EXPLICIT_BATCH before 10, STRONGLY_TYPED from the
enum in 9/10, none in 11, INT8 + FP16 for explicit quantization on 8.6, a refusal below 8.6), profile shapes,
per-node parser errors of a malformed graph, the workspace limit, timing caches that are corrupt, truncated or
foreign, calibration caches of another TensorRT, precision taken from the export manifest, and the manifest.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import pytest
from onnx import TensorProto
from packaging.version import Version

from mosaic_edge.errors import OptionalDependencyError, UserError
from mosaic_edge.export import trt as trt_mod
from mosaic_edge.export import trt_caches
from mosaic_edge.export.trt import (
    BatchRange,
    EngineManifest,
    build_engine,
    manifest_path,
    plan_build,
    profile_shapes,
    resolve_artefact,
)
from mosaic_edge.manifest import Manifest
from mosaic_edge.trt_calib_cache import write_calib_cache
from tests.support import fake_trt
from tests.support.runtime import tiny_contract, write_tiny_onnx

DEVICE = {"name": "Orin (fake)", "compute_capability": "8.7", "sm_count": 16, "driver_version": 12020}


@pytest.fixture(params=fake_trt.VERSIONS)
def trt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    mod = fake_trt.make_trt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


@pytest.fixture
def trt10(monkeypatch: pytest.MonkeyPatch):
    mod = fake_trt.make_trt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


@pytest.fixture
def qdq_onnx(tmp_path: Path) -> Path:
    """A Q/DQ model with float32 scales (opset 17): what every TensorRT from 8.6 on can build as int8."""
    return fake_trt.write_onnx(tmp_path / "model.int8.onnx", qdq="float32")


@pytest.fixture
def fp32_onnx(tmp_path: Path) -> Path:
    return fake_trt.write_onnx(tmp_path / "model.onnx")


def _major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def test_profile_shapes_batch_axis_only() -> None:
    shapes = profile_shapes({"sar": (-1, 2, 120, 120), "optical": (-1, 12, 120, 120)}, BatchRange(1, 8, 32))
    assert shapes["sar"] == ((1, 2, 120, 120), (8, 2, 120, 120), (32, 2, 120, 120))
    assert shapes["optical"][2] == (32, 12, 120, 120)


@pytest.mark.parametrize(("shape", "match"), [((-1, 2, -1, 120), "dynamic non-batch"), ((4, 2, 8, 8), "fixed batch")])
def test_profile_shapes_refuses(shape: tuple, match: str) -> None:
    with pytest.raises(UserError, match=match):
        profile_shapes({"sar": shape}, BatchRange(1, 8, 32))


@pytest.mark.parametrize("bad", [(0, 1, 1), (4, 2, 8), (1, 8, 4)])
def test_batch_range_validated(bad: tuple) -> None:
    with pytest.raises(UserError):
        BatchRange(*bad)


def test_fake_profile_checks_min_opt_max(trt) -> None:
    profile = trt.Builder(trt.Logger()).create_optimization_profile()
    with pytest.raises(RuntimeError, match="inconsistent"):
        profile.set_shape("sar", (4, 2, 8, 8), (2, 2, 8, 8), (8, 2, 8, 8))


def test_missing_tensorrt_names_the_install_routes(qdq_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails like an absent package
    with pytest.raises(OptionalDependencyError) as info:
        build_engine(qdq_onnx, qdq_onnx.with_suffix(".engine"), "int8")
    msg = str(info.value)
    assert "mosaic-edge[trt]" in msg and "JetPack" in msg


def test_int8_from_qdq_builds_on_every_release(trt, qdq_onnx: Path, tmp_path: Path) -> None:
    """8.6: EXPLICIT_BATCH + INT8/FP16 flags, no calibrator; 10.x: STRONGLY_TYPED; 11: no flag (always typed)."""
    out = tmp_path / "e" / "model.engine"
    m = build_engine(qdq_onnx, out, "int8", min_batch=1, opt_batch=4, max_batch=16, workspace_mb=256, device=DEVICE)
    b = trt.last_builder
    flags = {f.name for f in b.config.flags}
    if _major(trt) < 9:
        assert b.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        assert flags == {"INT8", "FP16"} and b.config._calibrator is None and not m.strongly_typed
    elif _major(trt) < 11:
        assert b.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 2
        assert flags == set() and m.strongly_typed
    else:
        assert b.network.flags == 0 and flags == set() and m.strongly_typed
    assert b.config.pool[trt.MemoryPoolType.WORKSPACE] == 256 << 20
    assert b.config.profiles[0].shapes["optical"] == ((1, 12, 8, 8), (4, 12, 8, 8), (16, 12, 8, 8))
    assert m.trt_version == trt.__version__ and m.precision == m.onnx_precision == "int8"
    assert (m.gpu_name, m.compute_capability, m.sm_count, m.driver_version) == ("Orin (fake)", "8.7", 16, 12020)
    assert m.workspace_mb == 256 and m.builder_version == trt_mod.BUILDER_VERSION
    assert m.profile["sar"] == [[1, 2, 8, 8], [4, 2, 8, 8], [16, 2, 8, 8]]
    on_disk = EngineManifest.from_json(manifest_path(out).read_text())
    assert on_disk == m and len(m.model_sha256) == 64 and m.engine_sha256 and out.is_file()
    assert trt.errors == []


def test_fp16_engine_of_an_fp32_onnx(trt, fp32_onnx: Path, tmp_path: Path) -> None:
    if _major(trt) >= 11:
        with pytest.raises(UserError, match="removed weak typing.*model.fp16.onnx"):
            build_engine(fp32_onnx, tmp_path / "x.engine", "fp16", onnx_precision="fp32")
        assert trt.calls == []
        return
    m = build_engine(fp32_onnx, tmp_path / "x.engine", "fp16", onnx_precision="fp32")
    assert {f.name for f in trt.last_builder.config.flags} == {"FP16"} and not m.strongly_typed
    assert m.precision == "fp16" and m.onnx_precision == "fp32"


def test_fp32_engine_is_typed_by_the_onnx(trt, fp32_onnx: Path, tmp_path: Path) -> None:
    m = build_engine(fp32_onnx, tmp_path / "x.engine", "fp32")
    assert trt.last_builder.config.flags == set() and m.strongly_typed == (_major(trt) >= 9)


def test_tensorrt_below_8_6_is_refused_naming_the_version(qdq_onnx: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    old = fake_trt.make_trt("8.6.2")
    old.__version__ = "8.5.3.1"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(UserError, match=r"TensorRT 8\.5\.3\.1 is too old.*>= 8\.6"):
        build_engine(qdq_onnx, tmp_path / "x.engine", "int8")
    from mosaic_edge.edge_runtime.trt_runner import open_trt_runner

    with pytest.raises(UserError, match=r"TensorRT 8\.5\.3\.1 is too old"):
        open_trt_runner(qdq_onnx, "int8", engine_dir=tmp_path / "e")
    assert old.calls == []


def test_fake_refuses_precision_flags_on_strongly_typed_networks(trt10, fp32_onnx: Path) -> None:
    with pytest.raises(AssertionError, match="strongly typed"):
        fake_trt.serialize_engine(trt10, fp32_onnx, flags=2, precision_flags=("FP16",))


def test_trt11_has_no_weak_typing_names() -> None:
    trt = fake_trt.make_trt("11.1.0")
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    assert not hasattr(fake_trt.make_trt("8.6.2").NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def test_plan_compares_versions_not_strings() -> None:
    # "9.x" > "11.0" as strings; packaging.version gets it right
    assert plan_build(Version("9.2.0"), "int8", "fp32", calib_cache=True).calibrator
    assert plan_build(Version("10.13.0"), "fp16", "fp32", calib_cache=False).flags == ("FP16",)
    assert plan_build(Version("9.2.0"), "int8", "int8", calib_cache=False).explicit_batch
    with pytest.raises(UserError):
        plan_build(Version("11.0.0"), "fp16", "fp32", calib_cache=False)
    with pytest.raises(UserError, match="Q/DQ"):
        plan_build(Version("10.3.0"), "int8", "fp32", calib_cache=False)
    with pytest.raises(UserError, match="precision"):
        plan_build(Version("10.3.0"), "int4", "int4", calib_cache=False)


def test_parser_errors_of_a_malformed_graph_are_reported_per_node(trt, tmp_path: Path) -> None:
    import onnx

    bad = fake_trt.write_onnx(tmp_path / "bad.onnx", op="FooOp")  # a valid graph with ops TensorRT lacks
    with pytest.raises(UserError) as info:
        build_engine(bad, tmp_path / "x.engine", "fp32")
    msg = str(info.value).replace(" [ErrorCode.UNSUPPORTED_NODE]", "")
    for i, node in ((3, 0), (7, 1)):
        where = f"node {i} 'fooop{node}' (FooOp)" if _major(trt) >= 10 else f"node {i}"  # names: TensorRT >= 10
        assert f"{where}: No importer registered for op: FooOp" in msg
    model = onnx.load(str(bad))
    model.graph.node[0].input[0] = "undefined"  # a malformed graph: a node reads a tensor nothing produces
    onnx.save(model, str(bad))
    with pytest.raises(UserError, match="(?s)cannot parse .*graph: Failed to parse ONNX model: ValidationError"):
        build_engine(bad, tmp_path / "x.engine", "fp32")


def test_uint16_input_is_a_parser_error(trt, tmp_path: Path) -> None:
    raw = fake_trt.write_onnx(tmp_path / "raw.onnx", inputs={"optical": ((12, 8, 8), TensorProto.UINT16)})
    with pytest.raises(UserError, match="UINT16"):
        build_engine(raw, tmp_path / "x.engine", "fp32")


def test_trt86_cannot_read_fp16_qdq_scales(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_trt("8.6.2"))
    art = fake_trt.write_onnx(tmp_path / "model.int8.onnx", qdq="float16")
    with pytest.raises(UserError, match="node 2:.*scale"):
        build_engine(art, tmp_path / "x.engine", "int8")


def test_failed_build_is_a_clear_error(trt, qdq_onnx: Path, tmp_path: Path) -> None:
    trt.Builder.fail = True
    with pytest.raises(UserError, match="failed to build"):
        build_engine(qdq_onnx, tmp_path / "x.engine", "int8")
    assert not (tmp_path / "x.engine").exists()


# ---- timing cache ------------------------------------------------------------------------------------------------
def _foreign_cache(trt_version: str, device: str = "Orin (fake) sm87") -> bytes:
    return fake_trt.TIMING_MAGIC + json.dumps({"trt": trt_version, "device": device, "entries": 5}).encode()


@pytest.mark.parametrize("damage", ["none", "empty", "truncated", "garbage", "other_trt", "other_device"])
def test_an_unusable_timing_cache_never_stops_a_build(trt, qdq_onnx: Path, tmp_path: Path, damage: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    tc = tmp_path / "timing.cache"
    good = _foreign_cache(trt.__version__)
    tc.write_bytes({"none": good, "empty": b"", "truncated": good[:-7], "garbage": b"\x00\x01junk",
                    "other_trt": _foreign_cache("9.9.9"), "other_device": _foreign_cache(trt.__version__, "H100 sm90")}
                   [damage])
    with caplog.at_level(logging.WARNING, logger="mosaic_edge.export.trt_caches"):
        build_engine(qdq_onnx, tmp_path / "x.engine", "int8", timing_cache=tc)
    saved = json.loads(tc.read_bytes()[len(fake_trt.TIMING_MAGIC):])
    if damage == "none":
        assert saved["entries"] == 6 and not caplog.records  # read, handed to the builder, updated, written back
    else:
        assert saved == {"trt": trt.__version__, "device": "Orin (fake) sm87", "entries": 1}  # a fresh cache
        assert (damage == "empty") == (not caplog.records), caplog.text
    assert not list(tmp_path.glob(".timing.cache.*.tmp"))


def test_no_timing_cache_from_tensorrt_is_a_warning(trt10, qdq_onnx: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"keep me")
    orig = trt10.Builder.create_builder_config

    def config(self):
        cfg = orig(self)
        object.__setattr__(cfg, "get_timing_cache", lambda: None)
        return cfg

    monkeypatch.setattr(trt10.Builder, "create_builder_config", config)
    with caplog.at_level(logging.WARNING):
        build_engine(qdq_onnx, tmp_path / "x.engine", "int8", timing_cache=tc)
    assert tc.read_bytes() == b"keep me" and "no timing cache" in caplog.text


def test_timing_cache_write_waits_for_the_lock(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "timing.cache"
    path.write_bytes(b"old")
    done = threading.Event()
    with open(path.with_name("timing.cache.lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another build is writing
        writer = threading.Thread(target=lambda: (trt_caches.write_locked(path, b"new"), done.set()))
        writer.start()
        time.sleep(0.2)
        assert not done.is_set() and path.read_bytes() == b"old"
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    writer.join(5)
    assert done.is_set() and path.read_bytes() == b"new"


# ---- legacy calibration cache --------------------------------------------------------------------------------------
@pytest.fixture
def tiny_fp32(tmp_path: Path) -> Path:
    return write_tiny_onnx(tmp_path / "model.onnx", tiny_contract())


@pytest.mark.parametrize("header_of", ["running", "other"])
def test_calibration_cache_of_another_tensorrt_gets_this_header(trt, tiny_fp32: Path, tmp_path: Path,
                                                                header_of: str) -> None:
    cache = write_calib_cache(tmp_path / "calib.cache", {"sar": 3.0, "sar_gap": 1.5, "logits": 20.0},
                              trt_version=trt.__version__ if header_of == "running" else "10.3.0"
                              if _major(trt) != 10 else "8.6.1")
    if _major(trt) >= 11:
        with pytest.raises(UserError, match="removed implicit INT8.*model.int8.onnx"):
            build_engine(tiny_fp32, tmp_path / "x.engine", "int8", calib_cache=cache)
        return
    m = build_engine(tiny_fp32, tmp_path / "x.engine", "int8", calib_cache=cache)
    cal = trt.last_builder.config.int8_calibrator
    header = cal.read_calibration_cache().split(b"\n")[0].decode()
    assert header == f"TRT-{fake_trt.version_int(trt.__version__)}-EntropyCalibration2"
    assert cal.read_calibration_cache().split(b"\n")[1:] == cache.read_bytes().split(b"\n")[1:]  # scales verbatim
    assert cal.get_batch(["sar"]) is None  # replays the cache, never calibrates
    assert {f.name for f in trt.last_builder.config.flags} == {"INT8", "FP16"} and not m.strongly_typed
    assert trt.last_builder.config.calibration_profile is trt.last_builder.config.profiles[0]


def test_calibration_cache_of_another_model_is_refused(trt10, tiny_fp32: Path, tmp_path: Path) -> None:
    cache = write_calib_cache(tmp_path / "calib.cache", {"sar": 3.0, "/other/conv/Conv_output_0": 2.0}, "8.6.1")
    with pytest.raises(UserError, match=r"another TensorRT.*1 of its tensors are not in this network.*other/conv"):
        build_engine(tiny_fp32, tmp_path / "x.engine", "int8", calib_cache=cache)


# ---- precision from the manifest -----------------------------------------------------------------------------------
@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    out = tmp_path / "export"
    contract = tiny_contract()
    m = Manifest.create(contract, out)
    for name, prec, target in (("model.onnx", "fp32", "any"), ("model.fp16.onnx", "fp16", "any"),
                               ("model.int8.onnx", "int8", "tensorrt"), ("model.int8-cpu.onnx", "int8", "cpu")):
        write_tiny_onnx(out / name, contract)
        m = m.with_artefact(name, prec, target, opset=17)
    write_calib_cache(out / "calib.cache", {"sar": 3.0})
    m.with_file("calib.cache", "tensorrt-calib-cache").save()
    return out


def test_precision_comes_from_the_manifest_entry(export_dir: Path, tmp_path: Path) -> None:
    assert not hasattr(trt_mod, "guess_precision")
    from mosaic_edge import manifest

    assert trt_mod.PRECISIONS is manifest.PRECISIONS  # defined once, in the core
    assert resolve_artefact(export_dir).path.name == "model.int8.onnx"
    for name, prec in (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"), ("model.int8.onnx", "int8")):
        art = resolve_artefact(export_dir / name)
        assert (art.precision, art.onnx_precision, art.sha256 != "") == (prec, prec, True)
        assert resolve_artefact(export_dir, prec).path.name == name
    renamed = tmp_path / "model.int8.onnx"  # a name says nothing without a manifest
    renamed.write_bytes((export_dir / "model.onnx").read_bytes())
    with pytest.raises(UserError, match="give --precision"):
        resolve_artefact(renamed)
    assert resolve_artefact(renamed, "fp32").precision == "fp32"
    with pytest.raises(UserError, match="CPU INT8 artefact"):
        resolve_artefact(export_dir / "model.int8-cpu.onnx")


def test_trt86_builds_int8_from_the_calibration_cache_when_the_artefact_is_opset_19(export_dir: Path) -> None:
    m = Manifest.load(export_dir)
    art19 = m.artefacts["model.int8.onnx"]
    data = m.to_dict()
    data["artefacts"]["model.int8.onnx"]["opset"] = 19
    (export_dir / "manifest.json").write_text(json.dumps(data))
    art = resolve_artefact(export_dir, "int8", trt_version=Version("8.6.2"))
    assert (art.path.name, art.precision, art.onnx_precision) == ("model.onnx", "int8", "fp32")
    assert art.calib_cache == export_dir / "calib.cache"
    assert resolve_artefact(export_dir, "int8", trt_version=Version("10.3.0")).path.name == "model.int8.onnx"
    assert art19.opset == 17


def test_cli_without_tensorrt_prints_install_route(qdq_onnx: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    from mosaic_edge.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(SystemExit) as info:
        main(["build-engine", str(qdq_onnx), "--precision", "int8"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "mosaic-edge[trt]" in err and "JetPack" in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "want"), [(["model.fp16.onnx"], "fp16"), (["model.onnx"], "fp32"),
                                            ([".", "--precision", "fp16"], "fp16"), (["."], "int8")])
def test_cli_labels_the_engine_with_the_manifest_precision(trt10, export_dir: Path, tmp_path: Path, capsys,
                                                           args: list[str], want: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mosaic_edge.cli import main

    monkeypatch.setitem(sys.modules, "cuda", None)  # no CUDA bindings here: the GPU is "unknown"
    monkeypatch.setitem(sys.modules, "pycuda", None)
    out = tmp_path / "m.engine"
    target = str(export_dir / args[0])
    with pytest.raises(SystemExit) as info:
        main(["build-engine", target, *args[1:], "--out", str(out), "--max-batch", "4", "--opt-batch", "2"])
    assert info.value.code == 0, capsys.readouterr().err
    assert EngineManifest.from_json(manifest_path(out).read_text()).precision == want
    assert f"  {want} (from " in capsys.readouterr().out
    assert trt10.last_builder.config.profiles[0].shapes["sar"][2] == (4, 2, 16, 16)


def test_cli_needs_a_precision_for_an_onnx_no_manifest_lists(trt10, qdq_onnx: Path, capsys) -> None:
    from mosaic_edge.cli import main

    with pytest.raises(SystemExit) as info:
        main(["build-engine", str(qdq_onnx)])
    assert info.value.code == 2 and "give --precision" in capsys.readouterr().err
